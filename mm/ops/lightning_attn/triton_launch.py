"""Launch functions for the Triton kernels (tier 1: tensors in, tensors out, no autograd).

All token tensors are `[N_tokens, H, D]`, dense along D (any token and head strides: q, k, v may be
views into one fused projection). Outputs are contiguous. States are float32.
On GPU the output and local-state kernels are autotuned; under TRITON_INTERPRET=1 (CPU tests)
they run with one fixed small configuration, since autotuning does not run under the interpreter.
"""

from __future__ import annotations

import functools
import math

import torch
import triton

from mm.ops.triton_interpreter import INTERPRET

from .segments import Segments
from .triton_kernels import (
    local_state_configs,
    local_state_kernel,
    output_configs,
    output_kernel,
    scan_kernel,
)

_OUT_KEY = ["SLOTS", "DA", "DC", "REVERSE", "SHIFT", "HAS_SIN", "HAS_SOUT", "PREC"]
_LOCAL_KEY = ["SLOTS", "DB", "DC", "REVERSE", "SHIFT", "PREC"]
Strides = tuple[int, int, int, int]


def padded(dim: int) -> int:
    """Tile width for a feature dim: the next power of two, at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(dim))


class _Tuned:
    """`triton.autotune` on the first launch of each key, then the chosen config launched directly.

    Triton's Autotuner rebuilds its key and re-binds every argument on each launch: on the H200 host
    that costs about 50 us a launch (92 us through the tuner, 41 us direct), and a small
    forward+backward makes 4 to 8 launches, so the host, not the GPU, set its pace. The key here is
    the tuner's key (all keyword arguments) plus the input dtype, which the tuner also keys on.
    Under the interpreter there is no tuning: callers pass the fixed config.
    """

    def __init__(self, kernel, configs: list[triton.Config], key: list[str]):
        self.kernel, self.key = kernel, key
        self.tuner = None if INTERPRET else triton.autotune(configs=configs, key=key)(kernel)
        self.chosen: dict[tuple, dict] = {}

    def launch(self, grid, *args, **kwargs) -> None:
        if self.tuner is None:
            self.kernel[grid](*args, **kwargs)
            return
        key = (*(kwargs[n] for n in self.key), args[0].dtype)
        config = self.chosen.get(key)
        if config is None:
            self.tuner[grid](*args, **kwargs)
            self.chosen[key] = self.tuner.best_config.all_kwargs()
        else:
            self.kernel[grid](*args, **kwargs, **config)


def fitting_output_configs(bda: int, bdc: int) -> list[triton.Config]:
    """The output kernel's configs for padded widths (bda, bdc): BV no wider than bdc, the state tile
    at most 128 × 128, narrow BV only where needed; one full-width config when none is left (d < 32)."""
    keep = [c for c in output_configs()
            if c.kwargs["BV"] <= bdc and bda * c.kwargs["BV"] <= 128 * 128
            and (c.kwargs["BV"] >= 64 or bda > 128 or bdc < 64)]
    return keep or [triton.Config({"BLOCK": 64, "BV": bdc}, num_warps=4, num_stages=2)]


@functools.cache
def _tuned_output(bda: int, bdc: int) -> _Tuned:
    return _Tuned(output_kernel, fitting_output_configs(bda, bdc), _OUT_KEY)


@functools.cache
def _tuned_local() -> _Tuned:
    return _Tuned(local_state_kernel, local_state_configs(), _LOCAL_KEY)


def _prec(x: torch.Tensor) -> str:
    # Full-precision dots for float32 inputs (tf32 would cost ~3e-4 relative); bf16/fp16 use the
    # tensor cores natively and ignore the setting.
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _upcast(x: torch.Tensor) -> bool:
    return INTERPRET and x.dtype == torch.bfloat16


def _token_head(x: torch.Tensor) -> tuple[int, int]:
    """Token and head strides of a `[N_tok, H, D]` tensor; the last dimension must be dense."""
    if x.stride(-1) != 1:
        raise ValueError(f"lightning attention needs unit stride along the head dimension, got strides {x.stride()}")
    return x.stride(0), x.stride(1)


def _slots(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def run_output(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, slopes: torch.Tensor, segs: Segments, *,
    s_in: torch.Tensor | None, s_in_strides: Strides | None, s_out: torch.Tensor | None,
    reverse: bool, shift: int,
) -> torch.Tensor:
    """out[r] = sum_{r' <= r} lambda^(r-r') (a_r . b_r') c_r' + lambda^(r+1-shift) a_r S_in (see kernels).

    a, b `[N_tok, H, DA]`, c `[N_tok, H, DC]`; s_in indexed [segment, head, i (DA), j (DC)] through
    `s_in_strides`; s_out `[N, H, DA, DC]` receives each sequence's end state. Returns `[N_tok, H, DC]`.
    """
    _, H, DA = a.shape
    DC = c.shape[-1]
    out = torch.empty(c.shape, device=c.device, dtype=c.dtype)  # contiguous, whatever c's strides
    bda, bdc = padded(DA), padded(DC)
    fixed = {"BLOCK": 16, "BV": bdc} if INTERPRET else {}
    sin_st = s_in_strides if s_in is not None else (0, 0, 0, 0)
    sout_st = s_out.stride() if s_out is not None else (0, 0, 0, 0)

    def grid(meta):
        return (triton.cdiv(DC, meta["BV"]), H, segs.num_segments)

    _tuned_output(bda, bdc).launch(
        grid, a, b, c, out, s_in if s_in is not None else slopes, s_out if s_out is not None else slopes,
        slopes, segs.table, *_token_head(a), *_token_head(b), *_token_head(c), *_token_head(out), *sin_st, *sout_st,
        SLOTS=_slots(segs.num_segments * H),
        DA=DA, DC=DC, BDA=bda, REVERSE=reverse, SHIFT=shift, HAS_SIN=s_in is not None,
        HAS_SOUT=s_out is not None, PREC=_prec(a), UPCAST=_upcast(a), **fixed,
    )
    return out


def run_local_states(
    b: torch.Tensor, c: torch.Tensor, slopes: torch.Tensor, segs: Segments, *, reverse: bool, shift: int
) -> torch.Tensor:
    """Each segment's own state from zero, `[S, H, DB, DC]` float32 (zeros for each sequence's last)."""
    _, H, DB = b.shape
    DC = c.shape[-1]
    local = torch.empty(segs.num_segments, H, DB, DC, device=b.device, dtype=torch.float32)
    bk, bv = min(padded(DB), 128), min(padded(DC), 128)
    grid = (triton.cdiv(DB, bk) * triton.cdiv(DC, bv), H, segs.num_segments)
    fixed = {"BLOCK": 16} if INTERPRET else {}
    _tuned_local().launch(
        grid, b, c, local, slopes, segs.table, *_token_head(b), *_token_head(c), SLOTS=_slots(segs.num_segments * H),
        DB=DB, DC=DC, REVERSE=reverse, SHIFT=shift, PREC=_prec(b), UPCAST=_upcast(b), BK=bk, BV=bv, **fixed,
    )
    return local


def run_scan(
    local: torch.Tensor, slopes: torch.Tensor, segs: Segments, *,
    init: torch.Tensor | None, init_strides: Strides | None, reverse: bool,
) -> torch.Tensor:
    """Start state of every segment, `[S, H, DB, DC]` float32, from the local states and `init`."""
    S, H, DB, DC = local.shape
    s_in = torch.empty_like(local)
    block = 1024 if DB * DC >= 1024 else padded(DB * DC)
    grid = (triton.cdiv(DB * DC, block), H, segs.num_seqs)
    scan_kernel[grid](
        local, init if init is not None else slopes, s_in, slopes, segs.table, segs.seq_segs,
        *(init_strides if init is not None else (0, 0, 0, 0)),
        DB=DB, DC=DC, REVERSE=reverse, HAS_INIT=init is not None, BLOCK_E=block, num_warps=4,
    )
    return s_in


def segment_states(
    b: torch.Tensor, c: torch.Tensor, slopes: torch.Tensor, segs: Segments, *,
    init: torch.Tensor | None, reverse: bool, shift: int,
) -> tuple[torch.Tensor | None, Strides | None]:
    """Start state of every segment for a pass whose state accumulates b^T c; `init [N, H, DB, DC]`.

    When no sequence is split, segment n is sequence n and the start states are `init` itself.
    """
    if not segs.split:
        return init, (init.stride() if init is not None else None)
    local = run_local_states(b, c, slopes, segs, reverse=reverse, shift=shift)
    s_in = run_scan(local, slopes, segs, init=init, init_strides=init.stride() if init is not None else None,
                    reverse=reverse)
    return s_in, s_in.stride()


def transposed(strides: Strides | None) -> Strides | None:
    return None if strides is None else (strides[0], strides[1], strides[3], strides[2])

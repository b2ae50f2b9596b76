"""Launch functions for the Triton kernels (tier 1: tensors in, tensors out, no autograd).

All token tensors are flattened and contiguous: `[N_tokens, H, D]`. States are float32.
On GPU the kernel is autotuned; under TRITON_INTERPRET=1 (CPU tests)
they run with one fixed small configuration, since autotuning does not run under the interpreter.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton

from .segments import Segments
from .triton_kernels import output_configs, output_kernel

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_OUT_KEY = ["SLOTS", "DA", "DC", "REVERSE", "SHIFT", "HAS_SIN", "HAS_SOUT", "CHAIN", "HAS_INIT", "PREC"]
Strides = tuple[int, int, int, int]


def _patch_interpreter_index() -> None:
    """Let runtime loop bounds work under the interpreter with NumPy >= 2.4.

    Triton 3.6's interpreter holds scalars as 1-element arrays and converts them with int(array),
    which NumPy 2.4 refuses ("only 0-dimensional arrays can be converted"), so `range(0, n)` with a
    runtime n fails. Re-register the scalar's __index__ through the array's single element.
    """
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "mm_patched", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched.mm_patched = True
    interpreter._patch_lang_tensor = patched


if INTERPRET:
    _patch_interpreter_index()


def padded(dim: int) -> int:
    """Tile width for a feature dim: the next power of two, at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(dim))


@functools.cache
def _tuned_output(bda: int, bdc: int, chain: bool):
    if INTERPRET:
        return output_kernel
    keep = [c for c in output_configs()
            if c.kwargs["BV"] <= bdc and bda * c.kwargs["BV"] <= 128 * 128
            and (c.kwargs["BV"] >= 64 or bda > 128 or bdc < 64)]
    # chained runs count programs and raise flags in SYNC: every timed trial starts from zeros
    return triton.autotune(configs=keep, key=_OUT_KEY, reset_to_zero=["SYNC"] if chain else None)(output_kernel)


def _prec(x: torch.Tensor) -> str:
    # Full-precision dots for float32 inputs (tf32 would cost ~3e-4 relative); bf16/fp16 use the
    # tensor cores natively and ignore the setting.
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _upcast(x: torch.Tensor) -> bool:
    return INTERPRET and x.dtype == torch.bfloat16


def _slots(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def _launch(a, b, c, slopes, segs, *, s_in, s_in_strides, s_out, init, reverse, shift, chain):
    _, H, DA = a.shape
    DC = c.shape[-1]
    out = torch.empty_like(c)
    bda, bdc = padded(DA), padded(DC)
    fixed = {"BLOCK": 16, "BV": bdc} if INTERPRET else {}
    # chained: [program counter, one ready flag per (segment, head, value tile)] (BV >= 16)
    sync = torch.zeros(1 + segs.num_segments * H * triton.cdiv(DC, 16), device=a.device, dtype=torch.int32) \
        if chain else None
    none = slopes  # any tensor stands in for an absent pointer (the kernel never reads it)

    def grid(meta):
        return (triton.cdiv(DC, meta["BV"]) * H * segs.num_segments,)

    _tuned_output(bda, bdc, chain)[grid](
        a, b, c, out, none if s_in is None else s_in, none if s_out is None else s_out,
        none if init is None else init, none if sync is None else sync, slopes, segs.table,
        a.stride(0), c.stride(0), *(s_in_strides or (0, 0, 0, 0)), *(s_out.stride() if s_out is not None else (0,) * 4),
        *(init.stride() if init is not None else (0,) * 4), H, segs.num_segments, _slots(segs.num_segments * H),
        DA=DA, DC=DC, BDA=bda, REVERSE=reverse, SHIFT=shift, HAS_SIN=s_in is not None and not chain,
        HAS_SOUT=s_out is not None, CHAIN=chain, HAS_INIT=init is not None, PREC=_prec(a), UPCAST=_upcast(a),
        **fixed,
    )
    return out


def run_output(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, slopes: torch.Tensor, segs: Segments, *,
    s_in: torch.Tensor | None, s_in_strides: Strides | None, s_out: torch.Tensor | None,
    reverse: bool, shift: int,
) -> torch.Tensor:
    """out[r] = sum_{r' <= r} lambda^(r-r') (a_r . b_r') c_r' + lambda^(r+1-shift) a_r S_in (see kernels).

    a, b `[N_tok, H, DA]`, c `[N_tok, H, DC]`; s_in (every segment's start state) indexed
    [segment, head, i (DA), j (DC)] through `s_in_strides`; s_out `[N, H, DA, DC]` receives each
    sequence's end state. Returns `[N_tok, H, DC]`.
    """
    return _launch(a, b, c, slopes, segs, s_in=s_in, s_in_strides=s_in_strides, s_out=s_out, init=None,
                   reverse=reverse, shift=shift, chain=False)


def run_with_states(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, slopes: torch.Tensor, segs: Segments, *,
    init: torch.Tensor | None, s_out: torch.Tensor | None, reverse: bool, shift: int,
) -> tuple[torch.Tensor, torch.Tensor | None, Strides | None]:
    """The pass of `run_output` from each sequence's `init [N, H, DA, DC]`; also every segment's start state.

    Returns `(out, s_in, s_in_strides)`. Unsplit sequences start from `init` itself; split ones run
    chained (each segment's program computes its own local state, then takes its predecessor's start
    state and publishes its successor's), and s_in `[S, H, DA, DC]` float32 holds every start state.
    """
    if not segs.split:
        strides = init.stride() if init is not None else None
        out = run_output(a, b, c, slopes, segs, s_in=init, s_in_strides=strides, s_out=s_out,
                         reverse=reverse, shift=shift)
        return out, init, strides
    s_in = torch.empty(segs.num_segments, a.shape[1], a.shape[2], c.shape[2], device=a.device, dtype=torch.float32)
    out = _launch(a, b, c, slopes, segs, s_in=s_in, s_in_strides=s_in.stride(), s_out=s_out, init=init,
                  reverse=reverse, shift=shift, chain=True)
    return out, s_in, s_in.stride()


def transposed(strides: Strides | None) -> Strides | None:
    return None if strides is None else (strides[0], strides[1], strides[3], strides[2])

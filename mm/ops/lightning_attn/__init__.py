"""Lightning attention (Lightning Attention-2, MiniMax/TNL semantics; DESIGN §2).

Per head h with slope s_h and decay lambda_h = exp(-s_h); no softmax, no 1/sqrt(d), no normaliser:

    o_t = sum_{u <= t} lambda^(t-u) (q_t . k_u) v_u + lambda^(t+1) q_t S_0,   S_t = lambda S_{t-1} + k_t^T v_t

Public API (tier 3): `lightning_attn` (training/prefill, any T, varlen, state in and out),
`lightning_attn_step` (one decoding token, O(1)), `build_slopes` (ALiBi slopes with the per-layer
factor). Backends: "triton" (kernels; the default on CUDA), "chunked" (pure torch, blocked, O(T)
memory; the default on CPU), "reference" (quadratic masked form, float64-capable; for tests).

Example::

    >>> slopes = build_slopes(num_heads=4, layer_idx=0, num_layers=8)
    >>> q = k = torch.randn(2, 100, 4, 32); v = torch.randn(2, 100, 4, 48)
    >>> o, state = lightning_attn(q, k, v, slopes, output_final_state=True)  # o [2, 100, 4, 48]
"""

from __future__ import annotations

import math
import os

import torch

from mm.ops.host_bounds import host_bounds

from .chunked import lightning_attn_chunked
from .reference import lightning_attn_quadratic

BACKENDS = ("triton", "chunked", "reference")

__all__ = ["BACKENDS", "build_slopes", "lightning_attn", "lightning_attn_step"]


def build_slopes(num_heads: int, layer_idx: int | None = None, num_layers: int | None = None) -> torch.Tensor:
    """ALiBi-style slopes `[num_heads]` (float32), optionally scaled for layer `layer_idx` of `num_layers`.

    Power-of-two H: s_i = 2^(-8 (i+1) / H). Other H: the slopes of the nearest smaller power of two p,
    then every other slope of 2p, until H are taken. With a layer, the slopes are multiplied by
    (1 - l / (L - 1) + 1e-5) as in TNL and MiniMax, so layer 0 decays fastest and the last layer
    hardly decays. With a single layer (L = 1) the ratio l / (L - 1) is taken as 0, i.e. the one
    layer is treated as the first: factor 1 + 1e-5 (no division by zero).
    """
    if num_heads <= 0:
        raise ValueError(f"num_heads must be positive, got {num_heads}")
    if (layer_idx is None) != (num_layers is None):
        raise ValueError(f"give both layer_idx and num_layers or neither, got {layer_idx=} {num_layers=}")

    def pow2_slopes(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    p = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = pow2_slopes(p)
    if p < num_heads:
        slopes += pow2_slopes(2 * p)[0::2][: num_heads - p]
    factor = 1.0
    if num_layers is not None:
        if num_layers <= 0 or not 0 <= layer_idx < num_layers:
            raise ValueError(f"need 0 <= layer_idx < num_layers, got {layer_idx=} {num_layers=}")
        ratio = layer_idx / (num_layers - 1) if num_layers > 1 else 0.0
        factor = 1.0 - ratio + 1e-5
    return torch.tensor(slopes, dtype=torch.float64).mul(factor).float()


def _check(q, k, v, slopes, initial_state, cu_seqlens) -> int:
    """Validate shapes; return the number of sequences N."""
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must be [B, T, H, d] of one shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    B, T, H, d = q.shape
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, e] matching q {tuple(q.shape)}, got {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise ValueError(f"q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if slopes.shape != (H,):
        raise ValueError(f"slopes must be [H] = [{H}], got {tuple(slopes.shape)}")
    n = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"with cu_seqlens the batch size must be 1 (packed), got B = {B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must be [N + 1] with N >= 1, got {tuple(cu_seqlens.shape)}")
        if cu_seqlens.is_floating_point():
            raise ValueError(f"cu_seqlens must be an integer tensor, got {cu_seqlens.dtype}")
        c = host_bounds(cu_seqlens)
        if c[0] != 0 or c[-1] != T or any(b < a for a, b in zip(c, c[1:], strict=False)):
            raise ValueError(f"cu_seqlens must rise from 0 to T = {T}, got {c}")
        n = len(c) - 1
    if initial_state is not None and initial_state.shape != (n, H, d, v.shape[-1]):
        raise ValueError(f"initial_state must be [N, H, d, e] = {[n, H, d, v.shape[-1]]}, "
                         f"got {tuple(initial_state.shape)}")
    return n


def _per_sequence(fn, q, k, v, slopes, initial_state, cu_seqlens):
    """Run an equal-length-batch torch backend on each packed sequence (torch backends only)."""
    bounds = host_bounds(cu_seqlens)
    outs, states = [], []
    for n in range(len(bounds) - 1):
        sl = slice(bounds[n], bounds[n + 1])
        h0 = None if initial_state is None else initial_state[n : n + 1]
        o, s = fn(q[:, sl], k[:, sl], v[:, sl], slopes, initial_state=h0)
        outs.append(o)
        states.append(s)
    return torch.cat(outs, dim=1), torch.cat(states, dim=0)


def lightning_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slopes: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal lightning attention with state in and out.

    Args:
        q, k: `[B, T, H, d]`; v: `[B, T, H, e]`; one dtype (bf16/fp16/fp32; fp64 for torch backends).
        slopes: `[H]` decay rates (see `build_slopes`); fixed, not differentiated.
        initial_state: `[N, H, d, e]` state each sequence starts from (N = B, or the number of
            sequences under `cu_seqlens`); differentiable.
        output_final_state: also return the final state `[N, H, d, e]` (float32; float64 for float64
            inputs on the torch backends).
        cu_seqlens: `[N + 1]` int cumulative sequence lengths (FlashAttention convention), B = 1.
        backend: "triton", "chunked" or "reference"; None picks "triton" on CUDA, "chunked" elsewhere.
    Returns:
        `(o [B, T, H, e] in q's dtype, final_state or None)`.
    """
    n = _check(q, k, v, slopes, initial_state, cu_seqlens)
    if backend is None:
        backend = "triton" if q.is_cuda else "chunked"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton":
        if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"the triton backend takes float32/bfloat16/float16 inputs, got {q.dtype}")
        if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"the triton backend needs CUDA tensors (or TRITON_INTERPRET=1), got {q.device}")
        from .triton_function import lightning_attn_triton  # imports triton: keep it off import time

        return lightning_attn_triton(q, k, v, slopes, initial_state=initial_state,
                                     output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    fn = lightning_attn_chunked if backend == "chunked" else lightning_attn_quadratic
    slopes = slopes.to(q.device)
    if cu_seqlens is None:
        o, state = fn(q, k, v, slopes, initial_state=initial_state)
    else:
        o, state = _per_sequence(fn, q, k, v, slopes, initial_state, cu_seqlens)
    if state.dtype != torch.float64:
        state = state.float()
    assert state.shape[0] == n
    return o.to(q.dtype), (state if output_final_state else None)


def lightning_attn_step(
    q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor, state: torch.Tensor, slopes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step: S = lambda S + k^T v, o = q S. O(1) in the sequence length.

    Args: q_t, k_t `[B, H, d]`, v_t `[B, H, e]`, state `[B, H, d, e]` (float32 or float64), slopes `[H]`.
    Returns: `(o_t [B, H, e] in q_t's dtype, new state [B, H, d, e] in the state's dtype)`.
    """
    if q_t.dim() != 3 or k_t.shape != q_t.shape:
        raise ValueError(f"q_t and k_t must be [B, H, d] of one shape, got {tuple(q_t.shape)}, {tuple(k_t.shape)}")
    B, H, d = q_t.shape
    if v_t.dim() != 3 or v_t.shape[:2] != (B, H):
        raise ValueError(f"v_t must be [B, H, e] = [{B}, {H}, e], got {tuple(v_t.shape)}")
    if state.shape != (B, H, d, v_t.shape[-1]):
        raise ValueError(f"state must be [B, H, d, e] = {[B, H, d, v_t.shape[-1]]}, got {tuple(state.shape)}")
    if slopes.shape != (H,):
        raise ValueError(f"slopes must be [H] = [{H}], got {tuple(slopes.shape)}")
    sdt = state.dtype
    decay = torch.exp(-slopes.to(device=state.device, dtype=sdt))[None, :, None, None]
    new_state = decay * state + k_t.to(sdt)[..., :, None] * v_t.to(sdt)[..., None, :]
    o = torch.einsum("bhd,bhde->bhe", q_t.to(sdt), new_state)
    return o.to(q_t.dtype), new_state

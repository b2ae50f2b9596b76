"""LightNet attention: the additive recurrence of "You Only Scan Once" (DESIGN §5).

Keys are softmax-normalised per channel by the op itself; q and v are used as given (no 1/sqrt(d)):

    causal:      o_t = q_tᵀ diag(Δ_t)^{-1} S̃_t,  Δ_t = Σ_{s≤t} exp(k_s),  S̃_t = Σ_{s≤t} exp(k_s) v_sᵀ
    non-causal:  o_t = q_t Σ_s softmax_s(k)_s v_sᵀ   (softmax over the whole sequence)

The non-causal form is independent of the token order: one pass over any flattening of a
(T, H, W) grid covers it, where multiplicative-decay models need a scan per direction.

Backends:
  "triton"    non-causal, head dims ≤ 64: a memory-bound reduction + token pass, forward and
              backward (triton_kernels); causal, head dims ≤ 128: the decay form as chunked gated
              linear attention, z = logcumsumexp(k) computed in the forward kernel, varlen packs and
              long sequences split into segments in the kernels, gradients to the raw keys
              (causal_kernels, causal_function); the default on CUDA for the non-causal form (the
              causal kernels are chosen by name until measured on a GPU);
  "chunked"   pure torch, autograd: the non-causal softmax form, and the causal decay form
              (logcumsumexp, every factor ≤ 1, chunked); the default on CPU, for wider heads, and for
              the causal form;
  "reference" the token-by-token Δ/S̃ recurrence (float64 for tests).

Decoding (decode.py): ``lightnet_causal_state`` (the state after a prompt) and ``lightnet_causal_step``
(one token from that state), in the stable decay form.

Example::

    >>> q = k = torch.randn(2, 100, 4, 32); v = torch.randn(2, 100, 4, 48)
    >>> o = lightnet_attn(q, k, v, causal=False)  # [2, 100, 4, 48]
"""

from __future__ import annotations

import os

import torch

from mm.ops.host_bounds import host_bounds

from .chunked import lightnet_causal_chunked, lightnet_noncausal_torch
from .decode import lightnet_causal_state, lightnet_causal_step
from .reference import lightnet_recurrent

BACKENDS = ("triton", "chunked", "reference")
# Head dims the Triton kernels take: at d = e = 128 in float32 the backward kernel needs more shared
# memory than an H200 has (it failed there; it takes 147 KB of 227 KB at 64). Wider heads: torch path.
TRITON_MAX_DIM = 64
CAUSAL_TRITON_MAX_DIM = 128  # the causal kernels (register-resident [d, e] float32 states; 128 not yet run on a GPU)

__all__ = ["BACKENDS", "lightnet_attn", "lightnet_causal_state", "lightnet_causal_step"]


def _check(q, k, v, cu_seqlens) -> None:
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must be [B, T, H, d] of one shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, e] matching q {tuple(q.shape)}, got {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise ValueError(f"q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if cu_seqlens is not None:
        B, T = q.shape[:2]
        if B != 1:
            raise ValueError(f"with cu_seqlens the batch size must be 1 (packed), got B = {B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.is_floating_point():
            raise ValueError(f"cu_seqlens must be an integer [N + 1] tensor, N >= 1, got {cu_seqlens.dtype} "
                             f"{tuple(cu_seqlens.shape)}")
        c = host_bounds(cu_seqlens)
        if c[0] != 0 or c[-1] != T or any(b < a for a, b in zip(c, c[1:], strict=False)):
            raise ValueError(f"cu_seqlens must rise from 0 to T = {T}, got {c}")


def lightnet_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    cu_seqlens: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """LightNet attention.

    Args:
        q, k: `[B, T, H, d]` (k: raw key logits; the op normalises them); v: `[B, T, H, e]`;
            one dtype (bf16/fp16/fp32; fp64 on the torch backends).
        causal: prefix-normalised keys (language models) or whole-sequence (images, video, ...).
        cu_seqlens: `[N + 1]` int cumulative lengths of packed sequences (B = 1); each sequence
            normalises its keys over itself alone.
        backend: "triton", "chunked" or "reference"; None: "triton" for the non-causal form on CUDA
            (float32/bf16/fp16, d, e ≤ 64), else "chunked".
    Returns:
        o `[B, T, H, e]` in q's dtype.
    """
    _check(q, k, v, cu_seqlens)
    if backend is None:
        # The causal kernels become the default once a GPU benchmark shows them ahead of "chunked"
        # (they have not run on a GPU yet): until then they are chosen by name.
        fits = max(q.shape[-1], v.shape[-1]) <= TRITON_MAX_DIM
        kernel_dtype = q.dtype in (torch.float32, torch.bfloat16, torch.float16)
        backend = "triton" if q.is_cuda and not causal and fits and kernel_dtype else "chunked"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton":
        if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"the triton backend takes float32/bfloat16/float16 inputs, got {q.dtype}")
        if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"the triton backend needs CUDA tensors (or TRITON_INTERPRET=1), got {q.device}")
        if causal:  # the imports below pull in triton: keep them off import time
            from .causal_function import lightnet_causal_triton

            return lightnet_causal_triton(q, k, v, cu_seqlens=cu_seqlens)
        from .triton_function import lightnet_noncausal_triton

        return lightnet_noncausal_triton(q, k, v, cu_seqlens=cu_seqlens)
    if backend == "reference":
        fn = lambda q, k, v: lightnet_recurrent(q, k, v, causal=causal)  # noqa: E731
    else:
        fn = lightnet_causal_chunked if causal else lightnet_noncausal_torch
    if cu_seqlens is None:
        return fn(q, k, v).to(q.dtype)
    bounds = host_bounds(cu_seqlens)
    outs = [fn(q[:, a:b], k[:, a:b], v[:, a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    return torch.cat(outs, dim=1).to(q.dtype)

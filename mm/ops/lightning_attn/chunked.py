"""Blocked (chunk-parallel) lightning attention in pure torch: the CPU path and the fallback.

The same three steps as the Triton kernels (DESIGN §2), batched over chunks of C tokens:
  1. per chunk, the intra-chunk left product ((Q K^T) * M) V and the chunk's local state
     (K * lambda^(len-1-j))^T V, all chunks at once;
  2. a short scan over chunks: S_in[c+1] = lambda^len_c S_in[c] + local[c];
  3. the inter-chunk right product (Q * lambda^(i+1)) S_in[c], all chunks at once.
Memory is O(T): O(T C) for the scores and O(T d e / C) for the chunk states, never T x T.
Differentiable through autograd (no custom backward). Computes in float32 for half/bfloat16 inputs
and in the input dtype otherwise (so float64 stays float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lightning_attn_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slopes: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lightning attention for an equal-length batch.

    Args: q, k `[B, T, H, d]`, v `[B, T, H, e]`, slopes `[H]`, initial_state `[B, H, d, e]` or None.
    Returns: o `[B, T, H, e]` in q's dtype and the final state `[B, H, d, e]` (float32, or float64
    for float64 inputs).
    """
    B, T, H, d = q.shape
    e = v.shape[-1]
    cdt = q.dtype if q.dtype == torch.float64 else torch.float32
    s = slopes.to(device=q.device, dtype=cdt)
    h0 = None if initial_state is None else initial_state.to(cdt)
    if T == 0:
        state = q.new_zeros(B, H, d, e, dtype=cdt) if h0 is None else h0.clone()
        return v.new_empty(B, 0, H, e), state

    C = chunk_size
    n = -(-T // C)
    pad = n * C - T

    def blocks(x: torch.Tensor) -> torch.Tensor:
        # [B, T, H, x] -> [B, H, n, C, x] (zero rows pad the tail chunk)
        x = F.pad(x.to(cdt), (0, 0, 0, 0, 0, pad))
        return x.view(B, n, C, H, x.shape[-1]).permute(0, 3, 1, 2, 4)

    qb, kb, vb = blocks(q), blocks(k), blocks(v)
    idx = torch.arange(C, device=q.device, dtype=cdt)
    lens = torch.full((n,), C, device=q.device, dtype=cdt)
    lens[-1] = T - (n - 1) * C

    # 1. intra-chunk product and local chunk states.
    diff = idx[:, None] - idx[None, :]  # [C, C]
    mask = torch.where(diff >= 0, torch.exp(-s[:, None, None] * diff.clamp(min=0)), 0.0)  # [H, C, C]
    scores = (qb @ kb.transpose(-1, -2)) * mask[None, :, None]  # [B, H, n, C, C]
    o = scores @ vb  # [B, H, n, C, e]
    kexp = lens[:, None] - 1 - idx[None, :]  # [n, C]; negative only on padded rows
    kdecay = torch.where(kexp >= 0, torch.exp(-s[:, None, None] * kexp.clamp(min=0)), 0.0)  # [H, n, C]
    local = (kb * kdecay[None, ..., None]).transpose(-1, -2) @ vb  # [B, H, n, d, e]

    # 2. scan over chunks (the only sequential part: n small [d, e] updates).
    chunk_decay = torch.exp(-s[:, None] * lens[None, :])  # [H, n]
    state = qb.new_zeros(B, H, d, e) if h0 is None else h0
    states_in = []
    for c in range(n):
        states_in.append(state)
        state = chunk_decay[None, :, c, None, None] * state + local[:, :, c]
    s_in = torch.stack(states_in, dim=2)  # [B, H, n, d, e]

    # 3. inter-chunk product.
    qdecay = torch.exp(-s[:, None] * (idx + 1)[None, :])  # [H, C]
    o = o + (qb * qdecay[None, :, None, :, None]) @ s_in
    o = o.permute(0, 2, 3, 1, 4).reshape(B, n * C, H, e)[:, :T]
    return o.to(q.dtype), state

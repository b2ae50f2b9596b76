"""Causal LightNet attention for decoding: the state after a prompt, then one token at a time (DESIGN §5).

The causal recurrence Δ_t = Δ_{t-1} + exp(k_t), S̃_t = S̃_{t-1} + exp(k_t) v_tᵀ, o_t = q_tᵀ diag(Δ_t)^{-1} S̃_t
is kept in its decay form, per key channel i:

    z_t = log Δ_t = logaddexp(z_{t-1}, k_t)                                  [H, d]
    S_t = diag(Δ_t)^{-1} S̃_t = diag(exp(z_{t-1} - z_t)) S_{t-1} + exp(k_t - z_t) v_tᵀ   [H, d, e]
    o_t = q_t S_t

This is the running-max form with the max m_t chosen as z_t itself: Δ_t·exp(-m_t) is then 1 and needs no
storage, S_t = S̃_t·exp(-m_t) is a convex combination of the values, and every factor above is ≤ 1
(k_t ≤ z_t, z_{t-1} ≤ z_t), so no key magnitude overflows. The empty state is z = -inf, S = 0.

After a whole sequence the state is z_T = logsumexp_t k_t and S_T = Σ_t softmax_t(k)_t v_tᵀ: the
non-causal form's state, computed here in one pass per sequence (the prefill of a decoder).
States are float32 (float64 for float64 inputs); outputs take q's dtype.
"""

from __future__ import annotations

import torch

from mm.ops.host_bounds import host_bounds


def _cdt(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype == torch.float64 else torch.float32


def lightnet_causal_state(k: torch.Tensor, v: torch.Tensor, *, cu_seqlens: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The state after each sequence: k `[B, T, H, d]`, v `[B, T, H, e]` -> (z `[N, H, d]`, S `[N, H, d, e]`)
    with N = B, or N = len(cu_seqlens) - 1 packed sequences of the one row (B = 1). T ≥ 1 per sequence."""
    if k.dim() != 4 or v.dim() != 4 or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"k must be [B, T, H, d] and v [B, T, H, e] alike, got {tuple(k.shape)}, {tuple(v.shape)}")
    if cu_seqlens is not None:
        if k.shape[0] != 1:
            raise ValueError(f"with cu_seqlens the batch size must be 1 (packed), got B = {k.shape[0]}")
        bounds = host_bounds(cu_seqlens)
        if bounds[0] != 0 or bounds[-1] != k.shape[1] or any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
            raise ValueError(f"cu_seqlens must rise strictly from 0 to T = {k.shape[1]}, got {bounds}")
        parts = [lightnet_causal_state(k[:, a:b], v[:, a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
        return torch.cat([z for z, _ in parts]), torch.cat([s for _, s in parts])
    if k.shape[1] == 0:
        raise ValueError("a LightNet state needs at least one token per sequence")
    cdt = _cdt(k)
    with torch.autocast(k.device.type, enabled=False):  # the state stays float32 under autocast
        kf = k.to(cdt)
        z = torch.logsumexp(kf, dim=1)  # [B, H, d]
        state = torch.einsum("bthd,bthe->bhde", torch.exp(kf - z[:, None]), v.to(cdt))
    return z, state


def lightnet_causal_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, z: torch.Tensor, state: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One token per row: q, k `[B, H, d]`, v `[B, H, e]`, z `[B, H, d]`, state `[B, H, d, e]` ->
    (o `[B, H, e]` in q's dtype, new z, new state). No host reads: a CUDA graph can record it."""
    cdt = z.dtype
    with torch.autocast(k.device.type, enabled=False):
        kf = k.to(cdt)
        z_new = torch.logaddexp(z, kf)
        state = torch.exp(z - z_new)[..., None] * state + torch.exp(kf - z_new)[..., None] * v.to(cdt)[..., None, :]
        o = torch.einsum("bhd,bhde->bhe", q.to(cdt), state)
    return o.to(q.dtype), z_new, state

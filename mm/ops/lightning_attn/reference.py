"""Plain references for lightning attention (DESIGN §2): the quadratic masked form and the recurrence.

Both compute, per head h with decay lambda_h = exp(-slopes[h]),

    o_t = sum_{u <= t} lambda^(t-u) (q_t . k_u) v_u  +  lambda^(t+1) q_t S_0
    S_T = lambda^T S_0 + sum_u lambda^(T-1-u) k_u^T v_u

in the dtype of the inputs (pass float64 tensors for a float64 reference). Written for clarity, not
speed: the quadratic form materialises a [B, H, T, T] matrix. Varlen packing is handled by the
public wrapper (one call per sequence); these functions see equal-length batches only.
"""

from __future__ import annotations

import torch


def lightning_attn_quadratic(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slopes: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadratic masked form.

    Args: q, k `[B, T, H, d]`, v `[B, T, H, e]`, slopes `[H]`, initial_state `[B, H, d, e]` or None.
    Returns: o `[B, T, H, e]` and the final state `[B, H, d, e]`, both in the dtype of q.
    """
    dtype = q.dtype
    _, T, _, _ = q.shape
    s = slopes.to(dtype)
    pos = torch.arange(T, device=q.device, dtype=dtype)
    diff = pos[:, None] - pos[None, :]  # [T, T], t - u
    # Mask before exp: exp of a positive exponent above the diagonal could overflow to inf.
    mask = torch.where(diff >= 0, torch.exp(-s[:, None, None] * diff.clamp(min=0)), torch.zeros((), dtype=dtype))
    scores = torch.einsum("bthd,buhd->bhtu", q, k) * mask  # [B, H, T, T]
    o = torch.einsum("bhtu,buhe->bthe", scores, v)
    # Final state: keys weighted by lambda^(T-1-u).
    kdecay = torch.exp(-s[None, :] * (T - 1 - pos)[:, None])  # [T, H]
    state = torch.einsum("buhd,uh,buhe->bhde", k, kdecay, v)
    if initial_state is not None:
        h0 = initial_state.to(dtype)
        qdecay = torch.exp(-s[None, :] * (pos + 1)[:, None])  # [T, H]
        o = o + torch.einsum("bthd,th,bhde->bthe", q, qdecay, h0)
        state = state + torch.exp(-s * T)[None, :, None, None] * h0
    return o, state


def lightning_attn_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slopes: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token recurrence S_t = lambda S_{t-1} + k_t^T v_t, o_t = q_t S_t (same shapes as above)."""
    dtype = q.dtype
    B, T, H, d = q.shape
    e = v.shape[-1]
    decay = torch.exp(-slopes.to(dtype))[None, :, None, None]  # [1, H, 1, 1]
    state = q.new_zeros(B, H, d, e) if initial_state is None else initial_state.to(dtype)
    outs = []
    for t in range(T):
        state = decay * state + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhd,bhde->bhe", q[:, t], state))
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, e)
    return o, state

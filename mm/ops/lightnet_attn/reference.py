"""The defining LightNet recurrences (DESIGN §5), token by token, in the dtype of the inputs.

Causal (keys softmax-normalised over the prefix, per channel i):

    Δ_t = Δ_{t-1} + exp(k_t)            [d]
    S̃_t = S̃_{t-1} + exp(k_t) v_tᵀ       [d, e]
    o_t = q_tᵀ diag(Δ_t)^{-1} S̃_t

Non-causal: the same sums over the whole sequence, o_t = q_tᵀ diag(Δ_T)^{-1} S̃_T, i.e.
o_t = q_t Σ_s softmax_s(k)_s v_sᵀ.

No max is subtracted: this is the definition, meant for float64 (exp(±80) is exact enough there).
Written for clarity, not speed; varlen packing is handled by the public wrapper.
"""

from __future__ import annotations

import torch


def lightnet_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool) -> torch.Tensor:
    """Args: q, k `[B, T, H, d]`, v `[B, T, H, e]`. Returns o `[B, T, H, e]` in q's dtype."""
    B, T, H, d = q.shape
    e = v.shape[-1]
    delta = q.new_zeros(B, H, d)
    state = q.new_zeros(B, H, d, e)
    outs = []
    for t in range(T):
        w = torch.exp(k[:, t])  # [B, H, d]
        delta = delta + w
        state = state + w[..., :, None] * v[:, t, :, None, :]
        if causal:
            outs.append(torch.einsum("bhd,bhde->bhe", q[:, t] / delta, state))
    if not causal:
        return torch.einsum("bthd,bhde->bthe", q, state / delta[..., None]) if T else v.new_zeros(B, 0, H, e)
    return torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, e)

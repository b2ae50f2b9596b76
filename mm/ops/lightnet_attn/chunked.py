"""LightNet attention in pure torch: the CPU path, and on CUDA the causal default and the float64 path.

Non-causal: p = softmax over the sequence of each key channel, S = Σ_s p_sᵀ v_s `[d, e]`, o = q S.

Causal, in the decay form of DESIGN §5 with z = logcumsumexp(k) (per channel, over the prefix):

    S_t = diag(exp(z_{t-1} - z_t)) S_{t-1} + exp(k_t - z_t) v_tᵀ,   o_t = q_t S_t,

so the weight of token s ≤ t in o_t is exp(k_s - z_t) = k̂_s · exp(z_s - z_t) with k̂_s = exp(k_s - z_s).
Since k_s ≤ z_s ≤ z_t, every factor computed here is ≤ 1: nothing can overflow, whatever the
keys' magnitude (z plays the role of the running max). Blocked over chunks of C tokens:
  1. intra-chunk: o_t += Σ_{s ≤ t in chunk} (Σ_i q_ti k̂_si exp(z_si - z_ti)) v_s, the decays
     exp(z_s - z_t) taken elementwise per channel (a [C, C, d] tensor per chunk, masked before exp);
  2. each chunk's own state L_c = Σ_s (k̂_s exp(z_s - z_end))ᵀ v_s, with z_end at the chunk's last token;
  3. a scan over chunks S_{c+1} = diag(exp(z_end(c-1) - z_end(c))) S_c + L_c (normalised states);
  4. inter-chunk: o_t += (q_t exp(z_end(c-1) - z_t)) S_c.
Differentiable through autograd. Computes in float32 for half/bfloat16 inputs, float64 for float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _cdt(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype == torch.float64 else torch.float32


def lightnet_noncausal_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """o_t = q_t Σ_s softmax_s(k)_s v_sᵀ. q, k `[B, T, H, d]`, v `[B, T, H, e]` -> o in q's dtype."""
    cdt = _cdt(q)
    p = torch.softmax(k.to(cdt), dim=1)  # per channel, over the whole sequence
    state = torch.einsum("bthd,bthe->bhde", p, v.to(cdt))
    return torch.einsum("bthd,bhde->bthe", q.to(cdt), state).to(q.dtype)


def lightnet_causal_chunked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, chunk_size: int = 16
) -> torch.Tensor:
    """Causal LightNet attention, blocked. q, k `[B, T, H, d]`, v `[B, T, H, e]` -> o in q's dtype."""
    B, T, H, d = q.shape
    e = v.shape[-1]
    if T == 0:
        return v.new_empty(B, 0, H, e)
    cdt = _cdt(q)
    C = chunk_size
    n = -(-T // C)
    pad = n * C - T
    z = torch.logcumsumexp(k.to(cdt), dim=1)  # [B, T, H, d]
    khat = torch.exp(k.to(cdt) - z)  # ≤ 1

    def blocks(x: torch.Tensor, mode: str = "constant") -> torch.Tensor:
        # [B, T, H, x] -> [B, H, n, C, x]; the tail chunk is padded with zeros (q, k̂, v) or with the
        # last z (so padded rows add nothing and the chunk's end value of z is the last real one)
        x = x.permute(0, 2, 3, 1)  # [B, H, x, T]
        x = F.pad(x.reshape(B, -1, T), (0, pad), mode=mode).view(B, H, -1, n, C)
        return x.permute(0, 1, 3, 4, 2)

    qb, kb, vb = blocks(q.to(cdt)), blocks(khat), blocks(v.to(cdt))
    zb = blocks(z, mode="replicate" if pad else "constant")  # [B, H, n, C, d]

    # 1. intra-chunk, decays masked before exp (s > t would be exp of a positive number)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()  # [t, s]
    gap = zb[..., None, :, :] - zb[..., :, None, :]  # [B, H, n, t, s, d] = z_s - z_t
    decay = torch.exp(torch.where(causal[:, :, None], gap, float("-inf")))
    scores = torch.einsum("bhntd,bhnsd,bhntsd->bhnts", qb, kb, decay)
    o = scores @ vb  # [B, H, n, C, e]

    # 2. local chunk states, normalised at the chunk's last token
    z_end = zb[..., -1, :]  # [B, H, n, d]
    local = (kb * torch.exp(zb - z_end[..., None, :])).transpose(-1, -2) @ vb  # [B, H, n, d, e]

    # 3. scan over chunks: S_in[c] is the state after the previous chunk, normalised at its z_end
    z_prev = torch.cat([zb[:, :, :1, 0], z_end[:, :, :-1]], dim=2)  # [B, H, n, d]; chunk 0: its own z_0
    state = qb.new_zeros(B, H, d, e)
    states_in = []
    for c in range(n):
        states_in.append(state)
        state = torch.exp(z_prev[:, :, c] - z_end[:, :, c])[..., None] * state + local[:, :, c]
    s_in = torch.stack(states_in, dim=2)  # [B, H, n, d, e]

    # 4. inter-chunk
    o = o + (qb * torch.exp(z_prev[..., None, :] - zb)) @ s_in
    o = o.permute(0, 2, 3, 1, 4).reshape(B, n * C, H, e)[:, :T]
    return o.to(q.dtype)

"""MD-TPE: multi-dimensional Toeplitz positional encoding, applied once to the embeddings (DESIGN §5).

For each axis a of the token grid and each head group h of channels, a data-independent
exponentially decaying Toeplitz operator along that axis,

    (T_a x)_t = Σ_s λ_{a,h}^{|t − s|} x_s      (positions t, s along axis a, the other axes fixed),

computed as two first-order recurrences (a forward scan y_t = λ y_{t−1} + x_t, the same backwards,
minus x once for the doubly counted diagonal). Each row of T_a sums to at most (1 + λ) / (1 − λ)
(an infinite axis), so T_a is scaled by (1 − λ) / (1 + λ) and the axes are averaged: the output

    TPE(x) = (1 / n_axes) Σ_a ((1 − λ_a) / (1 + λ_a)) T_a x

is a positional smoothing of x of x's magnitude (unscaled sums of up to 60 neighbours swamped the
embeddings and stalled training). The decays λ = sigmoid(logit) ∈ (0, 1) are learned, one per
(axis, head group), initialised spread over the heads.
"""

from __future__ import annotations

import torch
from torch import nn


def _scan(x: torch.Tensor, lam: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
    """y_t = λ y_{t−1} + x_t along ``dim`` (backwards when ``reverse``); λ broadcasts against x's slices."""
    xs = x.unbind(dim)
    order = range(len(xs) - 1, -1, -1) if reverse else range(len(xs))
    out, y = [None] * len(xs), None
    for t in order:
        y = xs[t] if y is None else lam * y + xs[t]
        out[t] = y
    return torch.stack(out, dim=dim)


class MDTPE(nn.Module):
    def __init__(self, dim: int, num_axes: int, heads: int):
        super().__init__()
        if num_axes not in (1, 2, 3):
            raise ValueError(f"num_axes must be 1, 2 or 3, got {num_axes}")
        if dim % heads:
            raise ValueError(f"dim {dim} must be a multiple of heads {heads}")
        self.num_axes, self.heads = num_axes, heads
        # decays from 0.5 to ~0.97 over the heads: short and long reach from the start
        init = torch.linspace(0.0, 3.5, heads).repeat(num_axes, 1)  # [n_axes, H] logits
        self.decay_logit = nn.Parameter(init)

    def decays(self) -> torch.Tensor:
        return torch.sigmoid(self.decay_logit.float())  # [n_axes, H]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, *grid, C] with len(grid) = num_axes -> TPE(x), same shape and dtype."""
        if x.dim() != self.num_axes + 2:
            raise ValueError(f"x must be [B, *grid ({self.num_axes} axes), C], got {tuple(x.shape)}")
        B, *grid, C = x.shape
        xf = x.float().reshape(B, *grid, self.heads, C // self.heads)
        lam = self.decays()
        out = torch.zeros_like(xf)
        for a in range(self.num_axes):
            la = lam[a][:, None]  # [H, 1]: broadcasts over each slice [B, *other axes, H, C/H]
            dim = 1 + a
            scale = (1 - la) / (1 + la) / self.num_axes
            out = out + scale * (_scan(xf, la, dim, False) + _scan(xf, la, dim, True) - xf)
        return out.reshape(B, *grid, C).to(x.dtype)

"""MD-LRPE: multi-dimensional linearised relative positional encoding of q and k (DESIGN §5).

The head dimension d is split into one chunk per axis (n_axes chunks of d / n_axes channels, each
even); channel pair j of axis a's chunk gets the angle θ = c_a ω_j with c_a the token's coordinate
on that axis and ω_j = base^(-2j / d_a) (RoPE's frequencies, per chunk). Two variants:

  rotate:  rotate each pair (x_{2j}, x_{2j+1}) by θ (RoPE style; output width d);
  cosine:  [x ⊙ cos Θ, x ⊙ sin Θ] with Θ the per-channel angle (each pair's θ on both of its
           channels; output width 2d).

Both make q'·k' depend on the coordinates only through their difference: rotations compose, and
cos θ_q cos θ_k + sin θ_q sin θ_k = cos(θ_q − θ_k). Tokens without a position (class or condition
tokens) get Θ = 0: they pass unchanged (rotate) or as [x, 0] (cosine).
"""

from __future__ import annotations

import torch
from torch import nn

LRPE_KINDS = ("rotate", "cosine", "none")


class MDLRPE(nn.Module):
    def __init__(self, head_dim: int, num_axes: int, kind: str = "rotate", base: float = 10_000.0):
        super().__init__()
        if kind not in LRPE_KINDS:
            raise ValueError(f"lrpe kind must be one of {LRPE_KINDS}, got {kind!r}")
        if num_axes not in (1, 2, 3):
            raise ValueError(f"num_axes must be 1, 2 or 3, got {num_axes}")
        if kind != "none" and (head_dim % num_axes or (head_dim // num_axes) % 2):
            raise ValueError(f"head_dim {head_dim} must split into {num_axes} even chunks for MD-LRPE")
        self.kind, self.head_dim, self.num_axes = kind, head_dim, num_axes
        da = head_dim // num_axes
        freqs = base ** (-torch.arange(0, da, 2, dtype=torch.float32) / da)  # [da / 2]
        self.register_buffer("freqs", freqs, persistent=False)

    @property
    def out_dim(self) -> int:
        return 2 * self.head_dim if self.kind == "cosine" else self.head_dim

    def angles(self, coords: torch.Tensor, has_pos: torch.Tensor | None = None) -> torch.Tensor:
        """coords [T, n_axes] (float) -> per-pair angles [T, d / 2]; rows where has_pos [T] is False
        are 0 (class/condition tokens)."""
        if coords.shape[-1] != self.num_axes:
            raise ValueError(f"coords must be [T, {self.num_axes}], got {tuple(coords.shape)}")
        theta = (coords.float()[..., :, None] * self.freqs).flatten(-2)  # [T, n_axes · da/2], axis-major
        if has_pos is not None:
            theta = theta * has_pos[..., None].to(theta.dtype)
        return theta

    def forward(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """x [B, T, H, d], theta [T, d/2] from ``angles`` -> [B, T, H, out_dim] in x's dtype."""
        if self.kind == "none":
            return x
        cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        theta = theta.to(cdt)
        cos, sin = theta.cos()[:, None, :], theta.sin()[:, None, :]  # [T, 1, d/2]: broadcast over heads
        xf = x.to(cdt)
        if self.kind == "rotate":
            x1, x2 = xf[..., 0::2], xf[..., 1::2]
            out = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
        else:
            cos2, sin2 = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)  # per channel
            out = torch.cat([xf * cos2, xf * sin2], dim=-1)
        return out.to(x.dtype)

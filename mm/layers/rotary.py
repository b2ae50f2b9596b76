"""NeoX-style rotary position embedding, optionally on the first ``rotary_dim`` dims only.

For a pair (x1, x2) = (x[..., i], x[..., i + r/2]), i < r/2, at position p with
θ_i = theta^(-2i/r):  (x1 cos pθ_i − x2 sin pθ_i,  x2 cos pθ_i + x1 sin pθ_i).
"""

from __future__ import annotations

import torch


def rotary_cos_sin(positions: torch.Tensor, rotary_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [..., T] -> cos, sin [..., T, rotary_dim/2] in float32."""
    inv_freq = theta ** (-torch.arange(0, rotary_dim, 2, device=positions.device, dtype=torch.float32) / rotary_dim)
    angles = positions.float()[..., None] * inv_freq
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, d]; cos/sin [B, T, r/2] (or [T, r/2]); rotates x[..., :r], leaves the rest."""
    half = cos.shape[-1]
    cos, sin = cos[..., None, :], sin[..., None, :]  # broadcast over heads
    x1, x2, rest = x[..., :half].float(), x[..., half : 2 * half].float(), x[..., 2 * half :]
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
    return torch.cat([rotated, rest], dim=-1)

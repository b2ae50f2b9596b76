"""Patch embeddings: non-overlapping patches → tokens, for images (2-D), spectrograms (2-D time × mel)
and video (3-D T × H × W tubelets), with the integer grid coordinates MD-TPE and MD-LRPE use.

One module for the three: a strided convolution whose kernel is the patch (Conv2d for 2-D, Conv3d
for 3-D); an image is [B, C, H, W], a spectrogram [B, 1, time, mel] (or [B, time, mel]), a video
[B, C, T, H, W]. Inputs whose sides are not multiples of the patch are refused.
"""

from __future__ import annotations

import torch
from torch import nn


def grid_coords(grid: tuple[int, ...], device=None) -> torch.Tensor:
    """Row-major coordinates of a token grid: [prod(grid), len(grid)] float32."""
    axes = [torch.arange(n, device=device, dtype=torch.float32) for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch: tuple[int, ...]):
        super().__init__()
        if len(patch) not in (2, 3) or min(patch) < 1:
            raise ValueError(f"patch must be 2 or 3 positive sizes, got {patch}")
        conv = nn.Conv2d if len(patch) == 2 else nn.Conv3d
        self.patch = tuple(patch)
        self.proj = conv(in_channels, dim, kernel_size=self.patch, stride=self.patch)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """x [B, C, *sides] -> (tokens [B, N, dim] in row-major grid order, grid)."""
        n = len(self.patch)
        if x.dim() == n + 1 and self.proj.in_channels == 1:  # a spectrogram [B, time, mel]
            x = x[:, None]
        if x.dim() != n + 2 or x.shape[1] != self.proj.in_channels:
            raise ValueError(f"expected [B, {self.proj.in_channels}, {n} sides], got {tuple(x.shape)}")
        sides = tuple(x.shape[2:])
        if any(s % p for s, p in zip(sides, self.patch, strict=True)):
            raise ValueError(f"input sides {sides} must be multiples of the patch {self.patch}")
        y = self.proj(x)  # [B, dim, *grid]
        return y.flatten(2).transpose(1, 2), tuple(y.shape[2:])


def unpatchify(tokens: torch.Tensor, grid: tuple[int, ...], patch: tuple[int, ...], channels: int) -> torch.Tensor:
    """The inverse layout of a patch embedding's output head: tokens [B, prod(grid), prod(patch) · C]
    (each token's values ordered (C, *patch)) -> [B, C, *(grid · patch)]."""
    B, n = tokens.shape[0], len(grid)
    x = tokens.reshape(B, *grid, channels, *patch)
    # [B, g0, g1, (g2), C, p0, p1, (p2)] -> [B, C, g0, p0, g1, p1, (g2, p2)]
    order = [0, n + 1] + [i for a in range(n) for i in (1 + a, n + 2 + a)]
    return x.permute(order).reshape(B, channels, *(g * p for g, p in zip(grid, patch, strict=True)))

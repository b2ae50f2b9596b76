"""LightNetClassifier: an image classifier of LightNet blocks, or (mixer = "softmax") the ViT of the
same size, for the comparison the issue asks for (DESIGN §5).

image [B, 3, H, W] → patches (PatchEmbed) → + MD-TPE over the patch grid → [class token | patches]
→ `layers` pre-norm blocks (MD-LRPE angles from the grid coordinates; the class token has none,
so Θ = 0) → RMSNorm → class token (pool = "cls") or the mean of the patches (pool = "mean") → head.

Presets (configs/lightnet_cls_*.yaml): DeiT-Tiny (hidden 192, 12 layers, 3 heads of 64) and
DeiT-Small (hidden 384, 12 layers, 6 heads of 64), and a tiny demo size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mm.layers.lightnet import MIXERS, LightNetBlock
from mm.layers.md_lrpe import LRPE_KINDS
from mm.layers.md_tpe import MDTPE
from mm.layers.norm import RMSNorm
from mm.layers.patch_embed import PatchEmbed, grid_coords

POOLS = ("cls", "mean")


@dataclass
class LightNetConfig:
    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    num_classes: int = 1000
    hidden: int = 192  # DeiT-Tiny
    layers: int = 12
    heads: int = 3
    head_dim: int = 64
    ffn: int = 512  # SwiGLU width: 2/3 of a 4·hidden MLP keeps DeiT's parameter count
    mixer: str = "lightnet"  # lightnet | softmax (the same-size ViT baseline)
    lrpe: str = "rotate"  # rotate | cosine | none
    tpe: bool = True  # MD-TPE on the patch embeddings
    gate_rank: int = 16  # rank of the output gate of the LightNet mixer
    pool: str = "cls"  # cls | mean
    init_std: float = 0.02

    def __post_init__(self):
        if self.mixer not in MIXERS:
            raise ValueError(f"model.mixer must be one of {MIXERS}, got {self.mixer!r}")
        if self.lrpe not in LRPE_KINDS:
            raise ValueError(f"model.lrpe must be one of {LRPE_KINDS}, got {self.lrpe!r}")
        if self.pool not in POOLS:
            raise ValueError(f"model.pool must be one of {POOLS}, got {self.pool!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"model.image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.lrpe != "none" and self.head_dim % 4:
            raise ValueError(f"model.head_dim must be a multiple of 4 for 2-D MD-LRPE, got {self.head_dim}")
        if min(self.hidden, self.layers, self.heads, self.num_classes) < 1:
            raise ValueError("model.hidden, layers, heads and num_classes must be >= 1")


class LightNetClassifier(nn.Module):
    def __init__(self, cfg: LightNetConfig):
        super().__init__()
        self.cfg = cfg
        self.patch = PatchEmbed(cfg.in_channels, cfg.hidden, (cfg.patch_size, cfg.patch_size))
        self.tpe = MDTPE(cfg.hidden, num_axes=2, heads=cfg.heads) if cfg.tpe else None
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.hidden))
        self.blocks = nn.ModuleList(
            LightNetBlock(cfg.hidden, cfg.heads, cfg.head_dim, cfg.ffn, mixer=cfg.mixer, causal=False,
                          lrpe=cfg.lrpe, num_axes=2, gate_rank=cfg.gate_rank)
            for _ in range(cfg.layers)
        )
        self.norm = RMSNorm(cfg.hidden)
        self.head = nn.Linear(cfg.hidden, cfg.num_classes)
        self.apply(self._init)

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=self.cfg.init_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] -> tokens [B, 1 + N, hidden] after the final norm (class token first)."""
        x, grid = self.patch(images)  # [B, N, hidden]
        B = x.shape[0]
        if self.tpe is not None:
            x = x + self.tpe(x.view(B, *grid, -1)).view_as(x)
        x = torch.cat([self.cls.expand(B, -1, -1).to(x.dtype), x], dim=1)
        theta = None
        if self.cfg.lrpe != "none":
            coords = torch.cat([torch.zeros(1, 2, device=x.device), grid_coords(grid, device=x.device)])
            has_pos = torch.ones(coords.shape[0], dtype=torch.bool, device=x.device)
            has_pos[0] = False  # the class token: Θ = 0
            theta = self.blocks[0].mixer.lrpe.angles(coords, has_pos)
        for block in self.blocks:
            x = block(x, theta)
        return self.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] -> logits [B, num_classes]."""
        x = self.forward_features(images)
        pooled = x[:, 0] if self.cfg.pool == "cls" else x[:, 1:].mean(1)
        return self.head(pooled)

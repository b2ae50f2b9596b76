"""LightNetBackbone: a non-causal LightNet denoiser body for video (T×H×W) and audio (time × mel)
tokens with timestep and condition inputs, for the audible-video diffusion model (DESIGN §5, §6).

    video [B, Cv, T, H, W] → 3-D patches ┐
    audio [B, Ca, time, mel] → 2-D patches ├→ one token sequence [cond | video | audio] + modality
    cond  [B, L, cond_dim] → linear       ┘   embeddings → `layers` LightNet blocks, adaLN-Zero
                                             modulated by the timestep → per-modality linear heads →
                                             predictions of the inputs' shapes.

One non-causal mixer covers all tokens of both modalities at once: LightNet's key normalisation is
order-free, so a single scan is the whole attention (decay models would need scans per axis and
direction). MD-LRPE uses 3 axes: video tokens (frame, row, column); audio tokens (time rescaled to
video frames, so that sound and picture at one moment share a time coordinate; mel bin; 0);
condition tokens have no position (Θ = 0). The timestep t enters as DiT's adaLN-Zero: a sinusoidal
embedding → MLP → per block (shift, scale, gate) for the mixer and the GLU, zero-initialised so each
block starts as the identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from mm.layers.lightnet import LightNetBlock
from mm.layers.norm import RMSNorm
from mm.layers.patch_embed import PatchEmbed, grid_coords, unpatchify


@dataclass
class LightNetBackboneConfig:
    video_channels: int = 4  # latent channels of the video (0: no video stream)
    video_patch: list[int] = field(default_factory=lambda: [1, 2, 2])  # (frames, rows, columns)
    audio_channels: int = 8  # latent channels of the audio (0: no audio stream)
    audio_patch: list[int] = field(default_factory=lambda: [2, 2])  # (time, mel)
    cond_dim: int = 0  # width of condition tokens (e.g. text embeddings); 0: none
    hidden: int = 256
    layers: int = 8
    heads: int = 4
    head_dim: int = 48  # 3 axes of MD-LRPE: a multiple of 6
    ffn: int = 683
    lrpe: str = "rotate"
    gate_rank: int = 16

    def __post_init__(self):
        if not (self.video_channels or self.audio_channels):
            raise ValueError("model needs video_channels or audio_channels > 0")
        if len(self.video_patch) != 3 or len(self.audio_patch) != 2:
            raise ValueError(f"video_patch must have 3 sizes and audio_patch 2, got {self.video_patch}, "
                             f"{self.audio_patch}")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps t [B] -> [B, dim] float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs
    return torch.cat([angles.cos(), angles.sin(), angles.new_zeros(t.shape[0], dim % 2)], dim=-1)


class _Modulated(nn.Module):
    """A LightNetBlock with adaLN-Zero: x + g1·mixer(n1(x)(1 + s1) + b1), x + g2·GLU(n2(x)(1 + s2) + b2)."""

    def __init__(self, block: LightNetBlock, hidden: int):
        super().__init__()
        self.block = block
        self.ada = nn.Linear(hidden, 6 * hidden)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x, temb, theta):
        b1, s1, g1, b2, s2, g2 = self.ada(temb)[:, None].chunk(6, dim=-1)  # each [B, 1, hidden]
        x = x + g1 * self.block.mixer(self.block.norm1(x) * (1 + s1) + b1, theta)
        return x + g2 * self.block.glu(self.block.norm2(x) * (1 + s2) + b2)


class LightNetBackbone(nn.Module):
    def __init__(self, cfg: LightNetBackboneConfig):
        super().__init__()
        self.cfg = cfg
        H = cfg.hidden
        self.video_in = PatchEmbed(cfg.video_channels, H, tuple(cfg.video_patch)) if cfg.video_channels else None
        self.audio_in = PatchEmbed(cfg.audio_channels, H, tuple(cfg.audio_patch)) if cfg.audio_channels else None
        self.cond_in = nn.Linear(cfg.cond_dim, H) if cfg.cond_dim else None
        self.modality = nn.Parameter(torch.zeros(3, H))  # cond, video, audio
        self.time_mlp = nn.Sequential(nn.Linear(H, H), nn.SiLU(), nn.Linear(H, H))
        self.blocks = nn.ModuleList(
            _Modulated(LightNetBlock(H, cfg.heads, cfg.head_dim, cfg.ffn, mixer="lightnet", causal=False,
                                     lrpe=cfg.lrpe, num_axes=3, gate_rank=cfg.gate_rank), H)
            for _ in range(cfg.layers))
        self.norm = RMSNorm(H)
        self.final_ada = nn.Linear(H, 2 * H)
        self.video_out = nn.Linear(H, cfg.video_channels * math.prod(cfg.video_patch)) if cfg.video_channels else None
        self.audio_out = nn.Linear(H, cfg.audio_channels * math.prod(cfg.audio_patch)) if cfg.audio_channels else None
        for m in (self.final_ada, self.video_out, self.audio_out):
            if m is not None:  # adaLN-Zero: the untrained network predicts zeros
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, t: torch.Tensor, video: torch.Tensor | None = None, audio: torch.Tensor | None = None,
                cond: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """t [B] timesteps; video [B, Cv, T, H, W]; audio [B, Ca, time, mel]; cond [B, L, cond_dim].
        Returns {"video": [B, Cv, T, H, W], "audio": [B, Ca, time, mel]} for the streams given."""
        parts, coords, spans = [], [], {}
        dev = t.device
        if cond is not None:
            if self.cond_in is None:
                raise ValueError("cond given but model.cond_dim is 0")
            parts.append(self.cond_in(cond) + self.modality[0])
            coords.append(torch.zeros(cond.shape[1], 3, device=dev))
        frames = None
        for name, x, embed, m in (("video", video, self.video_in, 1), ("audio", audio, self.audio_in, 2)):
            if x is None:
                continue
            if embed is None:
                raise ValueError(f"{name} given but model.{name}_channels is 0")
            tokens, grid = embed(x)
            start = sum(p.shape[1] for p in parts)
            spans[name] = (start, start + tokens.shape[1], grid)
            parts.append(tokens + self.modality[m])
            c = grid_coords(grid, device=dev)
            if name == "video":
                frames = grid[0]
            else:  # time in video-frame units when there is video, then mel bin, then 0
                scale = frames / grid[0] if frames else 1.0
                c = torch.stack([c[:, 0] * scale, c[:, 1], torch.zeros_like(c[:, 0])], dim=-1)
            coords.append(c)
        if not spans:
            raise ValueError("give video or audio (or both)")
        x = torch.cat(parts, dim=1)
        has_pos = torch.ones(x.shape[1], dtype=torch.bool, device=dev)
        if cond is not None:
            has_pos[: cond.shape[1]] = False  # condition tokens: Θ = 0
        theta = self.blocks[0].block.mixer.lrpe.angles(torch.cat(coords), has_pos)
        temb = self.time_mlp(timestep_embedding(t, self.cfg.hidden).to(x.dtype))
        for block in self.blocks:
            x = block(x, temb, theta)
        shift, scale = self.final_ada(temb)[:, None].chunk(2, dim=-1)
        x = self.norm(x) * (1 + scale) + shift
        out = {}
        for name, head, patch, channels in (("video", self.video_out, self.cfg.video_patch, self.cfg.video_channels),
                                            ("audio", self.audio_out, self.cfg.audio_patch, self.cfg.audio_channels)):
            if name in spans:
                a, b, grid = spans[name]
                out[name] = unpatchify(head(x[:, a:b]), grid, tuple(patch), channels)
        return out

"""The LightNet denoiser of TAVDiffusion: `LightNetBackbone` behind the shared Denoiser interface.

    video [B, Cv, T, h, w], audio [B, Ca, F, M], t [B], text [B, L, D] + text_mask [B, L]
      → LightNetBackbone (one scan over [video | audio] at the blocks in `couple_layers`, a scan per
        stream elsewhere; text by masked cross-attention; adaLN-Zero timestep modulation)
      → DenoiserOutput(video, audio, video_feat, audio_feat)

video_feat / audio_feat = Linear(mean of the stream's tokens after the middle block), both
`feat_dim` wide. With couple=False the streams never meet (no coupled scan), so each output,
features included, depends on its own stream only. With couple=True the middle block may already
have mixed the streams: features taken there can carry the other stream's content directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mm.models.lightnet_backbone import LightNetBackbone, LightNetBackboneConfig
from mm.models.tavdiffusion.denoiser import DenoiserOutput


@dataclass
class LightNetDenoiserConfig(LightNetBackboneConfig):
    """LightNetBackboneConfig (hidden, layers, heads, head_dim, ffn, video_patch, audio_patch,
    couple_layers, lrpe, gate_rank) and the width of the pooled features."""

    feat_dim: int = 64

    def __post_init__(self):
        super().__post_init__()
        if self.feat_dim < 1:
            raise ValueError(f"feat_dim must be positive, got {self.feat_dim}")


class LightNetDenoiser(nn.Module):
    def __init__(self, cfg: LightNetDenoiserConfig, *, text_dim: int, video_channels: int, audio_channels: int):
        super().__init__()
        if min(text_dim, video_channels, audio_channels) < 1:
            raise ValueError(f"text_dim, video_channels and audio_channels must be positive, got "
                             f"{text_dim}, {video_channels}, {audio_channels}")
        self.cfg = cfg
        self.backbone = LightNetBackbone(cfg, video_channels=video_channels, audio_channels=audio_channels,
                                         cond_dim=text_dim)
        self.video_feat = nn.Linear(cfg.hidden, cfg.feat_dim)
        self.audio_feat = nn.Linear(cfg.hidden, cfg.feat_dim)

    def forward(self, video: torch.Tensor, audio: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor, couple: bool = True) -> DenoiserOutput:
        """video [B, Cv, T, h, w]; audio [B, Ca, F, M]; t [B] (0..999, long or float); text [B, L, D];
        text_mask [B, L] bool (True = real token, at least one per row); couple=False: no exchange."""
        if video.shape[0] != audio.shape[0] or t.shape != (video.shape[0],) or text.shape[0] != video.shape[0]:
            raise ValueError(f"batch sizes differ: video {tuple(video.shape)}, audio {tuple(audio.shape)}, "
                             f"t {tuple(t.shape)}, text {tuple(text.shape)}")
        out = self.backbone(t, video=video, audio=audio, cond=text, cond_mask=text_mask, couple=couple)
        return DenoiserOutput(video=out["video"], audio=out["audio"], video_feat=self.video_feat(out["video_mid"]),
                              audio_feat=self.audio_feat(out["audio_mid"]))


def build_lightnet_denoiser(cfg: LightNetDenoiserConfig, text_dim: int, video_channels: int,
                            audio_channels: int) -> LightNetDenoiser:
    return LightNetDenoiser(cfg, text_dim=text_dim, video_channels=video_channels, audio_channels=audio_channels)

"""The two-stream UNet denoiser of TAVDiffusion (DESIGN §6), built from diffusers' UNet blocks.

    video [B, Cv, T, h, w] ─ 3-D UNet (unet_3d_blocks) ─┐ down0 … down{n-1}, mid, up0 … up{n-1}
    audio [B, Ca, F, M]    ─ 2-D UNet (unet_2d_blocks) ─┘ with a StreamCoupling after any of them

Both streams denoise at the same timestep t and cross-attend to the same text tokens (masked).
After each level named in ``couple_levels`` the streams exchange by bidirectional cross-attention
(:mod:`.coupling`, zero-initialised, so untrained it is the identity); the coupled hidden state is
both what the next level reads and the skip the matching up level receives. ``couple=False`` skips
every coupling: each prediction then depends on its own stream only (the "independent" baseline,
with the same weights).

The published model couples only at the bottleneck, with video queries only; here every level can
exchange, in both directions, at a shared timestep (DESIGN §6: joint denoising is where we beat it).

Pooled features for the contrastive (InfoNCE) loss: the mid block's output of each stream, taken
*before* the mid-level coupling so each feature is computed by its own stream at that level,
averaged over all its tokens and projected by a Linear to ``feat_dim``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mm.models.tavdiffusion.coupling import StreamCoupling
from mm.models.tavdiffusion.denoiser import DenoiserOutput
from mm.models.tavdiffusion.unet_streams import AudioStream, StreamContext, VideoStream


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def level_names(levels: int) -> list[str]:
    """Every place the streams can exchange, in forward order: down0.., mid, up0.."""
    return [f"down{i}" for i in range(levels)] + ["mid"] + [f"up{i}" for i in range(levels)]


@dataclass
class UNetDenoiserConfig:
    channels: list[int] = field(default_factory=lambda: [32, 64])  # width per level (video; audio too unless below)
    audio_channels_per_level: list[int] = field(default_factory=list)  # [] = channels; else one per level
    layers_per_block: int = 1  # resnets per down block (up blocks get one more, as diffusers' UNets)
    heads: int = 2  # attention heads of the spatial, temporal and text attentions (width C / heads)
    norm_groups: int = 8  # GroupNorm groups everywhere (must divide every width)
    # levels whose blocks carry no attention at all (DownBlock3D/2D, UpBlock3D/2D): diffusers'
    # UNet3DConditionModel makes its deepest level plain, i.e. [3] of 4; the mid block always attends
    plain_levels: list[int] = field(default_factory=list)
    # where the streams exchange: ["all"] (every down level, mid, every up level) or names from
    # down0.., mid, up0.. (up0 is the deepest up block); [] = never
    couple_levels: list[str] = field(default_factory=lambda: ["all"])
    couple_heads: int = 2  # heads of the cross-stream attention (width per head: the query stream's C / heads)
    feat_dim: int = 64  # pooled bottleneck feature width (InfoNCE)
    # dropout inside the 3-D blocks' temporal convs: diffusers hard-codes 0.1 (UNet3DConditionModel)
    temporal_dropout: float = 0.1

    def __post_init__(self):
        _check(len(self.channels) >= 1 and min(self.channels) >= 1,
               f"unet.channels must be a non-empty list of positive widths, got {self.channels}")
        _check(self.audio_channels_per_level == [] or len(self.audio_channels_per_level) == len(self.channels),
               f"unet.audio_channels_per_level must be [] or have {len(self.channels)} entries (one per level), "
               f"got {self.audio_channels_per_level}")
        _check(self.layers_per_block >= 1, f"unet.layers_per_block must be >= 1, got {self.layers_per_block}")
        for key in ("heads", "norm_groups", "couple_heads", "feat_dim"):
            _check(getattr(self, key) >= 1, f"unet.{key} must be >= 1, got {getattr(self, key)}")
        for key, widths in (("channels", self.channels), ("audio_channels_per_level", self.audio_widths)):
            for c in widths:
                _check(c >= 1 and c % self.norm_groups == 0 and c % self.heads == 0 and c % self.couple_heads == 0,
                       f"unet.{key} entry {c} must be a positive multiple of norm_groups={self.norm_groups}, "
                       f"heads={self.heads} and couple_heads={self.couple_heads}")
        levels = len(self.channels)
        for i in self.plain_levels:
            _check(0 <= i < levels, f"unet.plain_levels entry {i} is not a level of {levels}")
        _check(len(set(self.plain_levels)) == len(self.plain_levels),
               f"unet.plain_levels has duplicates: {self.plain_levels}")
        if list(self.couple_levels) != ["all"]:
            names = level_names(levels)
            for name in self.couple_levels:
                _check(name in names, f"unet.couple_levels entry {name!r} is not one of ['all'] or {names}")
            _check(len(set(self.couple_levels)) == len(self.couple_levels),
                   f"unet.couple_levels has duplicates: {self.couple_levels}")
        _check(0.0 <= self.temporal_dropout < 1.0,
               f"unet.temporal_dropout must be in [0, 1), got {self.temporal_dropout}")

    @property
    def audio_widths(self) -> list[int]:
        return list(self.audio_channels_per_level) or list(self.channels)

    @property
    def coupled(self) -> list[str]:
        """The resolved coupling levels, in forward order."""
        names = level_names(len(self.channels))
        return names if list(self.couple_levels) == ["all"] else [n for n in names if n in self.couple_levels]


class UNetDenoiser(nn.Module):
    """Two diffusers UNets (video 3-D, audio 2-D) with cross-stream couplings; the issue-18 Denoiser."""

    def __init__(self, cfg: UNetDenoiserConfig, *, text_dim: int, video_channels: int, audio_channels: int):
        super().__init__()
        for key, value in (("text_dim", text_dim), ("video_channels", video_channels),
                           ("audio_channels", audio_channels)):
            _check(value >= 1, f"{key} must be >= 1, got {value}")
        self.cfg = cfg
        self.text_dim, self.video_channels, self.audio_channels = text_dim, video_channels, audio_channels
        common = dict(layers_per_block=cfg.layers_per_block, heads=cfg.heads, norm_groups=cfg.norm_groups,
                      plain_levels=list(cfg.plain_levels), text_dim=text_dim)
        vw, aw = list(cfg.channels), cfg.audio_widths
        self.video = VideoStream(in_channels=video_channels, channels=vw, temporal_dropout=cfg.temporal_dropout,
                                 **common)
        self.audio = AudioStream(in_channels=audio_channels, channels=aw, **common)
        n = len(vw)
        widths = {f"down{i}": i for i in range(n)} | {"mid": n - 1} | {f"up{i}": n - 1 - i for i in range(n)}
        self.couplings = nn.ModuleDict({
            name: StreamCoupling(video_dim=vw[widths[name]], audio_dim=aw[widths[name]], heads=cfg.couple_heads)
            for name in cfg.coupled})
        self.video_feat = nn.Linear(vw[-1], cfg.feat_dim)
        self.audio_feat = nn.Linear(aw[-1], cfg.feat_dim)

    def _check_inputs(self, video, audio, t, text, text_mask) -> None:
        _check(video.ndim == 5 and video.shape[1] == self.video_channels and min(video.shape) >= 1,
               f"video must be [B, {self.video_channels}, T, h, w], got {tuple(video.shape)}")
        b = video.shape[0]
        _check(audio.ndim == 4 and audio.shape[0] == b and audio.shape[1] == self.audio_channels
               and min(audio.shape) >= 1,
               f"audio must be [{b}, {self.audio_channels}, F, M], got {tuple(audio.shape)}")
        _check(t.shape == (b,), f"t must be [{b}], got {tuple(t.shape)}")
        _check(text.ndim == 3 and text.shape[0] == b and text.shape[2] == self.text_dim and text.shape[1] >= 1,
               f"text must be [{b}, L, {self.text_dim}], got {tuple(text.shape)}")
        _check(text_mask.dtype == torch.bool and text_mask.shape == text.shape[:2],
               f"text_mask must be bool {tuple(text.shape[:2])}, got {text_mask.dtype} {tuple(text_mask.shape)}")

    def _couple(self, name: str, v: torch.Tensor, v_ctx: StreamContext, a: torch.Tensor, a_ctx: StreamContext,
                couple: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if not couple or name not in self.couplings:
            return v, a
        v_tok, v_tau = self.video.tokens(v, v_ctx)  # [B, T·h·w, Cv], [T·h·w]
        a_tok, a_tau = self.audio.tokens(a, a_ctx)  # [B, F·M, Ca], [F·M]
        v_tok, a_tok = self.couplings[name](v_tok, v_tau, a_tok, a_tau)
        return self.video.untokens(v_tok, v, v_ctx), self.audio.untokens(a_tok, a, a_ctx)

    def forward(self, video: torch.Tensor, audio: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor, couple: bool = True) -> DenoiserOutput:
        """video [B, Cv, T, h, w], audio [B, Ca, F, M], t [B], text [B, L, D], text_mask [B, L] bool
        -> DenoiserOutput(video, audio predictions of the input shapes, video_feat/audio_feat [B, feat_dim])."""
        self._check_inputs(video, audio, t, text, text_mask)
        v, v_ctx = self.video.start(video, t, text, text_mask)  # [B·T, C0, h, w]
        a, a_ctx = self.audio.start(audio, t, text, text_mask)  # [B, C0, F, M]
        v_skips, a_skips = (v,), (a,)
        for i in range(len(self.video.channels)):
            v, v_res = self.video.down(i, v, v_ctx)
            a, a_res = self.audio.down(i, a, a_ctx)
            v, a = self._couple(f"down{i}", v, v_ctx, a, a_ctx, couple)
            # a block's last res state is its output: the up path meets the coupled one
            v_skips += v_res[:-1] + (v,)
            a_skips += a_res[:-1] + (a,)
        v, a = self.video.mid(v, v_ctx), self.audio.mid(a, a_ctx)
        video_feat = self.video_feat(self.video.pool(v, v_ctx))  # [B, feat_dim]
        audio_feat = self.audio_feat(self.audio.pool(a, a_ctx))
        v, a = self._couple("mid", v, v_ctx, a, a_ctx, couple)
        n_res = self.cfg.layers_per_block + 1
        for i in range(len(self.video.channels)):
            v_res, v_skips = v_skips[-n_res:], v_skips[:-n_res]
            a_res, a_skips = a_skips[-n_res:], a_skips[:-n_res]
            last = not v_skips
            v = self.video.up(i, v, v_res, v_ctx, size=None if last else tuple(v_skips[-1].shape[-2:]))
            a = self.audio.up(i, a, a_res, a_ctx, size=None if last else tuple(a_skips[-1].shape[-2:]))
            v, a = self._couple(f"up{i}", v, v_ctx, a, a_ctx, couple)
        return DenoiserOutput(video=self.video.finish(v, v_ctx), audio=self.audio.finish(a, a_ctx),
                              video_feat=video_feat, audio_feat=audio_feat)


def build_unet_denoiser(cfg: UNetDenoiserConfig, text_dim: int, video_channels: int,
                        audio_channels: int) -> UNetDenoiser:
    """The two-stream UNet denoiser for latents of the given channel counts and text width."""
    return UNetDenoiser(cfg, text_dim=text_dim, video_channels=video_channels, audio_channels=audio_channels)

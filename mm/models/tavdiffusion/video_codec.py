"""Video codec of TAVDiffusion: uint8 frames <-> the latents the video stream denoises (DESIGN §6).

Two kinds, chosen by ``VideoCodecConfig.kind``:

- ``pixel`` (tiny CPU runs): frames resized to ``size``², scaled from ``[0, 255]`` to ``[-1, 1]``
  (``x / 127.5 - 1``); latents are the pixels themselves, ``Cv = 3``. Decoding clamps to
  ``[-1, 1]`` and maps back to uint8.
- ``vae`` (the published model's SD-1.5 latents): the same ``[-1, 1]`` frames go one by one
  through a diffusers ``AutoencoderKL`` loaded from a local folder; the latent is the posterior
  mean times ``scaling_factor`` (deterministic, no sampling), ``Cv = latent_channels`` and
  ``h = w = size / f`` with ``f = 2^(len(block_out_channels) - 1)`` (8 for SD's VAE).

Frames are resized keeping their aspect ratio (shorter side to ``size``, antialiased bilinear,
torchvision v2) and centre-cropped to ``size``²; square frames are only resized.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mm.models.tavdiffusion.frozen import Frozen, load_autoencoder, vae_decode, vae_encode, vae_factor

KINDS = ("pixel", "vae")


@dataclass
class VideoCodecConfig:
    kind: str = "pixel"  # pixel | vae
    size: int = 32  # frames are resized and centre-cropped to size x size before encoding
    vae: str | None = None  # kind=vae: a local diffusers AutoencoderKL folder (config.json + weights)
    vae_batch: int = 16  # frames per VAE encode/decode call (bounds activation memory)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"model.video.kind must be one of {KINDS}, got {self.kind!r}")
        if self.size < 1:
            raise ValueError(f"model.video.size must be >= 1, got {self.size}")
        if self.vae_batch < 1:
            raise ValueError(f"model.video.vae_batch must be >= 1, got {self.vae_batch}")
        if self.kind == "vae" and not self.vae:
            raise ValueError("model.video.vae must name a local AutoencoderKL folder when model.video.kind=vae")


def frames_to_unit(frames: Tensor, size: int) -> Tensor:
    """uint8 ``[N, 3, H, W]`` -> float32 ``[N, 3, size, size]`` in ``[-1, 1]`` (resize + centre crop)."""
    import torchvision.transforms.v2.functional as TF

    if frames.dtype != torch.uint8:
        raise ValueError(f"video frames must be uint8, got {frames.dtype}")
    x = frames.float()
    if tuple(x.shape[-2:]) != (size, size):
        x = TF.resize(x, size, antialias=True)  # shorter side -> size
        x = TF.center_crop(x, [size, size])
    return (x / 127.5 - 1.0).clamp(-1.0, 1.0)  # antialiasing may overshoot [0, 255] slightly


def unit_to_frames(x: Tensor) -> Tensor:
    """float ``[..., 3, H, W]`` in about ``[-1, 1]`` -> uint8 (clamped, rounded)."""
    return ((x.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


class VideoCodec(Frozen):
    """``encode(uint8 [B, T, 3, H, W]) -> [B, Cv, T, h, w]``; ``decode`` the inverse, uint8 frames."""

    def __init__(self, cfg: VideoCodecConfig):
        super().__init__()
        self.cfg = cfg
        self.vae = load_autoencoder(cfg.vae, key="model.video.vae", channels=3) if cfg.kind == "vae" else None
        self.factor = vae_factor(self.vae) if self.vae is not None else 1
        self.channels = int(self.vae.config.latent_channels) if self.vae is not None else 3
        if cfg.size % self.factor:
            raise ValueError(f"model.video.size={cfg.size} must be a multiple of the VAE's downsampling {self.factor}")
        self.freeze()

    def latent_shape(self, num_frames: int, size: int) -> tuple[int, int, int, int]:
        """``(Cv, T, h, w)`` of ``num_frames`` frames of ``size``² pixels (``encode`` makes ``cfg.size``)."""
        if size % self.factor:
            raise ValueError(f"video size {size} is not a multiple of the VAE's downsampling {self.factor}")
        return (self.channels, num_frames, size // self.factor, size // self.factor)

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"video frames must be [B, T, 3, H, W], got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        x = frames_to_unit(frames.flatten(0, 1), self.cfg.size)  # [B*T, 3, S, S]
        if self.vae is not None:
            x = vae_encode(self.vae, x, batch=self.cfg.vae_batch)  # [B*T, Cv, S/f, S/f]
        return x.unflatten(0, (b, t)).transpose(1, 2).contiguous()  # [B, Cv, T, h, w]

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        if latents.ndim != 5 or latents.shape[1] != self.channels:
            raise ValueError(f"video latents must be [B, {self.channels}, T, h, w], got {tuple(latents.shape)}")
        b, _, t = latents.shape[:3]
        z = latents.transpose(1, 2).flatten(0, 1).float()  # [B*T, Cv, h, w]
        if self.vae is not None:
            z = vae_decode(self.vae, z, batch=self.cfg.vae_batch)  # [B*T, 3, h*f, w*f]
        return unit_to_frames(z).unflatten(0, (b, t))  # [B, T, 3, size, size]


def build_video_codec(cfg: VideoCodecConfig) -> VideoCodec:
    return VideoCodec(cfg)

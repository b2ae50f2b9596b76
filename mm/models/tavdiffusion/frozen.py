"""Frozen pretrained parts of TAVDiffusion, loaded from local folders only.

What the codecs and text encoders share: checking that a configured folder exists (the error names
the config key and the path), loading a diffusers ``AutoencoderKL`` with ``local_files_only=True``
(nothing is ever downloaded), encoding and decoding image batches through it in chunks, and
:class:`Frozen`, a module that stays in eval mode with no gradients whatever its parent does.

VAE encoding is deterministic: the latent is the mean of the encoder's diagonal Gaussian (no
sample is drawn) times ``vae.config.scaling_factor``, as Stable Diffusion and AudioLDM scale their
latents to about unit variance; decoding divides by the same factor.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class Frozen(nn.Module):
    """A module with no trainable parameters that stays in eval mode (no dropout, fixed norms)."""

    trainable = False

    def freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Frozen:
        return super().train(False)  # a parent's .train() must not switch on dropout in here


def require_path(path: str | None, *, key: str, kind: str = "folder", must_contain: str | None = None) -> Path:
    """``path`` as a Path, or a ValueError naming ``key`` and the path when it is unset or absent."""
    if path is None or not str(path).strip():
        raise ValueError(f"{key} must be set to a local {kind}, got {path!r}")
    p = Path(path).expanduser()
    exists = p.is_dir() if kind == "folder" else p.is_file()
    if not exists:
        raise ValueError(f"{key}={str(path)!r}: no such local {kind}")
    if must_contain is not None and not (p / must_contain).is_file():
        raise ValueError(f"{key}={str(path)!r}: the folder has no {must_contain}")
    return p


def load_autoencoder(path: str | None, *, key: str, channels: int):
    """A diffusers ``AutoencoderKL`` from a local folder (``save_pretrained`` layout), frozen.

    ``channels`` is the image channel count the caller feeds (3 for frames, 1 for mel images)."""
    folder = require_path(path, key=key, must_contain="config.json")
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{key}={str(path)!r}: not a diffusers AutoencoderKL folder: {err}") from None
    if vae.config.in_channels != channels or vae.config.out_channels != channels:
        raise ValueError(f"{key}={str(path)!r}: the VAE maps {vae.config.in_channels}->{vae.config.out_channels} "
                         f"channels; this codec needs {channels}")
    vae.requires_grad_(False)
    return vae.eval()


def vae_factor(vae) -> int:
    """Spatial downsampling of an ``AutoencoderKL``: one halving per down block after the first."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def vae_encode(vae, images: torch.Tensor, *, batch: int) -> torch.Tensor:
    """``[N, C, H, W]`` images in the VAE's input range -> ``[N, c, H/f, W/f]`` float32 latents
    (posterior mean × scaling factor), ``batch`` images per encoder call."""
    dtype = next(vae.parameters()).dtype
    out = [vae.encode(chunk.to(dtype)).latent_dist.mean for chunk in images.split(batch)]
    return torch.cat(out).float() * vae.config.scaling_factor


@torch.no_grad()
def vae_decode(vae, latents: torch.Tensor, *, batch: int) -> torch.Tensor:
    """``[N, c, h, w]`` scaled latents -> ``[N, C, h·f, w·f]`` float32 images (unclamped)."""
    dtype = next(vae.parameters()).dtype
    z = latents / vae.config.scaling_factor
    return torch.cat([vae.decode(chunk.to(dtype)).sample for chunk in z.split(batch)]).float()

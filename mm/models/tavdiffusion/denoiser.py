"""The output every TAVDiffusion denoiser (UNet or LightNet) returns: both predictions and the pooled
bottleneck features of each stream for the contrastive (InfoNCE) loss."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class DenoiserOutput:
    video: Tensor  # prediction, the shape of the video input
    audio: Tensor  # prediction, the shape of the audio input
    video_feat: Tensor  # [B, D_feat] pooled bottleneck features (for the InfoNCE loss)
    audio_feat: Tensor  # [B, D_feat] same width as video_feat

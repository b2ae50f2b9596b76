"""AVHScore of clips held in memory (generated samples): frames and sound straight from tensors, through
the same preprocessing as files (:mod:`evals.av_media`: shorter side 224, centre crop, CLIP mean/std;
mono 16 kHz audio)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evals.av_encoders import AVEncoderBase
from evals.av_media import SAMPLE_RATE, normalize_frames, resize_crop
from evals.avhscore import avhscore


@torch.no_grad()
def clip_avhscores(encoder: AVEncoderBase, frames: torch.Tensor, waves: torch.Tensor, sample_rate: int,
                   audio_of: Sequence[int] | None = None) -> list[float]:
    """AVHScore of clip i's frames (uint8 [N, T, 3, H, W]) with the sound of clip ``audio_of[i]`` (default:
    its own) from ``waves`` [N, S] at ``sample_rate``."""
    import torchaudio.functional as AF

    if frames.dim() != 5 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 [N, T, 3, H, W], got {frames.dtype} {tuple(frames.shape)}")
    if waves.dim() != 2 or len(waves) != len(frames):
        raise ValueError(f"waves must be [N, S] with N = {len(frames)} clips, got {tuple(waves.shape)}")
    order = list(range(len(frames))) if audio_of is None else list(audio_of)
    if sample_rate != SAMPLE_RATE:
        waves = AF.resample(waves.float(), sample_rate, SAMPLE_RATE)
    audio_emb = encoder.embed_audio_batch([w for w in waves.float()])
    scores = []
    for i, clip in enumerate(frames):
        frame_emb = encoder.embed_frames(normalize_frames(resize_crop(clip)).to(getattr(encoder, "device", "cpu")))
        scores.append(avhscore(frame_emb, audio_emb[order[i]]))
    return scores

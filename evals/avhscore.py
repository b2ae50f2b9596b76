"""AVHScore and JavisScore: how well a video's frames agree with its sound (DESIGN §6).

With unit-free cosines cos(a, b) = a·b / (|a| |b|), frame embeddings f_1..f_N = E_img(frame_i) and
audio embeddings from E_audio:

    AVHScore   = (1/N) Σ_i cos(f_i, E_audio(whole track))                       (TAVGBench)
    JavisScore = (1/M) Σ_w mean of the lowest ⌊0.4 · n_w⌋ (at least 1) of cos(f_i, E_audio(a_w)), i ∈ w

JavisScore's M windows are 0.5 s long, without overlap: ⌊0.5 · fps⌋ frames and ⌊0.5 · 16000⌋
samples each, the last one shifted back to end at the last frame / sample; M is the smaller of
the two window counts. A clip no longer than one window is one window of all its frames and the
whole track. This follows JavisDiT's evaluation, except that a window of fewer than 3 frames
averages its lowest cosine (JavisDiT's ⌊0.4 · n⌋ = 0 would average nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

METRICS = ("avhscore", "javisscore")


@dataclass(frozen=True)
class Window:
    frames: tuple[int, int]  # [start, end) frame indices
    samples: tuple[int, int]  # [start, end) audio sample indices


def avhscore(frame_emb: torch.Tensor, audio_emb: torch.Tensor) -> float:
    """frame_emb [N, D], audio_emb [D] -> mean over frames of cos(f_i, a)."""
    return F.cosine_similarity(frame_emb.float(), audio_emb.float()[None], dim=-1).mean().item()


def _starts(total: int, size: int) -> list[int]:
    """Window starts stepping by ``size``; the last one moved back to end at ``total``."""
    starts = []
    for start in range(0, total, size):
        starts.append(min(start, total - size))
        if starts[-1] + size >= total:
            break
    return starts


def javis_windows(num_frames: int, frame_rate: float, num_samples: int, sample_rate: int,
                  window_s: float = 0.5) -> list[Window]:
    """The JavisScore windows of a clip (see the module docstring)."""
    fw = max(1, int(window_s * frame_rate))
    aw = max(1, int(window_s * sample_rate))
    if num_frames <= fw or num_samples <= aw:
        return [Window((0, num_frames), (0, num_samples))]
    frames, samples = _starts(num_frames, fw), _starts(num_samples, aw)
    m = min(len(frames), len(samples))
    return [Window((f, f + fw), (a, a + aw)) for f, a in zip(frames[:m], samples[:m], strict=True)]


def javisscore(frame_emb: torch.Tensor, window_audio_emb: torch.Tensor, windows: list[Window],
               lowest: float = 0.4) -> float:
    """frame_emb [N, D], window_audio_emb [M, D] (one per window) -> JavisScore."""
    if len(windows) != window_audio_emb.shape[0]:
        raise ValueError(f"{len(windows)} windows but {window_audio_emb.shape[0]} window audio embeddings")
    per_window = []
    for w, a in zip(windows, window_audio_emb, strict=True):
        cos = F.cosine_similarity(frame_emb[w.frames[0]:w.frames[1]].float(), a.float()[None], dim=-1)
        k = max(1, int(cos.numel() * lowest))
        per_window.append(cos.topk(k, largest=False).values.mean())
    return torch.stack(per_window).mean().item()

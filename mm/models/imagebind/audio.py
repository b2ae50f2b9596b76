"""ImageBind's audio preprocessing: a 16 kHz waveform -> 3 normalised Kaldi fbank clips (DESIGN §6).

Clip k of 3 starts at k · max(D − 2, 0) / 3 seconds (D the track length; pytorchvideo's
ConstantClipsPerVideoSampler, as ImageBind uses it) and lasts 2 s (shorter tracks: the whole track).
Each clip: remove its mean, ``torchaudio.compliance.kaldi.fbank`` (htk_compat, hanning window, 128
mel bins, 25 ms frames, 10 ms shift, no dither, no energy), transpose to [128, frames], zero-pad or
cut to 204 frames, then (x − (−4.268)) / 9.138. The model embeds each clip and averages.
"""

from __future__ import annotations

from fractions import Fraction

import torch

SAMPLE_RATE = 16000
CLIP_SECONDS = 2
CLIPS = 3
MEL_BINS = 128
TARGET_FRAMES = 204
FBANK_MEAN, FBANK_STD = -4.268, 9.138
MIN_SAMPLES = 400  # one 25 ms fbank frame


def clip_bounds(num_samples: int, sample_rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """Sample ranges [a, b) of the 3 clips: int(start · sr), int(end · sr).

    The start times are computed as pytorchvideo does, exact fractions of the float duration
    (so a 5.3 s track starts its second clip at sample 17599, not 17600, as ImageBind reads it)."""
    room = Fraction(max(num_samples / sample_rate - CLIP_SECONDS, 0))
    starts = [room / CLIPS * k for k in range(CLIPS)]
    return [(int(t * sample_rate), int((t + CLIP_SECONDS) * sample_rate)) for t in starts]


def fbank_clip(wave: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """wave [S] -> normalised fbank [1, 128, 204]."""
    from torchaudio.compliance import kaldi

    wave = wave.float() - wave.float().mean()
    fbank = kaldi.fbank(wave[None], htk_compat=True, sample_frequency=sample_rate, use_energy=False,
                        window_type="hanning", num_mel_bins=MEL_BINS, dither=0.0, frame_length=25,
                        frame_shift=10).T  # [128, frames]
    pad = TARGET_FRAMES - fbank.shape[1]
    fbank = torch.nn.functional.pad(fbank, (0, pad)) if pad > 0 else fbank[:, :TARGET_FRAMES]
    return ((fbank - FBANK_MEAN) / FBANK_STD)[None]


def audio_clips(wave: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Mono wave [S] at 16 kHz -> [3, 1, 128, 204]."""
    if wave.ndim != 1:
        raise ValueError(f"want a mono waveform [S], got shape {tuple(wave.shape)}")
    if wave.numel() < MIN_SAMPLES:
        raise ValueError(f"audio of {wave.numel()} samples is shorter than one 25 ms fbank frame ({MIN_SAMPLES})")
    return torch.stack([fbank_clip(wave[a:b], sample_rate) for a, b in clip_bounds(wave.numel(), sample_rate)])

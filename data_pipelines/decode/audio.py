"""Audio from a container (the mp4 of a clip, or a wav) -> mono float at 16 kHz, optional log-mel.

Decoding is PyAV (torchaudio 2.11's ``load`` needs torchcodec); ffmpeg's resampler only converts
the sample format (planar float, native rate and channels). Mono is the mean of the channels
(ffmpeg's own downmix scales stereo by 1/sqrt(2) instead), and the rate change is torchaudio's
``resample`` as the recipe specifies.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

from ..errors import SampleError

_SEEK_MARGIN_S = 0.5  # seek this far before the clip: the decoder settles before the samples we keep


@dataclass
class AudioDecodeConfig:
    sample_rate: int = 16000
    mel: bool = False  # also return a log-mel spectrogram
    n_mels: int = 64
    n_fft: int = 400  # 25 ms at 16 kHz
    hop_length: int = 160  # 10 ms at 16 kHz
    require_audio: bool = True  # False: a clip without an audio stream gets silence

    def __post_init__(self):
        if self.sample_rate < 1000:
            raise ValueError(f"sample_rate must be >= 1000, got {self.sample_rate}")
        if self.n_mels < 1 or self.n_fft < 2 or self.hop_length < 1:
            raise ValueError(f"bad mel settings n_mels={self.n_mels} n_fft={self.n_fft} hop={self.hop_length}")


def decode_audio(data: bytes, start: float, duration: float, cfg: AudioDecodeConfig):
    """``[S]`` float32 mono at ``cfg.sample_rate`` covering ``[start, start + duration)`` seconds.

    ``S = round(duration * sample_rate)``; a short track is padded with zeros.
    """
    import av
    import numpy as np
    import torch
    import torchaudio.functional as AF

    n_out = round(duration * cfg.sample_rate)
    if not data:
        raise SampleError("bad_audio", "empty member")
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.audio:
                if cfg.require_audio:
                    raise SampleError("bad_audio", "no audio stream")
                return torch.zeros(n_out)
            stream = container.streams.audio[0]
            rate = stream.rate or stream.codec_context.sample_rate
            if start > _SEEK_MARGIN_S:  # long files: jump near the clip instead of decoding from 0
                container.seek(int((start - _SEEK_MARGIN_S) / stream.time_base), stream=stream)
            resampler = av.AudioResampler(format="fltp", rate=rate)  # layout kept
            chunks = []
            t0 = None  # time of the first decoded sample
            for frame in container.decode(stream):
                if t0 is None:
                    t0 = frame.time if frame.time is not None else 0.0
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0))  # [channels, n] -> [n]
                if frame.time is not None and frame.time > start + duration:
                    break
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().mean(axis=0))
    except SampleError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as err:
        raise SampleError("bad_audio", str(err)) from None
    if not chunks:
        raise SampleError("bad_audio", "no audio samples decoded")
    wave = np.concatenate(chunks).astype(np.float32)
    a = max(0, round((start - (t0 or 0.0)) * rate))
    b = a + round(duration * rate)
    wave = torch.from_numpy(wave[a:b].copy())
    if rate != cfg.sample_rate:
        wave = AF.resample(wave, rate, cfg.sample_rate)
    if wave.numel() < n_out:
        wave = torch.nn.functional.pad(wave, (0, n_out - wave.numel()))
    return wave[:n_out]


@functools.lru_cache(maxsize=4)
def _mel_transform(sample_rate: int, n_fft: int, hop_length: int, n_mels: int):
    import torchaudio.transforms as T

    return T.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels)


def log_mel(wave, cfg: AudioDecodeConfig):
    """``[..., S]`` -> ``[..., n_mels, S // hop_length + 1]`` natural-log mel power (floored at 1e-10)."""
    import torch

    mel = _mel_transform(cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels)(wave)
    return torch.log(mel.clamp_min(1e-10))

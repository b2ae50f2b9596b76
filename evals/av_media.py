"""A video file (and optionally a separate audio file) -> the frames and soundtrack the AV metrics read.

Frames: every frame of the video, or frames every 1/fps seconds (``fps``), decoded with the suite's
decoder (decord, PyAV fallback) in chunks, each resized so its shorter side is 224 (bicubic,
antialiased) and centre-cropped to 224 x 224, kept uint8 until :func:`normalize_frames` applies the
CLIP mean/std (DESIGN §6). Audio: the whole track, mono (mean of the channels), resampled to
16 kHz by the suite's audio decoder. A file that cannot be used raises :class:`Unusable` with a
reason (``not_found``, ``undecodable``, ``no_audio``, ``too_short``) that the report lists.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from data_pipelines.collate import NORMALIZATIONS
from data_pipelines.errors import SampleError

FRAME_SIZE = 224
SAMPLE_RATE = 16000
_CHUNK = 64  # frames decoded per call: bounds memory for long, large videos
REASONS = ("not_found", "undecodable", "no_audio", "too_short")


class Unusable(Exception):
    """A file the metric cannot score; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)  # args = (reason, detail): pickles back from DataLoader workers
        self.reason, self.detail = reason, detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass
class Media:
    frames: torch.Tensor  # uint8 [N, 3, 224, 224]
    frame_rate: float  # frames per second of ``frames`` (the source rate, or --fps)
    wave: torch.Tensor  # float32 [S], mono at 16 kHz


def resize_crop(frames: torch.Tensor, size: int = FRAME_SIZE) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> [N, 3, size, size]: shorter side to ``size`` (bicubic, antialiased), centre crop."""
    import torchvision.transforms.v2.functional as TF

    frames = TF.resize(frames, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(frames, size)


def normalize_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32, scaled to [0, 1] then CLIP mean/std per channel."""
    mean, std = (torch.tensor(s, device=frames.device).view(1, 3, 1, 1) for s in NORMALIZATIONS["clip"])
    return (frames.float() / 255.0 - mean) / std


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise Unusable("not_found", f"{path}: no such file")
    data = path.read_bytes()
    if not data:
        raise Unusable("undecodable", f"{path}: empty file")
    return data


def audio_seconds(data: bytes) -> float | None:
    """Length of the first audio stream in seconds; None when the container has no audio stream."""
    import av

    with av.open(io.BytesIO(data)) as c:
        if not c.streams.audio:
            return None
        s = c.streams.audio[0]
        if s.duration is not None and s.time_base is not None:
            return float(s.duration * s.time_base)
        return (c.duration or 0) / 1e6


def read_frames(data: bytes, fps: float | None) -> tuple[torch.Tensor, float]:
    """uint8 [N, 3, 224, 224] and their rate: every frame (``fps`` None) or one every 1/fps s."""
    from data_pipelines.decode.video import VideoDecodeConfig, decode_video, probe_video

    info = probe_video(data)
    rate = fps or info["fps"]
    count = info["frames"] if fps is None else math.floor(info["duration"] * fps + 1e-6)
    if count < 1:
        raise Unusable("too_short", f"no frame to sample ({info['duration']:.3f} s at {rate} fps)")
    chunks = []
    for first in range(0, count, _CHUNK):
        n = min(_CHUNK, count - first)
        cfg = VideoDecodeConfig(num_frames=n, fps=rate, size=0, random_start=False)
        chunks.append(resize_crop(decode_video(data, first / rate, cfg)))
    return torch.cat(chunks), float(rate)


def read_audio(data: bytes, min_samples: int) -> torch.Tensor:
    """The whole first audio track, mono float32 at 16 kHz."""
    from data_pipelines.decode.audio import AudioDecodeConfig, decode_audio

    seconds = audio_seconds(data)
    if seconds is None:
        raise Unusable("no_audio", "no audio stream")
    wave = decode_audio(data, 0.0, seconds, AudioDecodeConfig(sample_rate=SAMPLE_RATE))
    if wave.numel() < min_samples:
        raise Unusable("too_short", f"{wave.numel()} audio samples at 16 kHz; the encoder needs >= {min_samples}")
    return wave


def load_media(video: str | Path, audio: str | Path | None, fps: float | None, min_audio_samples: int) -> Media:
    """Frames of ``video`` and the soundtrack of ``audio`` (default: the video's own)."""
    video = Path(video)
    data = _read(video)
    source = _read(Path(audio)) if audio is not None else data
    try:
        frames, rate = read_frames(data, fps)
        wave = read_audio(source, min_audio_samples)
    except SampleError as err:
        raise Unusable("undecodable", err.detail or str(err)) from None
    except (OSError, ValueError) as err:  # PyAV's errors derive from these
        raise Unusable("undecodable", f"{type(err).__name__}: {err}") from None
    return Media(frames, rate, wave)

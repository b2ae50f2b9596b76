"""Video bytes -> ``num_frames`` frames sampled at a target fps, via decord with a PyAV fallback.

decord 0.6.0's CPU wheel bundles FFmpeg 4.1 (no AV1) and can deadlock when a file over-reports
its frame count, so frame indices are clamped to the frames that exist and any decord failure
falls back to PyAV (a current FFmpeg) when ``fallback`` is set. A hang is caught one level up, by
the DataLoader worker timeout.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from typing import Optional

from ..errors import SampleError

BACKENDS = ("decord", "pyav")


@dataclass
class VideoDecodeConfig:
    num_frames: int = 16
    fps: float = 8.0  # frames are taken every 1/fps seconds of the source
    size: int = 64  # frames are resized to size x size (0: keep the source size)
    backend: str = "decord"  # decord | pyav
    fallback: Optional[str] = "pyav"  # noqa: UP045 - OmegaConf schema; None: no fallback backend
    random_start: bool = True  # clip start uniform over the video (else the start of the video)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.fallback is not None and self.fallback not in BACKENDS:
            raise ValueError(f"fallback must be one of {BACKENDS} or None, got {self.fallback!r}")
        if self.num_frames < 1 or self.fps <= 0 or self.size < 0:
            raise ValueError(f"bad clip num_frames={self.num_frames} fps={self.fps} size={self.size}")

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps


def probe_video(data: bytes) -> dict:
    """Container facts stored beside the bytes at build time: fps, duration, frames, audio rate."""
    import av

    if not data:
        raise SampleError("bad_video", "empty file")
    try:
        with av.open(io.BytesIO(data)) as c:
            if not c.streams.video:
                raise SampleError("bad_video", "no video stream")
            v = c.streams.video[0]
            fps = float(v.average_rate or v.guessed_rate or 0)
            if v.duration is not None and v.time_base is not None:
                duration = float(v.duration * v.time_base)
            else:
                duration = (c.duration or 0) / 1e6
            frames = v.frames or round(duration * fps)
            info = {
                "fps": fps,
                "duration": duration,
                "frames": int(frames),
                "width": v.codec_context.width,
                "height": v.codec_context.height,
                "video_codec": v.codec_context.name,
                "audio_sample_rate": c.streams.audio[0].rate if c.streams.audio else None,
                "audio_codec": c.streams.audio[0].codec_context.name if c.streams.audio else None,
            }
    except SampleError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise SampleError("bad_video", str(err)) from None
    if fps <= 0 or duration <= 0:
        raise SampleError("bad_video", f"no usable fps/duration (fps={fps}, duration={duration})")
    return info


def clip_start(duration: float, cfg: VideoDecodeConfig, rng: random.Random) -> float:
    """Start time (s) of the clip: uniform over what fits, 0 for short videos or random_start=False."""
    room = max(0.0, duration - cfg.seconds)
    return rng.uniform(0.0, room) if cfg.random_start and room > 0 else 0.0


def _indices(start: float, src_fps: float, n_src: int, cfg: VideoDecodeConfig) -> list[int]:
    last = max(n_src - 1, 0)
    return [min(int(round((start + i / cfg.fps) * src_fps)), last) for i in range(cfg.num_frames)]


def _decord(data: bytes, start: float, cfg: VideoDecodeConfig):
    import decord
    import torch

    size = {"width": cfg.size, "height": cfg.size} if cfg.size else {}
    vr = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1, **size)
    try:
        n = len(vr)
        if n < 1:
            raise SampleError("bad_video", "no frames")
        frames = vr.get_batch(_indices(start, vr.get_avg_fps(), n, cfg)).asnumpy()  # [T, H, W, 3]
    finally:
        del vr  # decord keeps decoder buffers alive otherwise (memory growth)
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()  # [T, 3, H, W]


def _pyav(data: bytes, start: float, cfg: VideoDecodeConfig):
    import av
    import numpy as np
    import torch

    times = [start + i / cfg.fps for i in range(cfg.num_frames)]
    picked: list = [None] * len(times)
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        if start > 1.0 and stream.time_base:  # lands on the keyframe before; decode forward from there
            c.seek(int((start - 1.0) / stream.time_base), stream=stream)
        half = 0.5 / float(stream.average_rate or stream.guessed_rate or 25)
        last = None
        j = 0
        for frame in c.decode(stream):
            t = frame.time if frame.time is not None else 0.0
            # a target time takes the frame nearest to it (as decord's index rounding does)
            while j < len(times) and times[j] + half < t - 1e-6:
                picked[j] = last
                j += 1
            if j >= len(times):
                break
            if cfg.size:
                last = frame.reformat(width=cfg.size, height=cfg.size, format="rgb24").to_ndarray()
            else:
                last = frame.to_ndarray(format="rgb24")
        for k in range(j, len(times)):
            picked[k] = last
    if last is None:
        raise SampleError("bad_video", "no frames")
    first = next(p for p in picked if p is not None)
    frames = np.stack([p if p is not None else first for p in picked])  # [T, H, W, 3]
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()  # [T, 3, H, W]


def decode_video(data: bytes, start: float, cfg: VideoDecodeConfig):
    """uint8 ``[num_frames, 3, H, W]`` starting at ``start`` seconds; :class:`SampleError` if unreadable."""
    if not data:
        raise SampleError("bad_video", "empty member")
    backends = [cfg.backend] + ([cfg.fallback] if cfg.fallback and cfg.fallback != cfg.backend else [])
    errors = []
    for name in backends:
        try:
            return (_decord if name == "decord" else _pyav)(data, start, cfg)
        except SampleError as err:
            errors.append(f"{name}: {err.detail}")
        except Exception as err:  # noqa: BLE001 - decord raises bare DECORDError/RuntimeError
            errors.append(f"{name}: {type(err).__name__}: {err}")
    raise SampleError("bad_video", "; ".join(errors))

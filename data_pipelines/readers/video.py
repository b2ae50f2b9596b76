"""Audible-video shards -> clips of frames + the matching audio.

Batch: ``video`` uint8 ``[B, T, 3, H, W]`` (kept uint8: a quarter of the bytes through the worker
queues; scale on the device), ``audio`` float ``[B, S]`` mono at ``audio.sample_rate`` covering
the same seconds, ``mel`` ``[B, n_mels, F]`` when ``audio.mel``, ``start`` ``[B]`` clip start (s),
``text`` [str], ``key`` [str]. Audio comes from a ``wav``/``flac`` member when the sample has one,
else from the video container. fps/duration come from the ``json`` written at build time (probed
with PyAV when absent).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..decode.audio import AudioDecodeConfig, decode_audio, log_mel
from ..decode.video import VideoDecodeConfig, clip_start, decode_video, probe_video
from ..errors import SampleError
from ..stateful import ResumableLoader, ShardStream, fixed_batches, require
from ..stream import StreamConfig
from .image_text import load_json

VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov", "m4v")
AUDIO_EXTS = ("wav", "flac")


@dataclass
class VideoReaderConfig:
    stream: StreamConfig = field(default_factory=StreamConfig)
    video: VideoDecodeConfig = field(default_factory=VideoDecodeConfig)
    audio: AudioDecodeConfig = field(default_factory=AudioDecodeConfig)
    with_audio: bool = True


class VideoReader:
    def __init__(self, cfg: VideoReaderConfig):
        self.cfg = cfg
        self.wanted = {*VIDEO_EXTS, *AUDIO_EXTS, "txt", "json"}

    def decode(self, sample: dict, rng: random.Random) -> tuple:
        data = require(sample, *VIDEO_EXTS)
        if not data:
            raise SampleError("bad_video", "empty member")
        meta = load_json(sample)
        duration = meta.get("duration")
        if not isinstance(duration, (int, float)) or duration <= 0:
            duration = probe_video(data)["duration"]
        start = clip_start(float(duration), self.cfg.video, rng)
        frames = decode_video(data, start, self.cfg.video)
        audio = None
        if self.cfg.with_audio:
            source = next((sample[e] for e in AUDIO_EXTS if e in sample), data)
            audio = decode_audio(source, start, self.cfg.video.seconds, self.cfg.audio)
        text = meta.get("caption")
        if not isinstance(text, str):
            text = sample["txt"].decode("utf-8", errors="replace") if "txt" in sample else ""
        return frames, audio, start, text, sample["__key__"]

    def collate(self, items: list) -> dict:
        import torch

        frames, audio, start, text, keys = zip(*items, strict=True)
        batch = {
            "video": torch.stack(frames),  # [B, T, 3, H, W] uint8
            "start": torch.tensor(start, dtype=torch.float32),
            "text": list(text),
            "key": list(keys),
        }
        if self.cfg.with_audio:
            batch["audio"] = torch.stack(audio)  # [B, S]
            if self.cfg.audio.mel:
                batch["mel"] = log_mel(batch["audio"], self.cfg.audio)  # [B, n_mels, F]
        return batch

    def batches(self, items: Iterator, batch_size: int, carry: int, keep_partial: bool):
        return fixed_batches(items, batch_size, self.collate, keep_partial)


def build_video_reader(cfg: VideoReaderConfig) -> ResumableLoader:
    return ResumableLoader(ShardStream(cfg.stream, VideoReader(cfg)))


def heldout_video_batches(cfg: VideoReaderConfig, shards: list[str], batches: int) -> Iterator[dict]:
    """Up to ``batches`` batches of ``shards`` read once, in order, on one process, decoded as ``cfg``
    decodes training clips (its batch size, frames and audio)."""
    from ..stream import one_pass

    stream = one_pass(shards, cfg.stream.batch_size, rank=0, world_size=1)
    reader = build_video_reader(VideoReaderConfig(stream=stream, video=cfg.video, audio=cfg.audio))
    for i, batch in enumerate(reader):
        if i == batches:
            break
        yield batch

"""``av``: short clips of a moving shape whose soundtrack is tied to what is seen.

The tone's pitch is set by the shape's colour and a click sounds on every frame where the shape
bounces off a wall, so audio-visual correspondence is learnable (and checkable: the description
says how many bounces there are). Clips are muxed as mp4 (H.264 video + AAC audio) by
:func:`data_pipelines.encode.encode_mp4`. One sample is ``{key}.mp4`` + ``{key}.txt`` + ``{key}.json``
(the fields ``probe_video`` gives for foreign clips, plus the generating parameters).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from ..encode import encode_mp4
from .shapes import BACKGROUND, COLOURS, SHAPES, article, draw_shape, sample_seed

# Pitch per colour (Hz): a model can tell the colour by ear.
PITCH = {"red": 220.0, "green": 330.0, "blue": 440.0, "yellow": 550.0, "purple": 660.0, "orange": 880.0}


@dataclass
class AVSynthConfig:
    num_samples: int = 200
    seconds: float = 2.0
    fps: int = 8
    size: int = 64  # frame height = width (even: yuv420p)
    sample_rate: int = 16000
    seed: int = 0

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.size < 16 or self.size % 2:
            raise ValueError(f"size must be an even number >= 16, got {self.size}")
        if self.fps < 1 or self.seconds <= 0:
            raise ValueError(f"need fps >= 1 and seconds > 0, got fps={self.fps}, seconds={self.seconds}")
        if self.sample_rate < 8000:
            raise ValueError(f"sample_rate must be >= 8000, got {self.sample_rate}")


def _trajectory(cfg: AVSynthConfig, rng: random.Random, r: float) -> tuple[list, list[int]]:
    """Centre per frame and the frames on which the shape bounced off a wall."""
    n = round(cfg.seconds * cfg.fps)
    lo, hi = r, cfg.size - r
    x, y = rng.uniform(lo, hi), rng.uniform(lo, hi)
    speed = rng.uniform(0.6, 1.2) * cfg.size / cfg.fps  # crosses the frame in about a second
    angle = rng.uniform(0, 2 * math.pi)
    vx, vy = speed * math.cos(angle), speed * math.sin(angle)
    points, bounces = [], []
    for f in range(n):
        points.append((x, y))
        x, y = x + vx, y + vy
        hit = False
        if x < lo or x > hi:  # reflect off the wall
            x, vx, hit = min(max(2 * (lo if x < lo else hi) - x, lo), hi), -vx, True
        if y < lo or y > hi:
            y, vy, hit = min(max(2 * (lo if y < lo else hi) - y, lo), hi), -vy, True
        if hit and f + 1 < n:
            bounces.append(f + 1)
    return points, bounces


def _soundtrack(cfg: AVSynthConfig, pitch: float, bounces: list[int]):
    import numpy as np

    sr = cfg.sample_rate
    t = np.arange(round(cfg.seconds * sr)) / sr
    audio = 0.25 * np.sin(2 * np.pi * pitch * t)
    click_len = int(0.02 * sr)
    envelope = np.exp(-np.arange(click_len) / (0.003 * sr))
    click = 0.6 * envelope * np.sign(np.sin(2 * np.pi * 2000 * np.arange(click_len) / sr))
    for f in bounces:
        s = int(f / cfg.fps * sr)
        e = min(s + click_len, len(audio))
        audio[s:e] += click[: e - s]
    return np.clip(audio, -1, 1).astype(np.float32)


def make_av_sample(cfg: AVSynthConfig, index: int) -> dict:
    import numpy as np
    from PIL import Image, ImageDraw

    rng = random.Random(sample_seed(cfg.seed, index, "av"))
    colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
    r = cfg.size * rng.uniform(0.12, 0.2)
    points, bounces = _trajectory(cfg, rng, r)
    frames = np.empty((len(points), cfg.size, cfg.size, 3), np.uint8)
    for i, (x, y) in enumerate(points):
        img = Image.new("RGB", (cfg.size, cfg.size), BACKGROUND)
        draw_shape(ImageDraw.Draw(img), shape, COLOURS[colour], x, y, r)
        frames[i] = np.asarray(img)
    audio = _soundtrack(cfg, PITCH[colour], bounces)
    nb = len(bounces)
    text = f"{article(colour)} {shape} moves around and bounces {nb} time{'' if nb == 1 else 's'}."
    meta = {
        "caption": text,
        "fps": float(cfg.fps),
        "duration": len(points) / cfg.fps,
        "frames": len(points),
        "width": cfg.size,
        "height": cfg.size,
        "audio_sample_rate": cfg.sample_rate,
        "colour": colour,
        "shape": shape,
        "pitch_hz": PITCH[colour],
        "bounce_frames": bounces,
    }
    mp4 = encode_mp4(frames, audio, cfg.fps, cfg.sample_rate)
    return {"__key__": f"av{index:08d}", "mp4": mp4, "txt": text, "json": json.dumps(meta)}


def generate_av(cfg: AVSynthConfig) -> Iterator[dict]:
    for i in range(cfg.num_samples):
        yield make_av_sample(cfg, i)

"""Two short synthetic clips for the gallery tests: a moving coloured square with a sine tone each."""

import numpy as np
import torch

from evals.gallery import GalleryClip


def moving_square(frames: int, height: int, width: int, colour) -> np.ndarray:
    """[T, H, W, 3] uint8: a 16 px square crossing a dark frame left to right."""
    x = np.full((frames, height, width, 3), 30, np.uint8)
    for t in range(frames):
        left = (width - 16) * t // max(frames - 1, 1)
        x[t, height // 2 - 8 : height // 2 + 8, left : left + 16] = colour
    return x


def sine(samples: int, rate: int, hz: float) -> np.ndarray:
    return (0.4 * np.sin(2 * np.pi * hz * np.arange(samples) / rate)).astype(np.float32)


def make_clips() -> list[GalleryClip]:
    """1.5 s at 8 fps, 96x64, 16 kHz (frames as a torch tensor); 2.0 s at 12.5 fps, 64x64, 22.05 kHz.

    96 and 64 wide: decord 0.6.0 misreads some widths (16, 24, 48, 72 px come back with 4 channels).
    """
    return [
        GalleryClip(
            name="red_square",
            prompt='a red square <script>alert("x")</script> & a 440 Hz tone',
            frames=torch.from_numpy(moving_square(12, 64, 96, (230, 40, 40))),
            audio=sine(24000, 16000, 440.0),
            fps=8.0,
            sample_rate=16000,
            scores={"AVHScore": 0.2134, "JavisScore": 0.1},
        ),
        GalleryClip(
            name="blue-square.2",
            prompt="a blue square\nand an 880 Hz tone",
            frames=moving_square(25, 64, 64, (40, 40, 230)),
            audio=sine(44100, 22050, 880.0),
            fps=12.5,
            sample_rate=22050,
        ),
    ]

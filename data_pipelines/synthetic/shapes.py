"""The shared vocabulary of the synthetic sets: colours, shapes, grid positions, and drawing."""

from __future__ import annotations

import hashlib

# Colours are far apart in RGB so JPEG/H.264 compression cannot confuse them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 220, 30),
    "purple": (140, 40, 170),
    "orange": (245, 140, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
# 3x3 grid cells, row-major; the names are the answers to "where is ..." questions.
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
BACKGROUND = (245, 245, 240)


def sample_seed(seed: int, index: int, salt: str = "") -> int:
    """A 63-bit seed for sample ``index`` that does not depend on generation order or process."""
    digest = hashlib.blake2b(f"{salt}:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def article(word: str) -> str:
    """``"an orange"``, ``"a red"``."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def draw_shape(draw, shape: str, colour: tuple[int, int, int], cx: float, cy: float, r: float) -> None:
    """Draw a filled ``shape`` centred at (cx, cy) with half-size ``r`` on a PIL ImageDraw."""
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")

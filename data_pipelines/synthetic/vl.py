"""``vl``: images of coloured shapes on a 3x3 grid, with captions and VQA pairs read off the image.

Every answer (colour, shape, count, position, presence) is a function of the pixels, so a model
that looks can learn them and a text-only model is left at the prior. Images are square
(``image_size``), or with ``sizes`` of mixed aspect ratios: sample i is ``sizes[i % len(sizes)]``
(width, height) and the grid's cells stretch with it (for any-res). One sample is
``{key}.jpg`` + ``{key}.txt`` (first caption) + ``{key}.json``::

    {"captions": [...], "qa": [{"question", "answers", "answer", "type"}, ...], "objects": [...]}
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from .shapes import BACKGROUND, COLOURS, POSITIONS, SHAPES, SIZES, draw_shape, sample_seed


@dataclass
class VLSynthConfig:
    num_samples: int = 2000
    image_size: int = 128
    max_objects: int = 3
    seed: int = 0
    jpeg_quality: int = 90
    sizes: list[list[int]] = field(default_factory=list)  # [width, height] in turn; empty: image_size square

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.image_size < 24:
            raise ValueError(f"image_size must be >= 24 pixels, got {self.image_size}")
        if not 1 <= self.max_objects <= len(POSITIONS):
            raise ValueError(f"max_objects must be in [1, {len(POSITIONS)}], got {self.max_objects}")
        for wh in self.sizes:
            if len(wh) != 2 or min(wh) < 24:
                raise ValueError(f"sizes entry {list(wh)} is not a [width, height] of at least 24 pixels each")


def _describe(o: dict) -> str:
    return f"a {o['size']} {o['colour']} {o['shape']}"


def _questions(objects: list[dict], rng: random.Random) -> list[dict]:
    qa = []

    def add(q: str, a: str, kind: str) -> None:
        qa.append({"question": q, "answers": [a], "answer": a, "type": kind})

    add("how many shapes are there?", str(len(objects)), "count")
    by_shape = {s: [o for o in objects if o["shape"] == s] for s in SHAPES}
    by_colour = {c: [o for o in objects if o["colour"] == c] for c in COLOURS}
    for o in objects:
        if len(by_shape[o["shape"]]) == 1:
            add(f"what colour is the {o['shape']}?", o["colour"], "colour")
        if len(by_colour[o["colour"]]) == 1:
            add(f"what shape is the {o['colour']} object?", o["shape"], "shape")
        add(f"where is the {o['colour']} {o['shape']}?", o["position"], "position")
    colour = rng.choice(sorted(COLOURS))
    add(f"how many {colour} shapes are there?", str(len(by_colour[colour])), "count")
    colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
    present = any(o["colour"] == colour and o["shape"] == shape for o in objects)
    add(f"is there a {colour} {shape}?", "yes" if present else "no", "presence")
    return qa


def make_vl_sample(cfg: VLSynthConfig, index: int) -> dict:
    """Sample ``index`` of the set; depends only on (cfg, index)."""
    from PIL import Image, ImageDraw

    rng = random.Random(sample_seed(cfg.seed, index, "vl"))
    n = rng.randint(1, cfg.max_objects)
    cells = rng.sample(range(len(POSITIONS)), n)
    width, height = cfg.sizes[index % len(cfg.sizes)] if cfg.sizes else (cfg.image_size, cfg.image_size)
    cell_w, cell_h = width / 3, height / 3
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    objects = []
    for c in cells:
        o = {
            "colour": rng.choice(sorted(COLOURS)),
            "shape": rng.choice(SHAPES),
            "size": rng.choice(SIZES),
            "position": POSITIONS[c],
        }
        r = min(cell_w, cell_h) * (0.42 if o["size"] == "large" else 0.22)
        cx = (c % 3 + 0.5) * cell_w + rng.uniform(-0.05, 0.05) * cell_w
        cy = (c // 3 + 0.5) * cell_h + rng.uniform(-0.05, 0.05) * cell_h
        draw_shape(draw, o["shape"], COLOURS[o["colour"]], cx, cy, r)
        objects.append(o)
    parts = [f"{_describe(o)} at the {o['position']}" for o in objects]
    captions = [
        ("an image of " if len(parts) == 1 else "") + " and ".join(parts) + ".",
        f"{len(objects)} shape{'s' if len(objects) > 1 else ''}: "
        + ", ".join(f"{o['colour']} {o['shape']}" for o in objects)
        + ".",
    ]
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=cfg.jpeg_quality)
    meta = {"captions": captions, "qa": _questions(objects, rng), "objects": objects}
    return {"__key__": f"vl{index:08d}", "jpg": buf.getvalue(), "txt": captions[0], "json": json.dumps(meta)}


def generate_vl(cfg: VLSynthConfig) -> Iterator[dict]:
    for i in range(cfg.num_samples):
        yield make_vl_sample(cfg, i)

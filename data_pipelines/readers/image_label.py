"""Image + class-label shards -> ``{"image": [B, 3, H, W] float, "label": [B] int64, "key": [str]}``.

Where the label comes from (``label``):
  ``objects``  the ``json`` member's ``objects`` list of the synthetic ``vl`` set: an image with
               exactly one object is labelled "<colour> <shape>" (others are skipped as
               ``ambiguous_label``); the default classes are every colour × shape (18);
  ``txt``      the ``txt`` member, stripped, is the class name (e.g. `mm shards build image-text`
               of a folder whose caption files hold the class);
  ``cls``      the ``cls`` member: a class name, or an integer index (into ``classes``, or below
               ``num_classes`` when the set has indices only, as ImageNet-style shards do).
A name outside ``classes`` is skipped as ``unknown_label`` (counted, like any bad sample).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from ..collate import check_normalization, stack_images
from ..decode.image import ImageDecodeConfig, decode_image
from ..errors import SampleError
from ..stateful import ResumableLoader, ShardStream, fixed_batches, require
from ..stream import StreamConfig
from ..synthetic.shapes import COLOURS, SHAPES
from .image_text import IMAGE_EXTS, load_json

LABEL_SOURCES = ("objects", "txt", "cls")


def shape_colour_classes() -> list[str]:
    """The synthetic sets' shape/colour classes, "<colour> <shape>", in a fixed order."""
    return [f"{c} {s}" for c in sorted(COLOURS) for s in SHAPES]


@dataclass
class ImageLabelReaderConfig:
    stream: StreamConfig = field(default_factory=StreamConfig)
    image: ImageDecodeConfig = field(default_factory=ImageDecodeConfig)
    normalize: str = "imagenet"  # clip | imagenet | none
    label: str = "objects"  # objects | txt | cls (see the module docstring)
    classes: list[str] = field(default_factory=list)  # class names in index order; empty: shape/colour
    num_classes: int = 0  # label=cls with integer indices only: how many (leave classes empty)

    def __post_init__(self):
        check_normalization(self.normalize)
        if self.label not in LABEL_SOURCES:
            raise ValueError(f"label must be one of {LABEL_SOURCES}, got {self.label!r}")
        if self.num_classes < 0 or (self.num_classes and (self.classes or self.label != "cls")):
            raise ValueError(f"num_classes ({self.num_classes}) is for label=cls with integer labels and no classes")
        if self.label != "objects" and not self.classes and not self.num_classes:
            raise ValueError(f"label={self.label!r} needs the list of classes (data.classes, or "
                             "data.num_classes for integer cls labels)")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct, got {self.classes}")

    @property
    def names(self) -> list[str]:
        """Class names in index order (the shape/colour classes for label=objects without classes)."""
        return list(self.classes) or (shape_colour_classes() if self.label == "objects" else [])

    @property
    def count(self) -> int:
        """How many classes."""
        return len(self.names) or self.num_classes


class ImageLabelReader:
    def __init__(self, cfg: ImageLabelReaderConfig):
        self.cfg = cfg
        self.index = {name: i for i, name in enumerate(cfg.names)}
        self.wanted = {*IMAGE_EXTS, "txt", "json", "cls"}

    def label(self, sample: dict) -> int:
        if self.cfg.label == "objects":
            objects = load_json(sample).get("objects")
            if not isinstance(objects, list) or len(objects) != 1 or not isinstance(objects[0], dict):
                raise SampleError("ambiguous_label", "needs exactly one object in json 'objects'")
            name = f"{objects[0].get('colour')} {objects[0].get('shape')}"
        else:
            try:
                name = require(sample, self.cfg.label).decode("utf-8").strip()
            except UnicodeDecodeError as err:
                raise SampleError("bad_label", str(err)) from None
            if self.cfg.label == "cls" and name.isdigit():
                if int(name) >= self.cfg.count:
                    raise SampleError("unknown_label", f"class index {name} >= {self.cfg.count}")
                return int(name)
        if name not in self.index:
            raise SampleError("unknown_label", f"{name!r} is not among the {len(self.index)} classes")
        return self.index[name]

    def decode(self, sample: dict, rng: random.Random) -> tuple:
        label = self.label(sample)  # first: a skipped sample costs no image decode
        return decode_image(require(sample, *IMAGE_EXTS), self.cfg.image), label, sample["__key__"]

    def collate(self, items: list) -> dict:
        images, labels, keys = zip(*items, strict=True)
        return {"image": stack_images(list(images), self.cfg.normalize),
                "label": torch.tensor(labels, dtype=torch.int64), "key": list(keys)}

    def batches(self, items, batch_size: int, carry: int, finite: bool):
        return fixed_batches(items, batch_size, self.collate, finite)


def build_image_label_reader(cfg: ImageLabelReaderConfig) -> ResumableLoader:
    return ResumableLoader(ShardStream(cfg.stream, ImageLabelReader(cfg)))

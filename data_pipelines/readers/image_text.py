"""Image + caption shards -> ``{"image": [B, 3, H, W] float, "text": [str], "key": [str]}``.

With ``image.resize: none`` the images keep their own sizes and ``image`` is a list of ``[3, H, W]``.

Captions come from the ``json`` member's ``captions`` list when there is one (one is picked per
visit, seeded), else the ``txt`` member. With a tokenizer the batch also has ``text_ids`` ``[B, L]``
(padded) and ``text_lengths`` ``[B]``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..collate import check_normalization, collate_images, tokenize_padded
from ..decode.image import ImageDecodeConfig, decode_image
from ..errors import SampleError
from ..stateful import ResumableLoader, ShardStream, fixed_batches, require
from ..stream import StreamConfig

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
CAPTION_MODES = ("first", "random")


@dataclass
class ImageTextReaderConfig:
    stream: StreamConfig = field(default_factory=StreamConfig)
    image: ImageDecodeConfig = field(default_factory=ImageDecodeConfig)
    normalize: str = "clip"  # clip | imagenet | none
    caption: str = "random"  # first | random: which of several captions
    max_text_tokens: int = 77  # with a tokenizer

    def __post_init__(self):
        check_normalization(self.normalize)
        if self.caption not in CAPTION_MODES:
            raise ValueError(f"caption must be one of {CAPTION_MODES}, got {self.caption!r}")


def load_json(sample: dict) -> dict:
    """The sample's ``json`` member as a dict ({} when absent); ``bad_json`` when unparsable."""
    if "json" not in sample:
        return {}
    try:
        meta = json.loads(sample["json"])
    except (ValueError, UnicodeDecodeError) as err:
        raise SampleError("bad_json", str(err)) from None
    if not isinstance(meta, dict):
        raise SampleError("bad_json", f"expected an object, got {type(meta).__name__}")
    return meta


class ImageTextReader:
    def __init__(self, cfg: ImageTextReaderConfig, tokenizer=None):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.wanted = {*IMAGE_EXTS, "txt", "json"}

    def caption(self, sample: dict, rng: random.Random) -> str:
        captions = load_json(sample).get("captions")
        if not captions:
            txt = require(sample, "txt")
            try:
                captions = [txt.decode("utf-8")]
            except UnicodeDecodeError as err:
                raise SampleError("bad_text", str(err)) from None
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise SampleError("bad_json", "captions must be a list of strings")
        return captions[0] if self.cfg.caption == "first" else rng.choice(captions)

    def decode(self, sample: dict, rng: random.Random) -> tuple:
        image = decode_image(require(sample, *IMAGE_EXTS), self.cfg.image)
        return image, self.caption(sample, rng), sample["__key__"]

    def collate(self, items: list) -> dict:
        images, texts, keys = zip(*items, strict=True)
        own_sizes = self.cfg.image.resize == "none"
        batch = {"image": collate_images(list(images), self.cfg.normalize, own_sizes=own_sizes),
                 "text": list(texts), "key": list(keys)}
        if self.tokenizer is not None:
            ids, lengths = tokenize_padded(self.tokenizer, list(texts), self.cfg.max_text_tokens)
            batch["text_ids"], batch["text_lengths"] = ids, lengths
        return batch

    def batches(self, items: Iterator, batch_size: int, carry: int, keep_partial: bool):
        return fixed_batches(items, batch_size, self.collate, keep_partial)


def build_image_text_reader(cfg: ImageTextReaderConfig, tokenizer=None) -> ResumableLoader:
    return ResumableLoader(ShardStream(cfg.stream, ImageTextReader(cfg, tokenizer)))

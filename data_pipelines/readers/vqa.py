"""Image + question/answers shards -> VQA batches.

A sample's ``json`` holds either one pair ``{"question", "answers"[, "answer"]}`` or a list
``{"qa": [{"question", "answers", ...}, ...]}`` (the synthetic ``vl`` set), of which one pair is
picked per visit (seeded). Batch: ``image`` ``[B, 3, H, W]`` (a list of ``[3, H, W]`` with
``image.resize: none``: own sizes), ``question`` [str], ``answers``
[[str]], ``answer`` [str] (the most common answer), ``key`` [str]; with a tokenizer also
``question_ids`` ``[B, L]`` and ``question_lengths`` ``[B]``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..collate import check_normalization, collate_images, tokenize_padded
from ..decode.image import ImageDecodeConfig, decode_image
from ..errors import SampleError
from ..stateful import ResumableLoader, ShardStream, fixed_batches, require
from ..stream import StreamConfig
from .image_text import IMAGE_EXTS, load_json


@dataclass
class VQAReaderConfig:
    stream: StreamConfig = field(default_factory=StreamConfig)
    image: ImageDecodeConfig = field(default_factory=ImageDecodeConfig)
    normalize: str = "clip"
    max_question_tokens: int = 64

    def __post_init__(self):
        check_normalization(self.normalize)


def pick_qa(meta: dict, rng: random.Random) -> tuple[str, list[str], str]:
    pairs = meta.get("qa", [meta] if "question" in meta else [])
    if not isinstance(pairs, list) or not pairs:
        raise SampleError("missing_key", "json has no question")
    qa = rng.choice(pairs)
    q, answers = qa.get("question"), qa.get("answers")
    if answers is None and "answer" in qa:
        answers = [qa["answer"]]
    if not isinstance(q, str) or not isinstance(answers, list) or not answers:
        raise SampleError("bad_json", f"question/answers malformed: {qa!r:.200}")
    answers = [str(a) for a in answers]
    answer = qa.get("answer") or Counter(answers).most_common(1)[0][0]
    return q, answers, str(answer)


class VQAReader:
    def __init__(self, cfg: VQAReaderConfig, tokenizer=None):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.wanted = {*IMAGE_EXTS, "json"}

    def decode(self, sample: dict, rng: random.Random) -> tuple:
        require(sample, "json")
        q, answers, answer = pick_qa(load_json(sample), rng)
        image = decode_image(require(sample, *IMAGE_EXTS), self.cfg.image)
        return image, q, answers, answer, sample["__key__"]

    def collate(self, items: list) -> dict:
        images, qs, answers, answer, keys = zip(*items, strict=True)
        batch = {
            "image": collate_images(list(images), self.cfg.normalize, own_sizes=self.cfg.image.resize == "none"),
            "question": list(qs),
            "answers": [list(a) for a in answers],
            "answer": list(answer),
            "key": list(keys),
        }
        if self.tokenizer is not None:
            ids, lengths = tokenize_padded(self.tokenizer, list(qs), self.cfg.max_question_tokens)
            batch["question_ids"], batch["question_lengths"] = ids, lengths
        return batch

    def batches(self, items: Iterator, batch_size: int, carry: int, keep_partial: bool):
        return fixed_batches(items, batch_size, self.collate, keep_partial)


def build_vqa_reader(cfg: VQAReaderConfig, tokenizer=None) -> ResumableLoader:
    return ResumableLoader(ShardStream(cfg.stream, VQAReader(cfg, tokenizer)))

"""``text``: a small deterministic corpus for the language-model stage.

Documents mix sentences that a small model can learn with nothing but text: facts about
coloured shapes, counting, and small additions (``"3 plus 4 is 7."``). One sample is
``{key}.txt``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from .shapes import COLOURS, POSITIONS, SHAPES, sample_seed

_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass
class TextSynthConfig:
    num_samples: int = 5000  # documents
    min_sentences: int = 2
    max_sentences: int = 12
    seed: int = 0

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if not 1 <= self.min_sentences <= self.max_sentences:
            raise ValueError(
                f"need 1 <= min_sentences <= max_sentences, got {self.min_sentences}, {self.max_sentences}"
            )


def _sentence(rng: random.Random) -> str:
    kind = rng.randrange(4)
    colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
    if kind == 0:
        a, b = rng.randrange(10), rng.randrange(10)
        return f"{a} plus {b} is {a + b}."
    if kind == 1:
        n = rng.randrange(1, 10)
        return f"there {'is' if n == 1 else 'are'} {_NUMBERS[n]} {colour} {shape}{'' if n == 1 else 's'}."
    if kind == 2:
        return f"the {colour} {shape} is at the {rng.choice(POSITIONS)}."
    n = rng.randrange(1, 9)
    return f"after {_NUMBERS[n]} comes {_NUMBERS[n + 1]}."


def make_text_sample(cfg: TextSynthConfig, index: int) -> dict:
    rng = random.Random(sample_seed(cfg.seed, index, "text"))
    n = rng.randint(cfg.min_sentences, cfg.max_sentences)
    return {"__key__": f"doc{index:08d}", "txt": " ".join(_sentence(rng) for _ in range(n))}


def generate_text(cfg: TextSynthConfig) -> Iterator[dict]:
    for i in range(cfg.num_samples):
        yield make_text_sample(cfg, i)

"""Text shards -> packed next-token batches (format: ``data_pipelines.packing``)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import SampleError
from ..packing import pack_documents
from ..stateful import ResumableLoader, ShardStream, require
from ..stream import StreamConfig


@dataclass
class TextReaderConfig:
    stream: StreamConfig = field(default_factory=StreamConfig)  # batch_size = rows per batch
    seq_len: int = 1024  # tokens per row
    text_key: str = "txt"  # tar member extension holding the document

    def __post_init__(self):
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {self.seq_len}")


class TextReader:
    """Decode = UTF-8 text -> token ids + EOS; batches = :func:`pack_documents`."""

    def __init__(self, cfg: TextReaderConfig, tokenizer):
        for attr in ("encode", "eos_id", "vocab_size"):
            if not hasattr(tokenizer, attr):
                raise ValueError(f"tokenizer {tokenizer!r} lacks {attr!r}")
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.wanted = {cfg.text_key}

    def decode(self, sample: dict, rng: random.Random) -> list[int]:
        data = require(sample, self.cfg.text_key)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SampleError("bad_text", str(err)) from None
        if not text.strip():
            raise SampleError("empty_text", "document is empty")
        return list(self.tokenizer.encode(text)) + [self.tokenizer.eos_id]

    def batches(self, items: Iterator, batch_size: int, carry: int, keep_partial: bool):
        # a partial last batch is padded with EOS (label -100): an id every tokenizer here has
        return pack_documents(items, batch_size, self.cfg.seq_len, carry, keep_partial=keep_partial,
                              pad_id=self.tokenizer.eos_id)


def build_text_reader(cfg: TextReaderConfig, tokenizer) -> ResumableLoader:
    """Resumable stream of ``{"input_ids", "labels", "cu_seqlens"}`` batches of ``[B, seq_len]``."""
    return ResumableLoader(ShardStream(cfg.stream, TextReader(cfg, tokenizer)))

"""Helpers for tests and benchmarks: tiny shard sets, batch comparison, fault injection."""

from __future__ import annotations

import os

from .shards.writer import ShardSink, ShardWriterConfig


def write_samples(out_dir: str, samples, maxcount: int = 10) -> dict[str, int]:
    """Write ``samples`` (dicts with ``__key__``) into shards of ``maxcount``; returns sizes."""
    with ShardSink(ShardWriterConfig(out_dir=str(out_dir), maxcount=maxcount)) as sink:
        for s in samples:
            sink.write(s)
    return sink.sizes


def take(source, n: int | None = None) -> list[dict]:
    """The first ``n`` batches of one ``iter(source)`` (all of them when ``n`` is None)."""
    out = []
    for batch in source:
        out.append(batch)
        if n is not None and len(out) >= n:
            break
    return out


def same_batch(a: dict, b: dict) -> bool:
    """Equal keys and equal values (tensors exactly)."""
    import torch

    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor):
            if not (isinstance(y, torch.Tensor) and x.shape == y.shape and torch.equal(x, y)):
                return False
        elif x != y:
            return False
    return True


def truncate(path: str, keep_fraction: float) -> None:
    """Cut a file to ``keep_fraction`` of its bytes (a shard cut mid-stream)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep_fraction))

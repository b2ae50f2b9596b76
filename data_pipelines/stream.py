"""The stages of a streaming reader, each a generator, and the config they share.

Per worker, in order (the open_clip shape, made resumable)::

    shard_sequence  seeded by (seed, epoch, global worker): resampled with replacement (weighted
                    by sizes.json counts) or a seeded permutation split across workers
    raw_samples     stream each tar, group members into samples (tar_stream.iter_shard)
    shuffle         seeded shuffle buffer over the raw (undecoded) samples
    number          raw sample r = 1, 2, ... of this worker's epoch: the resumable position
    decode          reader-specific, per-sample rng seeded by (seed, epoch, worker, r)
    batch / pack    reader-specific

Node and worker splitting are explicit: the global worker id is ``rank * W + worker`` with the
rank and world size taken from the config (or torch.distributed), never from webdataset's
environment lookups.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional

from .errors import DataErrorRateExceeded, ErrorPolicy, SkipCounter
from .shards.tar_stream import iter_shard


@dataclass
class StreamConfig:
    shards: list[str] = field(default_factory=list)  # dirs, brace patterns or paths
    batch_size: int = 32  # per rank
    seed: int = 0
    resample: bool = True  # draw shards with replacement (infinite stream, equal batches per rank)
    # Samples per epoch over all ranks. With resample=False, 0 means one pass over the shards
    # (for evaluation; ranks may then see different batch counts).
    samples_per_epoch: int = 100_000
    # One-pass streams (samples_per_epoch=0): yield the last batch even when it is partial (fewer
    # items; packed text pads its last row, see data_pipelines.packing), so that evaluation sees every
    # sample; false drops it (as DataLoader's drop_last) for fixed shapes. Endless streams never end.
    keep_partial: bool = True
    shuffle_buffer: int = 1000  # raw samples held per worker; 0 or 1: no shuffling
    shuffle_shards: bool = True  # resample=False: a seeded shard order per round (else as listed)
    num_workers: int = 2
    prefetch_factor: int = 2
    worker_timeout_s: float = 600.0  # no batch from the workers for this long -> error (workers > 0)
    pin_memory: bool = False
    rank: Optional[int] = None  # noqa: UP045 - None: torch.distributed rank if initialised, else 0
    world_size: Optional[int] = None  # noqa: UP045 - OmegaConf schema
    allow_pipe: bool = False  # pipe: URLs run shell commands; off unless asked for
    max_member_bytes: int = 1 << 30  # larger tar members are refused unread
    errors: ErrorPolicy = field(default_factory=ErrorPolicy)

    def __post_init__(self):
        if isinstance(self.shards, str):
            self.shards = [self.shards]
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.samples_per_epoch < 0:
            raise ValueError(f"samples_per_epoch must be >= 0, got {self.samples_per_epoch}")
        if self.resample and self.samples_per_epoch == 0:
            raise ValueError("resample=True streams forever: set samples_per_epoch > 0")
        if self.num_workers < 0 or self.shuffle_buffer < 0 or self.prefetch_factor < 1:
            raise ValueError(
                f"bad num_workers={self.num_workers} shuffle_buffer={self.shuffle_buffer} "
                f"prefetch_factor={self.prefetch_factor}"
            )
        if self.worker_timeout_s <= 0:
            raise ValueError(f"worker_timeout_s must be > 0, got {self.worker_timeout_s}")
        if self.rank is not None and self.world_size is not None and not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world_size {self.world_size}")


def one_pass(shards, batch_size: int = 32, **overrides) -> StreamConfig:
    """Every sample once, in shard order, in the calling process: for evaluation and inspection.

    ``shards`` is one spec or a list; ``overrides`` set any other :class:`StreamConfig` field.
    """
    specs = [str(shards)] if isinstance(shards, (str, os.PathLike)) else [str(s) for s in shards]
    fields = dict(resample=False, samples_per_epoch=0, shuffle_buffer=0, shuffle_shards=False, num_workers=0)
    return StreamConfig(shards=specs, batch_size=batch_size, **{**fields, **overrides})


def derive_seed(*parts) -> int:
    """Stable 63-bit seed from ints/strs (Python's hash() of a str changes per process)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def resolve_world(cfg: StreamConfig) -> tuple[int, int]:
    """(rank, world_size) from the config, else torch.distributed, else (0, 1)."""
    rank, world = cfg.rank, cfg.world_size
    if rank is None or world is None:
        import torch.distributed as dist

        live = dist.is_available() and dist.is_initialized()
        rank = rank if rank is not None else (dist.get_rank() if live else 0)
        world = world if world is not None else (dist.get_world_size() if live else 1)
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world_size {world}")
    return rank, world


def shard_sequence(
    urls: list[str],
    weights: list[float] | None,
    *,
    resample: bool,
    finite: bool,
    shuffle_shards: bool = True,
    seed: int,
    epoch: int,
    worker: int,
    num_workers: int,
) -> Iterator[str]:
    """Shard URLs for global ``worker`` of ``num_workers`` in ``epoch``; deterministic."""
    if resample:
        rng = random.Random(derive_seed(seed, epoch, worker, "resample"))
        while True:
            yield rng.choices(urls, weights=weights)[0]
    n = len(urls)
    rnd = 0
    while True:
        order = list(range(n))
        if shuffle_shards:
            random.Random(derive_seed(seed, epoch, rnd, "permute")).shuffle(order)
        mine = order[worker::num_workers]
        if not mine and not finite:  # more workers than shards: share them
            mine = [order[worker % n]]
        for i in mine:
            yield urls[i]
        if finite:
            return
        rnd += 1


def raw_samples(
    shards: Iterator[str], wanted: set[str] | None, counter: SkipCounter, max_member_bytes: int
) -> Iterator[dict]:
    """Samples of the shards in turn; stops the run if shards keep yielding nothing."""
    empty = 0
    for url in shards:
        got = 0
        for sample in iter_shard(url, wanted, counter, max_member_bytes):
            got += 1
            yield sample
        empty = 0 if got else empty + 1
        if empty >= counter.policy.max_empty_shards:
            raise DataErrorRateExceeded(
                f"{empty} shards in a row gave no samples (last {url}); errors so far {counter.errors}"
            )


def shuffle(samples: Iterator[dict], bufsize: int, rng: random.Random) -> Iterator[dict]:
    """Seeded shuffle buffer: once full, each incoming sample swaps out a random resident."""
    if bufsize <= 1:
        yield from samples
        return
    buf: list[dict] = []
    for s in samples:
        if len(buf) < bufsize:
            buf.append(s)
            continue
        i = rng.randrange(bufsize)
        yield buf[i]
        buf[i] = s
    rng.shuffle(buf)
    yield from buf

"""A resumable, sharded, multi-worker batch stream: the ``BatchSource`` the trainer iterates.

Position. Each rank runs L streams ("logical workers"; L = max(1, num_workers) in a fresh run),
global stream ``g = rank·L + l`` of G = world·L, each a deterministic stream of raw samples
(``stream.py``). After every batch a stream reports ``[R, carry, n]``: R raw samples consumed
(shuffle-buffer output order), ``carry`` tokens of raw sample R already emitted (packing only; 0
otherwise) and ``n`` batches yielded this epoch. Batch ``k`` of a rank's epoch comes from its stream
``(start + k) % L``: the P = max(1, num_workers) DataLoader workers take batches round robin and
worker p plays streams p, p + P, ... of the cycle in turn (L a multiple of P); the state also
records the next stream in that cycle.

Resume. Streams are rotated so that DataLoader worker 0 plays the stream that was next, and each
stream replays up to R *without decoding* (reading tar bytes and shuffling only; errors met during
the replay were already counted and are not counted again), then continues. The batches that
follow are those an uninterrupted run would have produced, with any number of workers dividing L,
as long as ``batch_size`` and the seed are unchanged (checked on load). On another world size the
saved streams are dealt out again (``positions.py``, ``load_world_state``): every stream continues
exactly, under the conditions listed there.

Epochs. With ``samples_per_epoch`` set every rank yields exactly
``samples_per_epoch // (world_size * batch_size)`` batches per epoch (ranks never disagree, so DDP
cannot hang); iterating goes on through the following epochs (a step-based trainer just calls
``next``), ``one_epoch()`` stops at the end of the current one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch.utils.data

from .errors import SampleError, SkipCounter, merge_counts
from .positions import STATE_VERSION, rank_state
from .shards.spec import expand_shards, read_sizes
from .stream import StreamConfig, derive_seed, raw_samples, resolve_world, shard_sequence, shuffle


class DataLoaderStalled(RuntimeError):
    """No batch arrived within ``worker_timeout_s``: a decoder (or the storage) hangs."""


class SampleReader(Protocol):
    """What a modality plugs into the stream."""

    wanted: set[str]  # tar member extensions to read; everything else is skipped unread

    def decode(self, sample: dict, rng: random.Random) -> Any: ...

    def batches(
        self, items: Iterator[tuple[int, Any]], batch_size: int, carry: int, keep_partial: bool
    ) -> Iterator[tuple[dict, int, int]]:
        """(batch, R, carry) triples from (r, decoded item) pairs; with ``keep_partial`` (a one-pass
        stream, ``StreamConfig.keep_partial``) a last, partial batch is yielded too."""
        ...


def fixed_batches(
    items: Iterator[tuple[int, Any]], batch_size: int, collate: Callable[[list], dict], keep_partial: bool
) -> Iterator[tuple[dict, int, int]]:
    """Batches of exactly ``batch_size`` items, then with ``keep_partial`` the rest as a smaller one."""
    buf: list = []
    r = 0
    for r, item in items:
        buf.append(item)
        if len(buf) == batch_size:
            yield collate(buf), r, 0
            buf = []
    if buf and keep_partial:
        yield collate(buf), r, 0


def require(sample: dict, *exts: str) -> bytes:
    """The first of ``exts`` present in ``sample``; ``missing_key`` SampleError otherwise."""
    for e in exts:
        if e in sample:
            return sample[e]
    raise SampleError("missing_key", f"none of {list(exts)} in {sorted(k for k in sample if not k.startswith('__'))}")


class ShardStream(torch.utils.data.IterableDataset):
    """Iterable dataset of ``(batch, meta)`` pairs for one rank; wrap it in :class:`ResumableLoader`."""

    def __init__(self, cfg: StreamConfig, reader: SampleReader):
        super().__init__()
        self.cfg = cfg
        self.reader = reader
        self.urls = expand_shards(cfg.shards, cfg.allow_pipe)
        sizes = read_sizes(self.urls)
        self.weights = [float(sizes[u]) for u in self.urls] if len(sizes) == len(self.urls) else None
        if self.weights is not None and sum(self.weights) == 0:
            raise ValueError(f"sizes.json says every shard of {cfg.shards} is empty")
        self.rank, self.world = resolve_world(cfg)
        self.physical = max(1, cfg.num_workers)
        self.num_logical = self.physical  # streams of this rank: more after a resume from a larger world
        self.finite = cfg.samples_per_epoch == 0
        if self.finite:
            self.batches_per_epoch = None
        else:
            total = cfg.samples_per_epoch // (self.world * cfg.batch_size)
            if total < 1:
                raise ValueError(
                    f"samples_per_epoch={cfg.samples_per_epoch} is less than one batch per rank "
                    f"(world_size {self.world} x batch_size {cfg.batch_size})"
                )
            self.batches_per_epoch = total
        self.epoch = 0
        self.next_worker = 0
        self.positions = [[0, 0, 0] for _ in range(self.num_logical)]

    def quota(self, logical: int) -> int | None:
        """Batches logical worker ``logical`` yields per epoch (None: until its shards run out)."""
        if self.batches_per_epoch is None:
            return None
        n, w = self.batches_per_epoch, self.num_logical
        return n // w + (1 if logical < n % w else 0)

    def __iter__(self) -> Iterator[tuple[dict, dict]]:
        info = torch.utils.data.get_worker_info()
        physical = info.id if info is not None else 0
        cycle = range(self.next_worker + physical, self.next_worker + self.num_logical, self.physical)
        streams = [self._worker_stream(logical % self.num_logical) for logical in cycle]
        while streams:  # round robin; a stream at its quota ends this worker's share of the epoch
            for stream in list(streams):
                item = next(stream, None)
                if item is None:
                    streams.remove(stream)
                else:
                    yield item

    def _worker_stream(self, logical: int) -> Iterator[tuple[dict, dict]]:
        cfg, epoch = self.cfg, self.epoch
        g = self.rank * self.num_logical + logical
        big_g = self.world * self.num_logical
        r0, carry0, n0 = self.positions[logical]
        quota = self.quota(logical)
        if quota is not None and n0 >= quota:
            return
        counter = SkipCounter(cfg.errors, where=f"rank {self.rank} worker {logical}")
        shards = shard_sequence(
            self.urls, self.weights, resample=cfg.resample, finite=self.finite, shuffle_shards=cfg.shuffle_shards,
            seed=cfg.seed, epoch=epoch, worker=g, num_workers=big_g,
        )  # fmt: skip
        raw = raw_samples(shards, self.reader.wanted, counter, cfg.max_member_bytes)
        mixed = shuffle(raw, cfg.shuffle_buffer, random.Random(derive_seed(cfg.seed, epoch, g, "shuffle")))
        pulled = [0]  # raw samples taken so far (a cell: the generator below updates it)
        numbered = _number(mixed, pulled)
        # Replay what was delivered before the checkpoint: raw bytes only, errors not recounted.
        counter.suppressed = True
        pending = None
        for _ in range(r0):
            pending = next(numbered, None)
            if pending is None:
                return
        counter.suppressed = False
        redo = pending if carry0 and pending is not None else None
        items = self._decode(numbered, counter, g, redo)
        n = n0
        keep_partial = self.finite and cfg.keep_partial
        for batch, r, carry in self.reader.batches(items, cfg.batch_size, carry0, keep_partial):
            n += 1
            meta = {"worker": logical, "epoch": epoch, "pos": [r, carry, n], "counts": counter.snapshot()}
            yield batch, meta
            if quota is not None and n >= quota:
                return
        # The stream ran out (finite mode): report what was counted after the last batch, and a
        # position past the end so that a resume does not count the trailing errors again.
        end = {"worker": logical, "epoch": epoch, "pos": [pulled[0], 0, n], "counts": counter.snapshot()}
        yield None, end

    def _decode(self, numbered, counter: SkipCounter, g: int, redo) -> Iterator[tuple[int, Any]]:
        seed, epoch = self.cfg.seed, self.epoch
        if redo is not None:  # the partly emitted sample at the checkpoint; it decoded fine then
            r, sample = redo
            yield r, self.reader.decode(sample, random.Random(derive_seed(seed, epoch, g, r)))
        for r, sample in numbered:
            try:
                if "__error__" in sample:
                    reason, _, detail = sample["__error__"].partition(":")
                    raise SampleError(reason, detail)
                item = self.reader.decode(sample, random.Random(derive_seed(seed, epoch, g, r)))
            except SampleError as err:
                counter.error(err.reason, f"{sample.get('__key__')} in {sample.get('__url__')}: {err.detail}")
                continue
            counter.ok()
            yield r, item


def _number(samples, pulled: list[int]) -> Iterator[tuple[int, dict]]:
    """Number raw samples 1, 2, ...; ``pulled[0]`` is how many were taken so far."""
    for sample in samples:
        pulled[0] += 1
        yield pulled[0], sample


def _identity(x):
    return x


def worker_context():
    """How loader workers start: forked (fast) in a plain process; from a forkserver once
    torch.distributed runs. A fork copies only the calling thread, so a lock held at that moment
    by another thread (the process group's, TensorBoard's writer) stays held in the child for good;
    the forkserver is a fresh single-threaded process (started once per rank, with torch and this
    module imported) that forks the workers instead. The stream is pickled to it."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "data_pipelines.stateful"])
    return context


class ResumableLoader:
    """The ``BatchSource``: iterate for batches; ``state_dict``/``load_state_dict`` for the position.

    Iteration never ends when ``samples_per_epoch`` is set (epochs follow one another, each with
    its own seeds; ``len()`` is the batches per epoch and ``one_epoch()`` iterates only the rest
    of the current one); with ``samples_per_epoch=0`` it is a single pass. ``metrics()`` gives run
    totals for logging: samples decoded and skips by reason (restored on resume).
    """

    def __init__(self, stream: ShardStream):
        self.stream = stream
        self.cfg = stream.cfg
        self.batches_per_epoch = stream.batches_per_epoch
        self._epoch = 0
        self._batches = 0
        self._next = 0
        self._pos = [[0, 0, 0] for _ in range(stream.num_logical)]
        self._base = {"good": 0, "errors": {}}
        self._live: dict[int, dict] = {}

    # -- iteration -----------------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches per epoch on this rank (equal on every rank); TypeError for one-pass streams."""
        if self.batches_per_epoch is None:
            raise TypeError("a one-pass stream (samples_per_epoch=0) has no fixed length")
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[dict]:
        """Batches from the saved position on, epoch after epoch (one pass when samples_per_epoch=0)."""
        while True:
            yield from self.one_epoch()
            if self.batches_per_epoch is None:
                return

    def one_epoch(self) -> Iterator[dict]:
        """The rest of the current epoch (for epoch-based loops); the position moves to the next."""
        self._fold()
        s = self.stream
        s.epoch, s.next_worker, s.positions = self._epoch, self._next, [list(p) for p in self._pos]
        if self.cfg.num_workers > 0:
            from torch.utils.data import DataLoader

            it = iter(
                DataLoader(
                    s, batch_size=None, collate_fn=_identity, num_workers=self.cfg.num_workers,
                    prefetch_factor=self.cfg.prefetch_factor, timeout=self.cfg.worker_timeout_s,
                    pin_memory=self.cfg.pin_memory, persistent_workers=False,
                    multiprocessing_context=worker_context(),
                )
            )  # fmt: skip
        else:
            it = iter(s)
        epoch = self._epoch
        while True:
            try:
                batch, meta = next(it)
            except StopIteration:
                break
            except RuntimeError as err:
                if "timed out" in str(err):
                    raise DataLoaderStalled(
                        f"no batch from the data workers within worker_timeout_s={self.cfg.worker_timeout_s}"
                        " s; a decoder or the storage hangs (raise worker_timeout_s if decoding is just slow)"
                    ) from err
                raise
            if batch is None:  # end-of-stream report of a finite worker
                self._live[meta["worker"]] = meta["counts"]
                self._pos[meta["worker"]] = list(meta["pos"])
                continue
            self._record(meta)
            yield batch
        if self._epoch == epoch:  # the stream ran out (finite mode): the epoch is over
            self._new_epoch()

    def _record(self, meta: dict) -> None:
        w = meta["worker"]
        self._pos[w] = list(meta["pos"])
        self._live[w] = meta["counts"]
        self._batches += 1
        self._next = (w + 1) % self.stream.num_logical
        if self.batches_per_epoch is not None and self._batches >= self.batches_per_epoch:
            self._new_epoch()

    def _new_epoch(self) -> None:
        self._epoch += 1
        self._batches = 0
        self._next = 0
        self._pos = [[0, 0, 0] for _ in range(self.stream.num_logical)]

    def _fold(self) -> None:
        self._base = merge_counts([self._base, *self._live.values()])
        self._live = {}

    # -- metrics and state ---------------------------------------------------------------------
    def counts(self) -> dict:
        """``{"good": n, "errors": {reason: n}}`` over the whole run (restored on resume)."""
        return merge_counts([self._base, *self._live.values()])

    def metrics(self) -> dict[str, int]:
        c = self.counts()
        out = {"data/samples_ok": c["good"], "data/skipped": sum(c["errors"].values())}
        out.update({f"data/skipped/{k}": v for k, v in c["errors"].items()})
        return out

    def state_dict(self) -> dict:
        s = self.stream
        return {
            "version": STATE_VERSION,
            "seed": self.cfg.seed,
            "batch_size": self.cfg.batch_size,
            "rank": s.rank,
            "world_size": s.world,
            "streams_per_rank": s.num_logical,
            "num_workers": s.physical,
            "batches_per_epoch": self.batches_per_epoch,
            "epoch": self._epoch,
            "batches_in_epoch": self._batches,
            "next_worker": self._next,
            "positions": [list(p) for p in self._pos],
            "counts": self.counts(),
        }

    def load_state_dict(self, state: dict) -> None:
        """This rank's own saved state (same world size; ``num_workers`` may change to a divisor of
        the saved stream count). :class:`~data_pipelines.positions.DataResumeError` otherwise."""
        self.load_world_state([{"rank": self.stream.rank, **state}])  # version 1 states name no rank

    def load_world_state(self, states: list[dict]) -> None:
        """The states saved by every rank of a run of any world size (``positions.rank_state``)."""
        s = self.stream
        state = rank_state(states, rank=s.rank, world=s.world, physical=s.physical, seed=self.cfg.seed,
                           batch_size=self.cfg.batch_size, batches_per_epoch=self.batches_per_epoch)
        s.num_logical = state["streams_per_rank"]
        self._epoch = state["epoch"]
        self._batches = state["batches_in_epoch"]
        self._next = state["next_worker"]
        self._pos = state["positions"]
        counts = state["counts"]
        self._base = {"good": int(counts.get("good", 0)), "errors": dict(counts.get("errors", {}))}
        self._live = {}

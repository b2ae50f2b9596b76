"""Data positions across world sizes: a run saved by R ranks resumes exactly on R' ranks.

The stream of a run is G = R·L global streams (L per rank; stream ``g = rank·L + l`` is seeded by g
and, without resampling, reads every G-th shard of the epoch's permutation; see ``stateful.py``).
Each stream's position ``[raw samples, carry, batches]`` is exact on its own, so a world of R'
ranks continues the same G streams whenever R' divides G: rank r' takes streams r'·L' … (r'+1)·L'−1
with L' = G / R', and its P = max(1, num_workers) loader workers play them round robin (L' a
multiple of P). Every stream then yields, in order, exactly the samples it had not yielded yet: none
twice, none skipped. What else must hold (each refusal names it, :class:`DataResumeError`):

- the same ``seed`` and per-rank ``batch_size`` (a position counts batches of that size);
- each stream's batch quota per epoch unchanged: ``q_g = n // L + [g mod L < n mod L]`` with
  n = samples_per_epoch // (R · batch_size) batches per rank (true when samples_per_epoch is a
  multiple of G · batch_size, and often otherwise);
- every new rank at the same batch count of the epoch, its streams consumed in rotation order
  (batch k of a rank's epoch comes from its stream k mod L'; true when the saved step counts fill
  the rotation, always with one stream per saved rank).

One-pass streams (samples_per_epoch = 0) move their positions the same way; the order in which a
rank's streams interleave after such a move is not the uninterrupted run's once some have ended.
Skip counts of a saved rank go to the new rank that takes its first stream.
"""

from __future__ import annotations

from .errors import merge_counts

STATE_VERSION = 2  # 1: before cross-world resume (no rank, streams_per_rank, batches_per_epoch)


class DataResumeError(ValueError):
    """A saved data position that cannot continue exactly in this run's layout."""


def _fields(state: dict, index: int) -> dict:
    """A saved state in the current field names (version 1: no rank, streams = logical workers)."""
    version = state.get("version")
    if version not in (1, STATE_VERSION):
        raise DataResumeError(f"data state version {version!r}, expected {STATE_VERSION} (or 1)")
    return {
        **state,
        "rank": int(state.get("rank", index)),
        "streams_per_rank": int(state.get("streams_per_rank", state.get("num_workers", 0))),
        "batches_per_epoch": state.get("batches_per_epoch", "unknown"),
    }


def _same(states: list[dict], key: str):
    values = {repr(s.get(key)) for s in states}
    if len(values) != 1:
        raise DataResumeError(f"the saved ranks disagree on {key}: {sorted(values)}")
    return states[0].get(key)


def _streams_per_rank(total: int, world: int, physical: int) -> int:
    if total % world:
        raise DataResumeError(f"the checkpoint's {total} data streams do not split over world size {world} "
                              f"(resume on a world size dividing {total})")
    per_rank = total // world
    if per_rank % physical:
        raise DataResumeError(f"{per_rank} data streams per rank (the checkpoint's {total} over world size "
                              f"{world}) cannot be shared by num_workers={physical}: use a num_workers dividing "
                              f"{per_rank} (0 reads them in the main process)")
    return per_rank


def _quota(n: int | None, per_rank: int, g: int) -> int | None:
    return None if n is None else n // per_rank + (1 if g % per_rank < n % per_rank else 0)


def rank_state(states: list[dict], *, rank: int, world: int, physical: int, seed: int, batch_size: int,
               batches_per_epoch: int | None) -> dict:
    """This rank's loader state (current version) from the states saved by the ranks of a run.

    ``states``: every saved rank's state (duplicates allowed: ranks reading the same rows, as the
    sequence-parallel ranks of one replica), or just this rank's own when the layout is unchanged.
    ``physical``: loader workers, max(1, num_workers). Raises :class:`DataResumeError`.
    """
    saved = [_fields(s, i) for i, s in enumerate(states)]
    for key, value in (("seed", seed), ("batch_size", batch_size)):
        if _same(saved, key) != value:
            raise DataResumeError(f"cannot resume the data stream exactly: checkpoint has {key}="
                                  f"{saved[0].get(key)!r}, this run {key}={value!r}")
    old_world, old_per_rank = _same(saved, "world_size"), _same(saved, "streams_per_rank")
    by_rank: dict[int, dict] = {}
    for s in saved:
        first = by_rank.setdefault(s["rank"], s)
        if any(first[k] != s[k] for k in ("epoch", "batches_in_epoch", "positions")):
            raise DataResumeError(f"two saved states of data rank {s['rank']} differ")
    total = old_world * old_per_rank
    per_rank = _streams_per_rank(total, world, physical)
    if old_world == world and rank in by_rank:  # the same layout: this rank's own state as it was
        mine = by_rank[rank]
        if len(mine["positions"]) != per_rank or any(len(p) != 3 for p in mine["positions"]):
            raise DataResumeError(f"positions {mine['positions']!r} do not match {per_rank} streams")
        return _state(mine, rank, world, per_rank, batches_per_epoch, next_worker=int(mine["next_worker"]),
                      batches=int(mine["batches_in_epoch"]), positions=mine["positions"],
                      counts=mine.get("counts", {"good": 0, "errors": {}}))
    if sorted(by_rank) != list(range(old_world)):
        raise DataResumeError(f"the checkpoint holds the data states of ranks {sorted(by_rank)} of a world of "
                              f"{old_world}: all are needed to resume on world size {world}")
    old_n = _same(saved, "batches_per_epoch")
    if old_n == "unknown":
        raise DataResumeError(f"a version 1 data state (written by {old_world} rank(s)) resumes only on the "
                              "same world size")
    epoch = _same(saved, "epoch")
    _same(saved, "batches_in_epoch")
    positions = [list(p) for r in range(old_world) for p in by_rank[r]["positions"]]
    for g in range(total):
        before, now = _quota(old_n, old_per_rank, g), _quota(batches_per_epoch, per_rank, g)
        if before != now:
            raise DataResumeError(f"data stream {g} yields {before} batches per epoch at world size {old_world} "
                                  f"but {now} at {world} (samples_per_epoch split otherwise; a multiple of "
                                  f"{total} x batch_size splits alike)")
    counts = [sum(p[2] for p in positions[r * per_rank:(r + 1) * per_rank]) for r in range(world)]
    if len(set(counts)) != 1:
        raise DataResumeError(f"the ranks of world size {world} would start at different batch counts "
                              f"{counts} of the epoch (the saved step count does not fill the stream rotation)")
    mine, batches = positions[rank * per_rank:(rank + 1) * per_rank], counts[rank]
    if batches_per_epoch is not None:
        expected = [batches // per_rank + (1 if i < batches % per_rank else 0) for i in range(per_rank)]
        if [p[2] for p in mine] != expected:
            raise DataResumeError(f"rank {rank}'s streams have yielded {[p[2] for p in mine]} batches, not in "
                                  f"rotation order {expected} (the saved step count does not fill the rotation)")
    mine_range = range(rank * per_rank, (rank + 1) * per_rank)
    owned = [by_rank[r]["counts"] for r in range(old_world) if r * old_per_rank in mine_range]
    return _state({"epoch": epoch}, rank, world, per_rank, batches_per_epoch, next_worker=batches % per_rank,
                  batches=batches, positions=mine, counts=merge_counts(owned) if owned else {"good": 0, "errors": {}})


def _state(base: dict, rank: int, world: int, per_rank: int, batches_per_epoch, *, next_worker: int, batches: int,
           positions, counts: dict) -> dict:
    return {
        "version": STATE_VERSION, "rank": rank, "world_size": world, "streams_per_rank": per_rank,
        "batches_per_epoch": batches_per_epoch, "epoch": int(base["epoch"]), "batches_in_epoch": batches,
        "next_worker": next_worker, "positions": [[int(x) for x in p] for p in positions], "counts": counts,
    }  # fmt: skip

"""Several batch sources as one: each batch comes whole from one source, drawn with fixed weights.

The draw for batch n is seeded by (seed, n) alone, so the sequence of sources is the same in every
run and after a resume; each source keeps its own resumable position. The state is the batch count
plus every source's state (``BatchSource`` protocol of :mod:`mm.train.recipe`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from .stream import derive_seed


class WeightedMix:
    """``{"source": name, **batch}`` from ``sources[name]`` with probability weight / total."""

    def __init__(self, sources: dict, weights: dict[str, float], seed: int = 0):
        if not sources or set(sources) != set(weights):
            raise ValueError(f"mix: sources {sorted(sources)} and weights {sorted(weights)} must name the same sets")
        bad = {k: w for k, w in weights.items() if not w >= 0}
        if bad or sum(weights.values()) <= 0:
            raise ValueError(f"mix: weights must be >= 0 with a positive sum, got {weights}")
        self.sources, self.seed = sources, seed
        self.names = sorted(sources)
        self.weights = [float(weights[n]) for n in self.names]
        self.count = 0

    def choose(self, n: int) -> str:
        return random.Random(derive_seed(self.seed, n, "mix")).choices(self.names, weights=self.weights)[0]

    def __iter__(self) -> Iterator[dict]:
        iters = {name: iter(source) for name, source in self.sources.items()}
        while True:
            name = self.choose(self.count)
            try:
                batch = next(iters[name])
            except StopIteration:
                return
            self.count += 1
            yield {"source": name, **batch}

    def state_dict(self) -> dict:
        return {"count": self.count, "sources": {n: s.state_dict() for n, s in self.sources.items()}}

    def load_state_dict(self, state: dict) -> None:
        if set(state.get("sources", {})) != set(self.sources):
            raise ValueError(f"mix: checkpoint has sources {sorted(state.get('sources', {}))}, "
                             f"this run {sorted(self.sources)}")
        self.count = int(state["count"])
        for name, source in self.sources.items():
            source.load_state_dict(state["sources"][name])

    def load_world_state(self, states: list[dict]) -> None:
        """Every rank's state of a run of another world size: each source continues its own streams
        exactly (``ResumableLoader.load_world_state``); the source draws go on from the saved
        ranks' count (draws are per rank and per micro-batch, so with several sources their order
        after the move is not the one an uninterrupted run would have drawn)."""
        for state in states:
            if set(state.get("sources", {})) != set(self.sources):
                raise ValueError(f"mix: checkpoint has sources {sorted(state.get('sources', {}))}, "
                                 f"this run {sorted(self.sources)}")
        self.count = int(states[0]["count"])
        for name, source in self.sources.items():
            source.load_world_state([state["sources"][name] for state in states])

    def metrics(self) -> dict[str, float]:
        out = {}
        for name, source in self.sources.items():
            metrics = getattr(source, "metrics", None)
            if callable(metrics):
                out.update({f"{name}/{k}": v for k, v in metrics().items()})
        return out

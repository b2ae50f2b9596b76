"""A step (a training step, a decoding step) recorded once as a CUDA graph and replayed after.

A step that never waits on the device (no ``.item()``, no shapes read from device values, no host
decisions on device results) can be recorded and replayed: the replay launches the step's kernels
as one graph. Launched one by one, the device spends a few microseconds between kernels even when
the host is far ahead, and a small step (one decoded token) is all launch overhead. Inputs are
copied into the tensors the graph was recorded with, so every call must keep their shapes and
dtypes; state the step carries from call to call must be updated in place.

Tensors the step returns are the graph's own outputs: each replay overwrites them, so read them
(or clone them) before the next call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_map_only


def copy_into(recorded, new, path: str = "batch") -> None:
    """Copy ``new`` into the recorded input buffers; a differing key, shape, dtype or non-tensor
    value raises ValueError naming it (the graph would silently read stale or wrong memory)."""
    hint = "a CUDA graph replays one recorded step, so every call must pass the same layout"
    if isinstance(recorded, torch.Tensor):
        if not isinstance(new, torch.Tensor) or new.shape != recorded.shape or new.dtype != recorded.dtype:
            got = f"{list(new.shape)} {new.dtype}" if isinstance(new, torch.Tensor) else repr(new)
            raise ValueError(f"{hint}: {path} was {list(recorded.shape)} {recorded.dtype} when recorded, now {got}")
        recorded.copy_(new, non_blocking=True)
    elif isinstance(recorded, dict):
        if not isinstance(new, dict) or new.keys() != recorded.keys():
            got = sorted(new) if isinstance(new, dict) else type(new).__name__
            raise ValueError(f"{hint}: {path} had keys {sorted(recorded)} when recorded, now {got}")
        for key, value in recorded.items():
            copy_into(value, new[key], f"{path}.{key}")
    elif isinstance(recorded, (list, tuple)):
        if not isinstance(new, (list, tuple)) or len(new) != len(recorded):
            raise ValueError(f"{hint}: {path} held {len(recorded)} items when recorded, now {new!r:.80}")
        for i, (old, value) in enumerate(zip(recorded, new, strict=True)):
            copy_into(old, value, f"{path}[{i}]")
    elif recorded != new:
        raise ValueError(f"{hint}: {path} was {recorded!r} when recorded, now {new!r}")


class StepGraph:
    """``step(batches)`` runs ``body(batches)``: eagerly for the first ``eager_calls`` calls (compiling,
    autotuning and allocating as any first step does), then once more eagerly on a side stream
    followed by recording the body as a CUDA graph (that call's results are the eager run's), then
    by replaying the graph on each new batch.

    ``body`` must not wait on the device nor have host-side effects (recording runs its Python
    again); a training body must leave parameters' ``.grad`` to itself (``zero_grad(set_to_none=True)``
    first), so the recorded gradients live in the graph's memory. For error messages, ``switch_off``
    names the setting that turns graphs off and ``hint`` what the caller knows keeps its step from
    being recorded.
    """

    def __init__(self, body: Callable[[Any], Any], eager_calls: int = 1,
                 switch_off: str = "train.cuda_graph: false", hint: str = ""):
        if not torch.cuda.is_available():
            raise RuntimeError(f"CUDA graphs need a CUDA device ({switch_off} on CPU)")
        self.body, self.eager_calls, self.switch_off, self.hint = body, eager_calls, switch_off, hint
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs = self.outputs = None

    def __call__(self, batches):
        self.calls += 1
        if self.graph is not None:
            copy_into(self.inputs, batches)
            self.graph.replay()
            return self.outputs
        if self.calls <= self.eager_calls:
            return self.body(batches)
        return self._record(batches)

    def _record(self, batches):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            result = self.body(batches)
            self.inputs = tree_map_only(torch.Tensor, torch.clone, batches)  # the buffers the graph reads
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # the eager steps' cached blocks go back before the graph takes its own
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.outputs = self.body(self.inputs)
        except RuntimeError as err:
            hint = f" ({self.hint})" if self.hint else ""
            raise RuntimeError(
                "the step could not be recorded as a CUDA graph: something in it waits on the device or "
                f"changes with the data{hint}; or set {self.switch_off}. Cause: {err}"
            ) from err
        self.graph = graph
        return result

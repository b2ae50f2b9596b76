"""Whole (single-process) state of an expert-parallel model, for checkpoints (DESIGN §10).

Under :func:`mm.distributed.expert_parallel.apply_expert_parallel` rank p of an EP group of P
ranks holds rows p·E/P .. (p+1)·E/P − 1 of every MoE layer's ``gate_up`` and ``down`` (and of their
optimizer moments, and of their moving average). Checkpoints keep the single-process layout, so
that ``mm generate`` and a run on any other layout read them: on save the slices are gathered along
dim 0 onto the group's first rank (``dist.gather``: the concatenation in rank order is the whole
[E, ...] tensor); on load every rank reads the whole tensors and keeps its own rows.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn

from mm.layers.moe import MoE

__all__ = ["ExpertShards", "expert_parameters"]

_EXPERT_WEIGHTS = ("gate_up", "down")


def expert_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The expert weights of every MoE layer by fully qualified name (``layers.0.mlp.gate_up`` ...)."""
    return {f"{name}.{attr}" if name else attr: getattr(m, attr)
            for name, m in model.named_modules() if isinstance(m, MoE) for attr in _EXPERT_WEIGHTS}


class ExpertShards:
    """Converts between this rank's expert rows and whole tensors over the EP ``group``."""

    def __init__(self, model: nn.Module, group: dist.ProcessGroup):
        self.model, self.group = model, group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.names = list(expert_parameters(model))  # the same order on every rank: collectives follow it

    # -- tensors -------------------------------------------------------------------------------
    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """The whole tensor (slices of all ranks along dim 0) on the group's first rank; ``t`` elsewhere.
        A collective over the group."""
        t = t.detach().contiguous()
        parts = [torch.empty_like(t) for _ in range(self.world)] if self.rank == 0 else None
        dist.gather(t, parts, group=self.group, group_dst=0)
        return torch.cat(parts) if parts is not None else t

    def local(self, t: torch.Tensor, what: str) -> torch.Tensor:
        """This rank's rows of the whole tensor ``t`` (``what`` names it in the error)."""
        if t.shape[0] % self.world:
            raise ValueError(f"{what}: {t.shape[0]} experts do not split over {self.world} expert-parallel ranks")
        n = t.shape[0] // self.world
        return t[self.rank * n:(self.rank + 1) * n].clone()

    # -- named tensors (weights, moving averages) ----------------------------------------------
    def whole_named(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` (by parameter name) with the expert entries gathered (whole on the first rank)."""
        return {**state, **{n: self.gather(state[n]) for n in self.names if n in state}}

    def local_named(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` in the single-process layout with the expert entries cut to this rank's rows."""
        return {**state, **{n: self.local(state[n], n) for n in self.names if n in state}}

    @contextlib.contextmanager
    def _swapped(self, whole: dict[str, torch.Tensor]):
        """Within the block the module holds ``whole`` as its expert parameters (same names, so
        ``state_dict``/``load_model`` see the single-process layout); its own come back afterwards."""
        modules = dict(self.model.named_modules())
        owners = [(modules[n.rpartition(".")[0]], n.rpartition(".")[2]) for n in whole]
        originals = [getattr(m, attr) for m, attr in owners]
        swapped = {}
        try:
            for (m, attr), (name, t), p in zip(owners, whole.items(), originals, strict=True):
                swapped[name] = nn.Parameter(t, requires_grad=p.requires_grad)
                setattr(m, attr, swapped[name])
            yield swapped
        finally:
            for (m, attr), p in zip(owners, originals, strict=True):
                setattr(m, attr, p)

    @contextlib.contextmanager
    def gathered(self):
        """Within the block the group's first rank holds every expert (to write the single-process
        ``model.safetensors``); the other ranks' modules are unchanged. A collective."""
        params = expert_parameters(self.model)
        whole = {n: self.gather(params[n]) for n in self.names}
        with self._swapped(whole if self.rank == 0 else {}):
            yield

    @contextlib.contextmanager
    def loading(self):
        """Within the block every rank holds whole (zero) experts to load single-process weights into;
        on leaving it normally each rank's parameters take their rows of what was loaded."""
        params = expert_parameters(self.model)
        whole = {n: params[n].detach().new_zeros(self.world * params[n].shape[0], *params[n].shape[1:])
                 for n in self.names}
        with self._swapped(whole) as loaded:
            yield
        with torch.no_grad():
            for n in self.names:
                params[n].copy_(self.local(loaded[n].detach(), n))

    # -- optimizer state -----------------------------------------------------------------------
    def _indices(self, optimizer: torch.optim.Optimizer) -> dict[str, int]:
        """Expert parameter name -> its index in ``optimizer.state_dict()["state"]``."""
        order = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
        params = expert_parameters(self.model)
        return {n: order[id(params[n])] for n in self.names if id(params[n]) in order}

    def _map_optimizer_state(self, state: dict, optimizer, fn) -> dict:
        """A copy of ``state`` (an optimizer state dict) with ``fn(tensor, what)`` applied to the
        per-element tensors of the expert parameters (moments; not the 0-dim step counts)."""
        per_param = dict(state["state"])
        params = expert_parameters(self.model)
        for name, i in self._indices(optimizer).items():
            if i in per_param:
                per_param[i] = {key: fn(v, f"optimizer state {key!r} of {name}")
                                if isinstance(v, torch.Tensor) and v.ndim == params[name].ndim else v
                                for key, v in sorted(per_param[i].items())}
        return {**state, "state": per_param}

    def whole_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """``optimizer.state_dict()`` in the single-process layout (whole on the first rank). A collective."""
        return self._map_optimizer_state(optimizer.state_dict(), optimizer, lambda t, _: self.gather(t))

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Load a single-process optimizer state dict, each expert moment cut to this rank's rows."""
        optimizer.load_state_dict(self._map_optimizer_state(state, optimizer, self.local))

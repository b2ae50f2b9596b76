"""The training loop's side of torch.distributed: process group, data parallelism, global loss.

Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment) the trainer calls
:func:`init_from_env`: the world size is first checked against the ``parallel`` section
(:func:`mm.distributed.mesh.mesh_shape`, a :class:`ConfigError` naming the keys), then the process
group starts (NCCL on CUDA with device ``cuda:LOCAL_RANK``, gloo on CPU). A recipe applies its
parallelism from outside in :meth:`mm.train.recipe.Recipe.parallelize`; the default here is plain
data parallelism: DDP, or FSDP2 ``fully_shard`` with ``parallel.fsdp``.

Loss normalisation (as torchtitan): every rank backpropagates the *sum* of its per-unit losses
(``loss · count`` per micro-batch); once all micro-batches are done the gradients are multiplied by
``loss_scale / N`` with N the count of units summed over all micro-batches of all ranks. The update
then equals the one of a single process that sees the whole global batch,
``∇ Σ_r Σ_i ℓ_ri / N``, whatever the split of units over ranks and micro-batches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from mm.config import ConfigError
from mm.distributed.mesh import ParallelConfig, mesh_shape

__all__ = ["DataParallel", "World", "data_parallel", "follow_trainable", "init_from_env", "launched"]


def launched() -> bool:
    """True when started by torchrun (or any launcher that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes metrics, config, progress and checkpoint metadata."""
        return self.rank == 0


def _check_mesh(cfg: ParallelConfig, world_size: int) -> None:
    try:
        mesh_shape(cfg, world_size)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def init_from_env(cfg: ParallelConfig, device: torch.device) -> World | None:
    """Start the process group under torchrun; None in a plain single process.

    ``device`` is the run's resolved device: on CUDA each rank takes ``cuda:LOCAL_RANK`` and NCCL,
    on CPU gloo. A world size that does not factor into the mesh raises before any work.
    """
    if not launched():
        _check_mesh(cfg, 1)  # parallel.sp=2 without torchrun is a config error, not a silent 1-process run
        return None
    world_size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    _check_mesh(cfg, world_size)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        cuda = device.type == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return World(rank, world_size, device)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class DataParallel:
    """How the gradients of a data-parallel model are combined (the protocol :class:`Layout` shares).

    DDP and FSDP2 both average gradients over the world in backward, so a rank's loss, already
    normalised by the global unit count, is scaled by the world size (``loss_scale``).
    """

    experts = None  # every rank holds every parameter: checkpoints need no gathering
    own_units = False  # True: a rank divides its gradients by its own unit count (CO2's local steps)

    def __init__(self, world_size: int):
        self.loss_scale = world_size

    def reduce_gradients(self, model: nn.Module) -> None:
        """Nothing to do: the engine reduced the gradients during backward."""

    def clip_grad_norm_(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """Replicated (DDP) or sharded (FSDP2, a DTensor norm) gradients: torch's own clipping."""
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


def data_parallel(model: nn.Module, cfg: ParallelConfig, device: torch.device,
                  find_unused_parameters: bool = False) -> tuple[nn.Module, DataParallel]:
    """Plain data parallelism over all ranks: DDP, or (``parallel.fsdp``) FSDP2 ``fully_shard`` on each
    block of every ``nn.ModuleList`` (transformer layers) and then on the root; with ``parallel.co2``
    no wrapper at all (:func:`mm.train.co2.local_updates`). Models with SP/EP need
    their recipe's own hook. ``find_unused_parameters``: DDP's search, each step, for trainable
    parameters the step did not use (a recipe whose batches use different parts of the model)."""
    if cfg.sp > 1 or cfg.ep > 1:
        raise ConfigError(f"parallel.sp={cfg.sp}, parallel.ep={cfg.ep}: this recipe supports data parallelism "
                          "only (DDP, or FSDP with parallel.fsdp=true); set parallel.sp=1 parallel.ep=1")
    world = dist.get_world_size()
    if cfg.co2.enabled:  # CO2: local inner steps, parameters averaged by the outer loop (mm.train.co2)
        from mm.train.co2 import local_updates

        return local_updates(model)
    if cfg.fsdp:
        from torch.distributed.fsdp import fully_shard

        mesh = torch.distributed.device_mesh.init_device_mesh(device.type, (world,), mesh_dim_names=("dp",))
        blocks = [block for m in model.modules() if isinstance(m, nn.ModuleList) for block in m]
        for block in blocks:
            fully_shard(block, mesh=mesh)
        return fully_shard(model, mesh=mesh), DataParallel(world)
    return _ddp(model, find_unused_parameters), DataParallel(world)


def _trainable(module: nn.Module) -> tuple[bool, ...]:
    return tuple(p.requires_grad for p in module.parameters())


def _ddp(module: nn.Module, find_unused_parameters: bool) -> nn.parallel.DistributedDataParallel:
    device = next(module.parameters()).device
    wrapped = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                                  find_unused_parameters=find_unused_parameters)
    wrapped.mm_trainable = _trainable(module)
    return wrapped


def follow_trainable(model: nn.Module) -> nn.Module:
    """A fresh DDP wrapper when a recipe's training stage changed which parameters train
    (``Recipe.start_step``): DDP reduces exactly the parameters that required grad when it was built."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and model.mm_trainable != _trainable(model.module):
        return _ddp(model.module, model.find_unused_parameters)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module under a DDP wrapper (parameter names without ``module.``)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over all ranks (identity in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
    return values


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. a stop signal that reached one rank)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable plain values), in rank order, on every rank."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out

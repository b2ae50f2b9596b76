"""The DP × SP (× EP) layout of a run and :func:`parallelize_lm`, which applies it from outside.

World ranks form a dp × sp grid (row-major: the sp ranks of one data-parallel replica are
consecutive, so the sequence ring stays inside a node when sp divides the GPUs per node):

- sp: LASP / K/V-gather sequence parallelism (:mod:`mm.distributed.sequence_parallel`);
- dp: replicas on different rows of data;
- ep: experts split over blocks of ep consecutive ranks of the flattened grid
  (:mod:`mm.distributed.expert_parallel`); ep divides dp · sp.

Every rank holds all non-expert parameters and different tokens, so their gradients are summed
over the whole world (DP and SP alike); expert gradients are summed over the ranks that hold the
same experts. With ``fsdp`` the non-expert parameters are sharded with FSDP2 ``fully_shard`` over a
1-D mesh of all dp · sp ranks (SP folded into the shard dimension, as torchtitan does for context
parallelism); FSDP2 averages gradients over that mesh, so the per-rank loss is scaled by dp · sp
(:meth:`Layout.loss_scale`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from mm.distributed.co2 import CO2Config
from mm.distributed.expert_parallel import apply_expert_parallel
from mm.distributed.expert_state import ExpertShards, expert_parameters
from mm.distributed.lasp import MODES
from mm.distributed.sequence_parallel import apply_sequence_parallel

__all__ = ["Layout", "ParallelConfig", "mesh_shape", "parallelize_lm"]


@dataclass
class ParallelConfig:
    dp: int = 0  # data-parallel replicas; 0: whatever the world size leaves after sp
    sp: int = 1  # sequence-parallel ranks per replica
    ep: int = 1  # expert-parallel ranks (a block of the flattened dp × sp grid)
    lasp: str = "ring"  # LASP variant of the lightning layers: ring | allgather
    fsdp: bool = False  # shard non-expert parameters with FSDP2 over dp × sp
    # CO2 local updates with an overlapped outer step instead of DDP's per-step all-reduce (mm.train.co2)
    co2: CO2Config = field(default_factory=CO2Config)

    def __post_init__(self):
        if self.dp < 0 or self.sp < 1 or self.ep < 1:
            raise ValueError(f"parallel.dp must be >= 0 and parallel.sp, parallel.ep >= 1, "
                             f"got dp={self.dp}, sp={self.sp}, ep={self.ep}")
        if self.lasp not in MODES:
            raise ValueError(f"parallel.lasp must be one of {MODES}, got {self.lasp!r}")
        if self.fsdp and self.ep > 1:
            raise ValueError("parallel.fsdp with parallel.ep > 1 is not supported yet (experts would need "
                             "their own shard mesh); set one of them off")
        if self.co2.enabled and (self.sp > 1 or self.ep > 1 or self.fsdp):
            raise ValueError(f"parallel.co2.enabled=true works with plain data parallelism only (every rank a "
                             f"replica): got parallel.sp={self.sp}, parallel.ep={self.ep}, parallel.fsdp={self.fsdp}. "
                             "FSDP2 over all ranks leaves no replica to average with; set them to 1/false")


def mesh_shape(cfg: ParallelConfig, world_size: int) -> tuple[int, int]:
    """(dp, sp) for ``world_size`` ranks; ValueError naming the keys when it does not factor."""
    dp = cfg.dp or world_size // cfg.sp
    if dp * cfg.sp != world_size or dp < 1:
        raise ValueError(f"world size {world_size} does not factor into parallel.dp={cfg.dp or 'auto'} × "
                         f"parallel.sp={cfg.sp}; launch dp · sp processes (torchrun --nproc_per_node)")
    if (dp * cfg.sp) % cfg.ep:
        raise ValueError(f"parallel.ep={cfg.ep} must divide dp · sp = {dp * cfg.sp} (world size {world_size})")
    return dp, cfg.sp


@dataclass
class Layout:
    """The groups of one run (every rank builds every group, as torch.distributed requires)."""

    cfg: ParallelConfig
    mesh: DeviceMesh  # ("dp", "sp")
    ep_mesh: DeviceMesh | None  # ("ep_replica", "ep"), when ep > 1
    experts: ExpertShards | None = None  # gathers/cuts the expert slices for checkpoints, when ep > 1
    own_units = False  # gradients are normalised by the global unit count (see DataParallel)

    @property
    def loss_scale(self) -> int:
        """Multiply a rank's loss (normalised by the global token count) by this before backward."""
        return self.mesh.size() if self.cfg.fsdp else 1

    def reduce_gradients(self, model: nn.Module) -> None:
        """Without FSDP: sum non-expert gradients over the world, expert gradients over their replicas."""
        if self.cfg.fsdp:
            return  # FSDP2 reduce-scatters in backward
        experts = {id(p) for p in expert_parameters(model).values()}
        replicas = self.ep_mesh["ep_replica"].get_group() if self.ep_mesh is not None else None
        for p in model.parameters():
            if p.grad is None:
                continue
            if id(p) in experts and self.ep_mesh is not None:
                dist.all_reduce(p.grad, group=replicas)
            else:
                dist.all_reduce(p.grad)

    def clip_grad_norm_(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """Clip the reduced gradients to the global norm, the one of a single process holding all
        experts: ‖g‖² = ‖g_shared‖² + Σ over the EP group of ‖g_experts of rank p‖² (replicated
        parameters counted once). Returns that norm."""
        if self.ep_mesh is None:
            return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        experts = {id(p) for p in expert_parameters(model).values()}
        params = [p for p in model.parameters() if p.grad is not None]
        shared = torch.nn.utils.get_total_norm([p.grad for p in params if id(p) not in experts])
        local = torch.nn.utils.get_total_norm([p.grad for p in params if id(p) in experts])
        experts_sq = local.square()
        dist.all_reduce(experts_sq, group=self.ep_mesh["ep"].get_group())
        total = (shared.square() + experts_sq).sqrt()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return total


def parallelize_lm(model: nn.Module, cfg: ParallelConfig, *, device_type: str) -> tuple[nn.Module, Layout]:
    """Apply SP, then EP, then FSDP2 to an unmodified :class:`mm.models.lm.LM` on this rank's device.

    Each rank then feeds rows ``dp_rank`` of the batch split, tokens ``sp_rank`` of the sequence
    split (``Layout.mesh.get_local_rank("dp" / "sp")``). Returns the model and its :class:`Layout`.
    """
    world = dist.get_world_size()
    dp, sp = mesh_shape(cfg, world)
    mesh = init_device_mesh(device_type, (dp, sp), mesh_dim_names=("dp", "sp"))
    ep_mesh, experts = None, None
    if sp > 1:
        apply_sequence_parallel(model, group=mesh["sp"].get_group(), mode=cfg.lasp)
    if cfg.ep > 1:
        ep_mesh = init_device_mesh(device_type, (world // cfg.ep, cfg.ep), mesh_dim_names=("ep_replica", "ep"))
        apply_expert_parallel(model, group=ep_mesh["ep"].get_group())
        experts = ExpertShards(model, ep_mesh["ep"].get_group())
    if cfg.fsdp:
        from torch.distributed.fsdp import fully_shard

        shard_mesh = init_device_mesh(device_type, (world,), mesh_dim_names=("dp_sp",))
        for layer in model.layers:
            fully_shard(layer, mesh=shard_mesh)
        fully_shard(model, mesh=shard_mesh)
    return model, Layout(cfg, mesh, ep_mesh, experts)

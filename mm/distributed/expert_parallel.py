"""Expert parallelism for :class:`mm.layers.moe.MoE`, applied from outside (DESIGN §10).

The E experts of every MoE layer are spread over the P ranks of an expert-parallel group: rank p
keeps experts p·E/P .. (p+1)·E/P - 1 (its slices of ``gate_up`` and ``down``). The router and the
shared expert stay replicated. Each rank routes its own tokens exactly as the single-process layer
does (same top-k, same renormalised weights, same capacity limit in token order, applied before any
exchange), then:

1. sorts its N·k assignments by expert, which also groups them by owner rank, and exchanges the
   per-expert counts (one small ``all_to_all_single``): rank p learns how many rows each source sends
   to each of its experts (the host reads these counts: the split sizes of the next exchange);
2. dispatches the rows and their routing weights with ``all_to_all_single``;
3. regroups the received rows by local expert (they arrive ordered by source, then expert), runs
   its experts as one grouped matmul each for [w1 | w3] and w2 (weight · SwiGLU before w2, as the
   single-process layer), and puts the rows back in arrival order;
4. combines: the rows return with the transposed ``all_to_all_single`` and each token sums its k.

So rank p's output equals the single-process layer on rank p's tokens with all experts local; the
backward of each exchange is the exchange with the split sizes swapped, so every expert's gradient
sums the contributions of all ranks' tokens. Router statistics (aux loss, ``tokens_per_expert``)
describe the rank's own tokens, as on one process; the load each rank's experts received from the
whole group is kept per layer and gathered by :func:`gathered_expert_load`.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.distributed as dist
from torch import nn

from mm.layers.moe import MoE, RouterStats, _Combine, _Dispatch
from mm.ops.compute_dtype import compute_dtype
from mm.ops.grouped_mm import grouped_mm
from mm.ops.weighted_swiglu import weighted_swiglu

__all__ = ["apply_expert_parallel", "gathered_expert_load"]


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` along dim 0 with explicit split sizes; backward: the reverse exchange."""

    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group):
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty(sum(out_splits), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        back = grad.new_empty(sum(in_splits), *grad.shape[1:])
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return back, None, None, None


def _permutation_inverse(perm: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(perm).scatter_(0, perm, torch.arange(perm.numel(), device=perm.device))


def _ep_forward(self: MoE, x: torch.Tensor, *, group) -> tuple[torch.Tensor, RouterStats]:
    """MoE.forward with this rank's experts only (see the module doc for the four steps)."""
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    n_tokens, k, n_experts = x.shape[0], self.top_k, self.experts
    world = dist.get_world_size(group)
    n_local = n_experts // world
    logits, weights, ids = self.route(x)

    # 1. Sort by expert (= by owner rank), as MoE.forward; counts per expert; capacity before sending.
    expert_of_row, order = ids.flatten().sort(stable=True)
    inverse = _permutation_inverse(order)
    ends = torch.searchsorted(expert_of_row, torch.arange(n_experts, device=x.device), right=True)
    counts = torch.diff(ends, prepend=ends.new_zeros(1))  # [E]
    row_weight = weights.flatten()[order]
    dropped = counts.new_zeros(())
    if self.capacity_factor > 0:
        capacity = math.ceil(self.capacity_factor * n_tokens * k / n_experts)
        rank_in_expert = torch.arange(order.numel(), device=x.device) - (ends - counts)[expert_of_row]
        kept = rank_in_expert < capacity
        dropped = (~kept).sum()
        row_weight = row_weight * kept
    recv_counts = torch.empty_like(counts).view(world, n_local)  # [source, local expert]
    dist.all_to_all_single(recv_counts, counts.view(world, n_local), group=group)
    send_splits = counts.view(world, n_local).sum(1).tolist()
    recv_splits = recv_counts.sum(1).tolist()

    # 2. Dispatch rows and routing weights to the experts' owners.
    dtype = compute_dtype(x)
    token = order // k
    rows = _Dispatch.apply(x.to(dtype), token, inverse, k)  # [A, h] sorted by expert
    rows = _AllToAll.apply(rows, recv_splits, send_splits, group)
    row_weight = _AllToAll.apply(row_weight, recv_splits, send_splits, group)

    # 3. Local experts over the received rows, regrouped by expert (stable: source order inside).
    local_expert = torch.arange(n_local, device=x.device).repeat(world)  # expert of each [source, expert] block
    _, regroup = torch.repeat_interleave(local_expert, recv_counts.flatten()).sort(stable=True)
    local_ends = recv_counts.sum(0).cumsum(0)
    h = weighted_swiglu(grouped_mm(rows[regroup], self.gate_up.to(dtype), local_ends), row_weight[regroup])
    out = grouped_mm(h, self.down.to(dtype), local_ends)[_permutation_inverse(regroup)]  # arrival order

    # 4. Rows back to their tokens' ranks; each token sums its k.
    out = _AllToAll.apply(out, send_splits, recv_splits, group)
    y = _Combine.apply(out, token, inverse, k)
    if self.shared is not None:
        y = y + self.shared(x)
    self.expert_load = recv_counts.sum(0)  # [E / P] rows this rank's experts took from the whole group

    probs = logits.softmax(-1)
    aux = n_experts * (counts.float() / max(n_tokens, 1) * probs.mean(0)).sum()
    z = torch.logsumexp(logits, -1).pow(2).mean()
    return y.reshape(shape), RouterStats(aux, z, counts, dropped)


def apply_expert_parallel(model: nn.Module, *, group: dist.ProcessGroup | None = None) -> nn.Module:
    """Keep only this rank's experts in every MoE layer of ``model`` and exchange tokens, in place.

    Every rank of ``group`` must hold the same (replicated) weights when this is called; afterwards
    ``gate_up``/``down`` are the local slices [E / P, ...] (parameters of the same names). Gradients
    of the experts are complete on their owner; those of replicated parameters (router, shared
    expert, the rest of the model) are per rank and need the usual reduction. Returns the model.
    """
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    if not layers:
        raise ValueError(f"apply_expert_parallel: {type(model).__name__} has no MoE layer")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    for moe in layers:
        if moe.experts % world:
            raise ValueError(f"expert parallelism over {world} ranks needs the expert count to be a multiple "
                             f"of {world}, got experts={moe.experts}")
        lo, hi = rank * moe.experts // world, (rank + 1) * moe.experts // world
        moe.gate_up = nn.Parameter(moe.gate_up.detach()[lo:hi].clone())
        moe.down = nn.Parameter(moe.down.detach()[lo:hi].clone())
        moe.forward = functools.partial(_ep_forward, moe, group=group)
    return model


def gathered_expert_load(model: nn.Module, *, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """[MoE layers, E]: rows each expert took in the last forward, over the whole group (a collective)."""
    loads = torch.stack([m.expert_load for m in model.modules() if isinstance(m, MoE)])  # [L, E / P]
    world = dist.get_world_size(group)
    out = loads.new_empty(world, *loads.shape)
    dist.all_gather_into_tensor(out.view(-1, loads.shape[1]), loads, group=group)
    return out.permute(1, 0, 2).reshape(loads.shape[0], -1)  # rank p's experts at p·E/P ..

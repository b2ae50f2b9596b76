"""Top-k mixture of SwiGLU experts, dropless by default (DESIGN §3).

Router (float32, also under autocast): p = softmax(x W_gᵀ); the k largest p_e per token,
renormalised to sum to 1. Expert e: w2_e(silu(w1_e x) ⊙ w3_e x). The N·k assignments are sorted
by expert (one sort), each token row is gathered once per assignment, every expert runs in one
grouped matmul (``mm.ops.grouped_mm``) for [w1 | w3] and one for w2, and each token sums its k
rows back. The routing weight scales the SwiGLU activation before w2 (w2 is linear, so this is
weight · expert output; ``mm.ops.weighted_swiglu``, whose backward is one kernel on CUDA). Shapes
stay static and nothing waits on the device: no host syncs.

Auxiliary losses, per layer (N tokens, E experts):
    load balance (Switch, as transformers' MiniMax/Mixtral):  E · Σ_e (c_e / N) · P_e,
        c_e = top-k assignments to e, P_e = mean_t p_e(t)   (= k under perfectly even routing)
    router z-loss:  mean_t logsumexp(logits_t)²
With ``capacity_factor`` > 0 each expert takes at most ceil(cf · N · k / E) assignments, in token
order; the rest are dropped (weight 0: no contribution, no gradient) and counted. Dropped rows
still go through their expert's matmuls, which keeps the shapes static; the limit bounds what an
expert contributes, not the compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mm.layers.swiglu import SwiGLU
from mm.ops.compute_dtype import compute_dtype
from mm.ops.grouped_mm import grouped_mm
from mm.ops.weighted_swiglu import weighted_swiglu


@dataclass
class RouterStats:
    aux_loss: torch.Tensor  # load-balance loss (scalar, float32)
    z_loss: torch.Tensor  # router z-loss (scalar, float32)
    tokens_per_expert: torch.Tensor  # [E] assignments routed to each expert (before dropping)
    dropped: torch.Tensor  # assignments dropped by the capacity limit (scalar)


def _top_k_ids(probs: torch.Tensor, k: int) -> torch.Tensor:
    """[N, E] probabilities -> [N, k] ids of the k largest, largest first (ties: lowest id first), by k
    passes of argmax. Under torch.compile these fuse with the softmax into one kernel; topk would be
    a sort kernel of its own (about 80 µs a layer for 32K tokens on an H200, for 8 values a row)."""
    ids = []
    for _ in range(k):
        ids.append(probs.argmax(-1, keepdim=True))
        probs = probs.scatter(-1, ids[-1], -1.0)  # below every probability
    return torch.cat(ids, dim=-1)


def _spread(x: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """x [N, h] -> [A, h]: row p is x[token[p]]."""
    return x.index_select(0, token)


def _collect(rows: torch.Tensor, inverse: torch.Tensor, k: int) -> torch.Tensor:
    """rows [A = N·k, h] sorted by expert -> [N, h]: token t sums its rows inverse[t·k : t·k + k]."""
    return rows.index_select(0, inverse).view(-1, k, rows.shape[-1]).sum(1)


class _Dispatch(torch.autograd.Function):
    """Token rows to their assignments sorted by expert. The backward is :func:`_collect` (a gather
    and a sum over k) rather than autograd's scatter-add: no atomics, deterministic."""

    @staticmethod
    def forward(ctx, x, token, inverse, k):
        ctx.save_for_backward(inverse)
        ctx.k = k
        return _spread(x, token)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return _collect(grad, inverse, ctx.k), None, None, None


class _Combine(torch.autograd.Function):
    """Expert rows back to tokens, summed over the k assignments: the transpose of :class:`_Dispatch`."""

    @staticmethod
    def forward(ctx, rows, token, inverse, k):
        ctx.save_for_backward(token)
        return _collect(rows, inverse, k)

    @staticmethod
    def backward(ctx, grad):
        (token,) = ctx.saved_tensors
        return _spread(grad, token), None, None, None


class MoE(nn.Module):
    def __init__(self, hidden: int, ffn: int, experts: int, top_k: int, shared_ffn: int = 0,
                 capacity_factor: float = 0.0):
        super().__init__()
        if not 1 <= top_k <= experts:
            raise ValueError(f"need 1 <= top_k <= experts, got top_k={top_k}, experts={experts}")
        self.experts, self.top_k, self.ffn, self.capacity_factor = experts, top_k, ffn, capacity_factor
        self.gate = nn.Linear(hidden, experts, bias=False)
        self.gate_up = nn.Parameter(torch.empty(experts, hidden, 2 * ffn))  # [w1 | w3] of each expert
        self.down = nn.Parameter(torch.empty(experts, ffn, hidden))  # w2 of each expert
        self.shared = SwiGLU(hidden, shared_ffn) if shared_ffn else None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, h] -> (logits [N, E] fp32, top-k weights [N, k] fp32 summing to 1, expert ids [N, k])."""
        with torch.autocast(x.device.type, enabled=False):  # autocast would run this Linear in bf16
            logits = nn.functional.linear(x.float(), self.gate.weight.float())
        probs = logits.softmax(-1)
        ids = _top_k_ids(probs.detach(), self.top_k)
        weights = probs.gather(-1, ids)
        return logits, weights / weights.sum(-1, keepdim=True), ids

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        """x [..., h] -> (y [..., h] in the compute dtype (autocast's, else x's), router statistics)."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        n_tokens, k, n_experts = x.shape[0], self.top_k, self.experts
        logits, weights, ids = self.route(x)

        # Assignment a = t·k + j is token t's j-th choice. Sorted row p holds assignment order[p].
        # A one-byte key sorts in one radix pass instead of eight for int64 (E <= 256, MiniMax has 32).
        key = ids.flatten().to(torch.uint8) if n_experts <= 256 else ids.flatten()
        expert_of_row, order = key.sort(stable=True)  # grouped by expert, token order inside
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=x.device))
        experts = torch.arange(n_experts, device=x.device, dtype=key.dtype)
        ends = torch.searchsorted(expert_of_row, experts, right=True)  # [E]
        counts = torch.diff(ends, prepend=ends.new_zeros(1))
        row_weight = weights.flatten()[order]  # [A]
        dropped = counts.new_zeros(())
        if self.capacity_factor > 0:
            capacity = math.ceil(self.capacity_factor * n_tokens * k / n_experts)
            first_row = (ends - counts)[expert_of_row.long()]  # .long(): a uint8 index would be a mask
            rank_in_expert = torch.arange(order.numel(), device=x.device) - first_row
            kept = rank_in_expert < capacity
            dropped = (~kept).sum()
            row_weight = row_weight * kept

        # Experts run in the autocast dtype (bf16 on GPU) like any Linear would: one cast of x and of
        # each weight, before the gather, so the gathered rows are already narrow.
        dtype = compute_dtype(x)
        token = order // k  # [A] the token of each sorted row
        rows = _Dispatch.apply(x.to(dtype), token, inverse, k)  # [A, h]
        h = weighted_swiglu(grouped_mm(rows, self.gate_up.to(dtype), ends), row_weight)  # [A, ffn]
        y = _Combine.apply(grouped_mm(h, self.down.to(dtype), ends), token, inverse, k)  # [N, h]
        if self.shared is not None:
            y = y + self.shared(x)

        probs = logits.softmax(-1)
        aux = n_experts * (counts.float() / max(n_tokens, 1) * probs.mean(0)).sum()
        z = torch.logsumexp(logits, -1).pow(2).mean()
        return y.reshape(shape), RouterStats(aux, z, counts, dropped)

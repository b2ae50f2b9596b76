"""Top-k mixture of SwiGLU experts, dropless by default (DESIGN §3).

Router (float32): p = softmax(x W_gᵀ); the k largest p_e per token, renormalised to sum to 1.
Expert e: w2_e(silu(w1_e x) ⊙ w3_e x). Tokens are sorted by expert and every expert runs in one
grouped matmul (``mm.ops.grouped_mm``), never a Python loop over experts.

Auxiliary losses, per layer (N tokens, E experts):
    load balance (Switch, as transformers' MiniMax/Mixtral):  E · Σ_e (c_e / N) · P_e,
        c_e = top-k assignments to e, P_e = mean_t p_e(t)   (= k under perfectly even routing)
    router z-loss:  mean_t logsumexp(logits_t)²
With ``capacity_factor`` > 0 each expert takes at most ceil(cf · N · k / E) assignments, in token
order; the rest are dropped (their contribution is zero) and counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mm.layers.swiglu import SwiGLU
from mm.ops.grouped_mm import grouped_mm


@dataclass
class RouterStats:
    aux_loss: torch.Tensor  # load-balance loss (scalar, float32)
    z_loss: torch.Tensor  # router z-loss (scalar, float32)
    tokens_per_expert: torch.Tensor  # [E] assignments routed to each expert (before dropping)
    dropped: torch.Tensor  # assignments dropped by the capacity limit (scalar)


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
        logits = nn.functional.linear(x.float(), self.gate.weight.float())
        probs = logits.softmax(-1)
        weights, ids = probs.topk(self.top_k, dim=-1)
        return logits, weights / weights.sum(-1, keepdim=True), ids

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        """x [..., h] -> (y [..., h], router statistics)."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        n_tokens, k, n_experts = x.shape[0], self.top_k, self.experts
        logits, weights, ids = self.route(x)

        flat_ids = ids.flatten()  # [N·k], assignment a = token a // k
        order = flat_ids.argsort(stable=True)  # assignments grouped by expert, token order inside
        counts = torch.bincount(flat_ids, minlength=n_experts)
        token = order // k
        keep_weight = weights.flatten()[order]
        dropped = counts.new_zeros(())
        if self.capacity_factor > 0:
            capacity = math.ceil(self.capacity_factor * n_tokens * k / n_experts)
            starts = torch.cumsum(counts, 0) - counts
            rank_in_expert = torch.arange(order.numel(), device=x.device) - starts[flat_ids[order]]
            kept = rank_in_expert < capacity
            dropped = (~kept).sum()
            order, token, keep_weight = order[kept], token[kept], keep_weight[kept]
            group_counts = counts.clamp(max=capacity)
        else:
            group_counts = counts
        offsets = torch.cumsum(group_counts, 0)

        # Experts run in the autocast dtype (bf16 on GPU) like any Linear would: the grouped kernel needs it.
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        h = grouped_mm(x[token].to(dtype), self.gate_up.to(dtype), offsets)  # [A, 2·ffn]
        h = nn.functional.silu(h[:, : self.ffn]) * h[:, self.ffn :]
        out = grouped_mm(h, self.down.to(dtype), offsets) * keep_weight[:, None].to(dtype)  # [A, h]
        y = torch.zeros_like(x).index_add_(0, token, out.to(x.dtype))
        if self.shared is not None:
            y = y + self.shared(x)

        probs = logits.softmax(-1)
        aux = n_experts * (counts.float() / max(n_tokens, 1) * probs.mean(0)).sum()
        z = torch.logsumexp(logits, -1).pow(2).mean()
        return y.reshape(shape), RouterStats(aux, z, counts, dropped)

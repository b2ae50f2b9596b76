"""Sequence parallelism for the hybrid LM, applied from outside (DESIGN §10).

Each rank of the sequence-parallel group holds C contiguous tokens of every row (rank r: global
positions r·C .. r·C + C - 1, equal C on every rank). :func:`apply_sequence_parallel` rebinds, on
one unmodified model instance:

- every :class:`LightningAttention` to :func:`mm.distributed.lasp.lasp_attn` (ring or all-gather);
- every :class:`SoftmaxAttention` to attend over K/V all-gathered across the group (the backward
  reduce-scatters their gradients), with the causal mask by global position: query r·C + i sees key
  j iff j <= r·C + i;
- the model's position table, so RoPE rotates by the global positions r·C + i.

Everything else in the model is per token (norms, FFN/MoE, embedding, head) and runs unchanged on
the local chunk. The loss of one rank covers its chunk only: normalise by the token count summed
over the group and sum parameter gradients over the group (:func:`all_reduce_gradients`), as for
data parallelism. Packed documents (``cu_seqlens``) are not supported under sequence parallelism.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch import nn

from mm.distributed.lasp import MODES, lasp_attn
from mm.layers.lightning_attention import LightningAttention
from mm.layers.rotary import rotary_cos_sin
from mm.layers.softmax_attention import SoftmaxAttention

__all__ = ["all_reduce_gradients", "apply_sequence_parallel", "gather_sequence"]

_lasp_attn = torch.compiler.disable(lasp_attn)  # communication and its own autograd: not traced


class _GatherSequence(torch.autograd.Function):
    """All-gather along ``dim`` (rank order); backward: reduce-scatter (sum) of the gradient."""

    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        world = dist.get_world_size(group)
        front = x.movedim(dim, 0).contiguous()  # [C, ...]
        out = front.new_empty(world * front.shape[0], *front.shape[1:])
        dist.all_gather_into_tensor(out, front, group=group)
        return out.movedim(0, dim)

    @staticmethod
    def backward(ctx, grad):
        world = dist.get_world_size(ctx.group)
        front = grad.movedim(ctx.dim, 0).contiguous()  # [P·C, ...]
        out = front.new_empty(front.shape[0] // world, *front.shape[1:])
        dist.reduce_scatter_tensor(out, front, group=ctx.group)
        return out.movedim(0, ctx.dim), None, None


def gather_sequence(x: torch.Tensor, *, dim: int, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate every rank's ``x`` along ``dim`` in rank order (equal sizes); differentiable."""
    return _GatherSequence.apply(x, dim, group)


def _softmax_forward(self: SoftmaxAttention, x, rope, cu_seqlens=None, doc_ids=None, return_kv=False, *, group):
    """SoftmaxAttention.forward over the group's whole sequence: x [B, C, hidden] is this rank's chunk."""
    if cu_seqlens is not None or doc_ids is not None or return_kv:
        raise ValueError("sequence-parallel softmax attention takes unpacked rows without a KV cache "
                         f"(got cu_seqlens={cu_seqlens is not None}, doc_ids={doc_ids is not None}, {return_kv=})")
    q, k, v = self.qkv(x, rope)  # q [B, H, C, d], k, v [B, H_kv, C, d]; rope is global
    kv = gather_sequence(torch.cat([k, v], dim=1), dim=2, group=group)  # one collective: [B, 2·H_kv, P·C, d]
    k, v = kv.split(self.kv_heads, dim=1)
    B, C = x.shape[:2]
    q_pos = dist.get_rank(group) * C + torch.arange(C, device=x.device)
    k_pos = torch.arange(kv.shape[2], device=x.device)
    mask = (k_pos[None, :] <= q_pos[:, None]).expand(B, C, kv.shape[2])  # [B, C, P·C] causal, global
    return self.output(q, k, v, mask)


def _lightning_forward(self: LightningAttention, x, cu_seqlens=None, state=None, return_state=False, *, group, mode):
    """LightningAttention.forward with the state passed between ranks (LASP)."""
    if cu_seqlens is not None:
        raise ValueError("sequence-parallel lightning attention does not take packed documents (cu_seqlens)")
    q, k, v = self._qkv(x)  # [B, C, H, d] each
    o, final = _lasp_attn(q, k, v, self.slopes, group=group, mode=mode, initial_state=state,
                          output_final_state=return_state)
    return self._output(o, x), final


def _global_packing(self, input_ids, cu_seqlens, *, group, packing):
    """LM.packing with RoPE at the global positions r·C + t of this rank's chunk."""
    if cu_seqlens is not None:
        raise ValueError("sequence parallelism does not take packed documents (cu_seqlens)")
    B, C = input_ids.shape
    positions = dist.get_rank(group) * C + torch.arange(C, device=input_ids.device).expand(B, C)
    local = packing(input_ids, None)
    local.rope = rotary_cos_sin(positions, self.cfg.rotary_dim, self.cfg.rope_theta)
    return local


def apply_sequence_parallel(model: nn.Module, *, group: dist.ProcessGroup | None = None, mode: str = "ring"):
    """Make ``model`` (an :class:`mm.models.lm.LM`) run sequence-parallel over ``group``, in place.

    After this, ``model(input_ids_chunk)`` on rank r, with input_ids_chunk = input_ids[:, r·C:(r+1)·C],
    returns the logits of that chunk of the single-process forward; backward gives this rank's share
    of every parameter gradient. ``mode`` picks LASP "ring" or "allgather". Parameters, names and
    the state dict are unchanged. Returns the model.
    """
    if mode not in MODES:
        raise ValueError(f"sequence-parallel mode must be one of {MODES}, got {mode!r}")
    if not hasattr(model, "packing") or not hasattr(model, "cfg"):
        raise ValueError(f"apply_sequence_parallel takes an mm.models.lm.LM, got {type(model).__name__}")
    for module in model.modules():
        if isinstance(module, LightningAttention):
            module.forward = functools.partial(_lightning_forward, module, group=group, mode=mode)
        elif isinstance(module, SoftmaxAttention):
            module.forward = functools.partial(_softmax_forward, module, group=group)
    model.packing = functools.partial(_global_packing, model, group=group, packing=model.packing)
    return model


def all_reduce_gradients(module: nn.Module, *, group: dist.ProcessGroup | None = None) -> None:
    """Sum every parameter gradient over ``group`` (ranks holding all parameters but different tokens)."""
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, group=group)

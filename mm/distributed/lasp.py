"""LASP: sequence parallelism for lightning attention (DESIGN §10).

Rank r of a sequence-parallel group of P ranks holds C_r contiguous tokens of every sequence (rank
order = sequence order). Per head, with decay lambda and the rank's chunk of queries/keys/values,
the op splits exactly into a part that needs no other rank and a part that needs one [B, H, d, e]
state (DESIGN §2, blocked form with the whole chunk as one block):

    o      = intra(Q, K, V)  +  (Q ⊙ lambda^(i+1)) S_r               (S_r: state entering the chunk)
    M_r    = Σ_j lambda^(C_r-1-j) k_jᵀ v_j                           (chunk-local state)
    S_r+1  = lambda^(C_r) S_r + M_r                                  (state leaving the chunk)

`intra` is the lightning op itself started from a zero state (any backend); it and M_r are computed
while the state is still in flight. Two ways to get S_r (``mode``):

- "ring" (LASP): receive S_r from rank r-1, send S_r+1 to rank r+1. Backward runs the other way:
  receive dL/dS_r+1 from r+1, send dL/dS_r = lambda^(C_r) dL/dS_r+1 + (Q ⊙ lambda^(i+1))ᵀ dO to r-1.
  P-1 sequential hops; one state per hop and direction.
- "allgather" (LASP-2): every rank publishes M_r (rank 0: lambda^(C_0) S_0 + M_0, which carries the
  initial state) and all-gathers them with its lambda^(C_r); rank r combines
  S_r = Σ_{j<r} (Π_{j<m<r} lambda^(C_m)) M_j, which is Σ_{j<r} lambda^(C·(r-1-j)) M_j for equal chunks
  (the decay weights the public LASP-2 code lacks). Backward all-gathers G_r = dL/dS_r and rank j
  sums dL/dM_j = Σ_{r>j} (Π_{j<m<r} lambda^(C_m)) G_r locally. Two collectives, no chain.

Chunks may differ in length (even be empty). ``initial_state`` is read on group rank 0 only (the
others get a zero gradient for it, so summing gradients over the group, as for any replicated
parameter, gives the single-process gradient). The returned final state is the state after this
rank's chunk: on the last rank, that of the whole sequence. Packed documents (``cu_seqlens``) are
not supported under sequence parallelism.

The group may be any subgroup (not necessarily contiguous global ranks): peers are addressed by
group rank. Tensors stay on the caller's device, so the same code runs on gloo (CPU) and NCCL (GPU).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from mm.ops.lightning_attn import lightning_attn

MODES = ("ring", "allgather")

__all__ = ["MODES", "lasp_attn"]


def _state_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _decay(slopes: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """lambda^steps = exp(-s · steps): steps [C] -> [C, H]."""
    return torch.exp(-slopes[None, :] * steps[:, None])


def _chunk_state(k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
    """M = Σ_j lambda^(C-1-j) k_jᵀ v_j: k [B, C, H, d], v [B, C, H, e] -> [B, H, d, e] in slopes' dtype."""
    C = k.shape[1]
    steps = torch.arange(C - 1, -1, -1, device=k.device, dtype=slopes.dtype)
    with torch.autocast(k.device.type, enabled=False):  # the state stays float32 under bf16 autocast
        return torch.einsum("bchd,ch,bche->bhde", k.to(slopes.dtype), _decay(slopes, steps), v.to(slopes.dtype))


def _inter(q: torch.Tensor, state: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
    """(Q ⊙ lambda^(i+1)) S: q [B, C, H, d], state [B, H, d, e] -> [B, C, H, e] in the state's dtype."""
    C = q.shape[1]
    steps = torch.arange(1, C + 1, device=q.device, dtype=slopes.dtype)
    with torch.autocast(q.device.type, enabled=False):
        return torch.einsum("bchd,ch,bhde->bche", q.to(state.dtype), _decay(slopes, steps), state)


def _local_grads(o_loc: torch.Tensor, leaves: tuple, grad_o: torch.Tensor) -> tuple:
    """Gradients of the chunk-local output; zeros for an empty chunk (the op returns a constant)."""
    if not o_loc.requires_grad:
        return tuple(torch.zeros_like(t) for t in leaves)
    return torch.autograd.grad(o_loc, leaves, grad_o)


class _Lasp(torch.autograd.Function):
    """Forward and backward of one chunk with the state exchange between them (see the module doc).

    The local part is differentiated by autograd: forward records it on leaf copies of q, k, v and
    the entering state; backward runs the intra gradient while the state gradient is in flight, then
    the state-dependent part. Works with every backend of the op (its own autograd inside)."""

    @staticmethod
    def forward(ctx, q, k, v, slopes, initial_state, group, mode, backend):
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        B, C, H, _ = q.shape
        sdt = _state_dtype(q)
        s = slopes.to(device=q.device, dtype=sdt)
        chunk_decay = torch.exp(-s * C)[None, :, None, None]  # lambda^(C_r) [1, H, 1, 1]
        state_shape = (B, H, q.shape[-1], v.shape[-1])
        ctx.group, ctx.mode, ctx.rank, ctx.world = group, mode, rank, world
        ctx.has_initial = initial_state is not None
        with torch.enable_grad():
            q_, k_, v_ = (t.detach().requires_grad_() for t in (q, k, v))
            state = None
            if rank == 0:
                state = torch.zeros(state_shape, device=q.device, dtype=sdt) if initial_state is None \
                    else initial_state.detach().to(sdt)
                state.requires_grad_()
            if mode == "ring" and rank > 0:
                buf = torch.empty(state_shape, device=q.device, dtype=sdt)
                work = dist.irecv(buf, group=group, group_src=rank - 1)
            local = _chunk_state(k_, v_, s)  # M_r
            if mode == "allgather":
                published = local + chunk_decay * state if rank == 0 else local
                packed = torch.cat([published.detach().flatten(), chunk_decay.flatten()])
                gathered = torch.empty(world * packed.numel(), device=q.device, dtype=sdt)
                work = dist.all_gather_into_tensor(gathered, packed, group=group, async_op=True)
                ctx.published = published
            o_loc, _ = lightning_attn(q_, k_, v_, slopes, backend=backend)  # overlaps the exchange
            if mode == "ring" and rank > 0:
                work.wait()
                state = buf.requires_grad_()
            if mode == "allgather":
                work.wait()
                gathered = gathered.view(world, -1)
                ctx.decays = gathered[:, -H:].view(world, 1, H, 1, 1)
                if rank > 0:
                    states = gathered[:, :-H].view(world, *state_shape)
                    state = states[0]
                    for j in range(1, rank):  # S_j+1 = lambda^(C_j) S_j + M_j
                        state = ctx.decays[j] * state + states[j]
                    state = state.clone().requires_grad_()
            o_inter = _inter(q_, state, s)
            final = chunk_decay * state + local
        if mode == "ring" and rank < world - 1:
            dist.send(final.detach(), group=group, group_dst=rank + 1)
        ctx.leaves = (q_, k_, v_, state)
        ctx.o_loc, ctx.o_inter, ctx.final = o_loc, o_inter, final
        o = (o_loc.to(sdt) + o_inter.detach()).to(q.dtype)
        return o, final.detach()

    @staticmethod
    def backward(ctx, grad_o, grad_final):
        group, rank, world = ctx.group, ctx.rank, ctx.world
        q_, k_, v_, state = ctx.leaves
        sdt = state.dtype
        grad_o_inter = grad_o.to(sdt)
        if ctx.mode == "ring":
            if rank < world - 1:
                buf = torch.empty_like(grad_final)
                work = dist.irecv(buf, group=group, group_src=rank + 1)
            grads = _local_grads(ctx.o_loc, (q_, k_, v_), grad_o)  # overlaps the receive
            if rank < world - 1:
                work.wait()
                grad_final = grad_final + buf
            extra = torch.autograd.grad((ctx.o_inter, ctx.final), (q_, k_, v_, state), (grad_o_inter, grad_final),
                                        allow_unused=True)
            if rank > 0:
                dist.send(extra[3].contiguous(), group=group, group_dst=rank - 1)
        else:
            (g_state,) = torch.autograd.grad((ctx.o_inter, ctx.final), state, (grad_o_inter, grad_final),
                                             retain_graph=True)
            gathered = torch.empty(world * g_state.numel(), device=g_state.device, dtype=sdt)
            work = dist.all_gather_into_tensor(gathered, g_state.flatten(), group=group, async_op=True)
            grads = _local_grads(ctx.o_loc, (q_, k_, v_), grad_o)  # overlaps the gather
            work.wait()
            grad_published = torch.zeros_like(g_state)
            gathered = gathered.view(world, *g_state.shape)  # G_0 .. G_P-1
            for m in range(world - 1, rank, -1):  # dL/dM_j = G_j+1 + lambda^(C_j+1) dL/dM_j+1
                grad_published = gathered[m] + ctx.decays[m] * grad_published
            extra = torch.autograd.grad((ctx.o_inter, ctx.final, ctx.published), (q_, k_, v_, state),
                                        (grad_o_inter, grad_final, grad_published), allow_unused=True)
        dq, dk, dv = (g if e is None else g + e.to(g.dtype) for g, e in zip(grads, extra[:3], strict=True))
        d_initial = None
        if ctx.has_initial:
            d_initial = extra[3] if rank == 0 else torch.zeros_like(extra[3])
        del ctx.leaves, ctx.o_loc, ctx.o_inter, ctx.final
        return dq, dk, dv, None, d_initial, None, None, None


def lasp_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slopes: torch.Tensor,
    *,
    group: dist.ProcessGroup | None = None,
    mode: str = "ring",
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Lightning attention over a sequence split across the ranks of ``group`` (default: the world).

    Args:
        q, k: `[B, C_r, H, d]`, v: `[B, C_r, H, e]`: this rank's contiguous chunk (rank order is sequence
            order; chunk lengths may differ between ranks); slopes `[H]`.
        group: the sequence-parallel process group; mode: "ring" (LASP) or "allgather" (LASP-2).
        initial_state: `[B, H, d, e]` state of the whole sequence, read on group rank 0 only.
        output_final_state: also return the state after this rank's chunk (float32; float64 for
            float64 inputs); on the last rank it is the final state of the whole sequence.
        backend: the lightning op's backend for the chunk-local part (see `lightning_attn`).
    Returns:
        `(o [B, C_r, H, e] in q's dtype, state or None)`; equal to the single-process op on the
        concatenated sequence, outputs and gradients.
    """
    if mode not in MODES:
        raise ValueError(f"LASP mode must be one of {MODES}, got {mode!r}")
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k must be [B, C, H, d] and v [B, C, H, e], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    B, _, H, d = q.shape
    if initial_state is not None and initial_state.shape != (B, H, d, v.shape[-1]):
        raise ValueError(f"initial_state must be [B, H, d, e] = {[B, H, d, v.shape[-1]]}, "
                         f"got {tuple(initial_state.shape)}")
    if slopes.shape != (H,):
        raise ValueError(f"slopes must be [H] = [{H}], got {tuple(slopes.shape)}")
    o, final = _Lasp.apply(q, k, v, slopes, initial_state, group, mode, backend)
    return o, (final if output_final_state else None)

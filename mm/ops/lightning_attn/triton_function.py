"""Custom ops joining the Triton passes (tier 2): forward, and a backward of three passes.

Forward: segment start states (local states + scan, only when a sequence is split), then the
output pass. The segment start states (float32, one [d, e] per segment and head: a few MB even at
1M tokens) are kept for backward, so the dq pass needs no state pass of its own.
Backward (see triton_kernels for the role table):
  dq = pass(do, v, k)            forward order, start states = forward's, transposed
  adjoint start states           local states of q^T do + reverse scan from dL/dS_T
  dv = pass(k, q, do)            reverse, SHIFT 1; its end state is dL/dS_0
  dk = pass(v, do, q)            reverse, SHIFT 1, adjoint start states transposed
No T x T matrix and no per-block state is ever stored. Both are `torch.library` custom ops
(`mm::lightning_attn_fwd`, `mm::lightning_attn_bwd`) joined by `register_autograd`, with fake
implementations, so `torch.compile` traces through a lightning layer instead of breaking the graph.
"""

from __future__ import annotations

import torch

from .segments import build_segments
from .triton_launch import run_output, segment_states, transposed


def _forward(q, k, v, slopes, h0, segs, output_final_state):
    s_in, s_strides = segment_states(k, v, slopes, segs, init=h0, reverse=False, shift=0)
    N, (_, H, d), e = segs.num_seqs, q.shape, v.shape[-1]
    ht = torch.empty(N, H, d, e, device=q.device, dtype=torch.float32) if output_final_state else None
    o = run_output(q, k, v, slopes, segs, s_in=s_in, s_in_strides=s_strides, s_out=ht, reverse=False, shift=0)
    return o, ht, s_in, s_strides


def _backward(q, k, v, do, dht, slopes, segs, s_in, s_strides, need_dh0):
    dq = run_output(do, v, k, slopes, segs, s_in=s_in, s_in_strides=transposed(s_strides), s_out=None,
                    reverse=False, shift=0)
    r_in, r_strides = segment_states(q, do, slopes, segs, init=dht, reverse=True, shift=1)
    N, (_, H, d), e = segs.num_seqs, q.shape, v.shape[-1]
    dh0 = torch.empty(N, H, d, e, device=q.device, dtype=torch.float32) if need_dh0 else None
    dv = run_output(k, q, do, slopes, segs, s_in=r_in, s_in_strides=r_strides, s_out=dh0,
                    reverse=True, shift=1)
    dk = run_output(v, do, q, slopes, segs, s_in=r_in, s_in_strides=transposed(r_strides), s_out=None,
                    reverse=True, shift=1)
    return dq, dk, dv, dh0


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(x.shape[0] * x.shape[1], x.shape[2], x.shape[3])


def _segments(q: torch.Tensor, e: int, cu_seqlens: torch.Tensor | None, segment_len: int | None):
    B, T, H, _ = q.shape
    return build_segments(batch=B, seq_len=T, cu_seqlens=cu_seqlens, num_heads=H, head_dim_v=e, device=q.device,
                          segment_len=segment_len)


@torch.library.custom_op("mm::lightning_attn_fwd", mutates_args=())
def lightning_attn_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor, initial_state: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None, output_final_state: bool, segment_len: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(o [B, T, H, e], final state [N, H, d, e] or [0], segment start states [S, H, d, e] float32).

    The start states are kept for the backward; S = 0 when no sequence is split (the backward then
    starts from `initial_state` itself). A custom op, so torch.compile keeps the calling layer in
    one graph and runs the kernels as an opaque call (its fake below gives the output shapes).
    """
    B, T, H, d = q.shape
    e = v.shape[-1]
    segs = _segments(q, e, cu_seqlens, segment_len)
    h0 = None if initial_state is None else initial_state.contiguous()
    o, ht, s_in, _ = _forward(_flat(q), _flat(k), _flat(v), slopes, h0, segs, output_final_state)
    if ht is None:
        ht = q.new_empty(0, dtype=torch.float32)
    return o.view(B, T, H, e), ht, (s_in if segs.split else q.new_empty(0, H, d, e, dtype=torch.float32))


@lightning_attn_fwd.register_fake
def _(q, k, v, slopes, initial_state, cu_seqlens, output_final_state, segment_len):
    B, T, H, d = q.shape
    e = v.shape[-1]
    n = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    ht = q.new_empty((n, H, d, e) if output_final_state else (0,), dtype=torch.float32)
    segments = torch.library.get_ctx().new_dynamic_size()  # known only from the host-side split
    return q.new_empty(B, T, H, e), ht, q.new_empty(segments, H, d, e, dtype=torch.float32)


@torch.library.custom_op("mm::lightning_attn_bwd", mutates_args=())
def lightning_attn_bwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, dht: torch.Tensor | None,
    slopes: torch.Tensor, initial_state: torch.Tensor | None, s_in: torch.Tensor, cu_seqlens: torch.Tensor | None,
    segment_len: int | None, need_dh0: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dL/dS_0 or [0]) of `lightning_attn_fwd`, from its saved segment start states."""
    B, T, H, d = q.shape
    e = v.shape[-1]
    segs = _segments(q, e, cu_seqlens, segment_len)
    states = s_in if segs.split else (None if initial_state is None else initial_state.contiguous())
    dht = None if dht is None else dht.float().contiguous()
    dq, dk, dv, dh0 = _backward(_flat(q), _flat(k), _flat(v), _flat(do.to(q.dtype)), dht, slopes, segs, states,
                                None if states is None else states.stride(), need_dh0)
    return (dq.view(B, T, H, d), dk.view(B, T, H, d), dv.view(B, T, H, e),
            dh0 if dh0 is not None else q.new_empty(0, dtype=torch.float32))


@lightning_attn_bwd.register_fake
def _(q, k, v, do, dht, slopes, initial_state, s_in, cu_seqlens, segment_len, need_dh0):
    dh0 = torch.empty_like(initial_state, dtype=torch.float32) if need_dh0 else q.new_empty(0, dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dh0


def _setup_context(ctx, inputs, output):
    q, k, v, slopes, initial_state, cu_seqlens, _, segment_len = inputs
    ctx.save_for_backward(q, k, v, slopes, initial_state, cu_seqlens, output[2])
    ctx.segment_len = segment_len


def _backward_op(ctx, do, dht, _ds_in):
    q, k, v, slopes, initial_state, cu_seqlens, s_in = ctx.saved_tensors
    if do is None:
        do = torch.zeros(*q.shape[:3], v.shape[-1], device=q.device, dtype=q.dtype)
    if dht is not None and dht.numel() == 0:
        dht = None
    need_dh0 = ctx.needs_input_grad[4]
    dq, dk, dv, dh0 = lightning_attn_bwd(q, k, v, do, dht, slopes, initial_state, s_in, cu_seqlens, ctx.segment_len,
                                         need_dh0)
    return dq, dk, dv, None, (dh0 if need_dh0 else None), None, None, None


lightning_attn_fwd.register_autograd(_backward_op, setup_context=_setup_context)


def lightning_attn_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slopes: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    segment_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Triton lightning attention on checked inputs (shapes as in `lightning_attn`).

    `segment_len` (tokens per parallel segment) is chosen from the device when None; tests set it
    small to exercise the split path.
    """
    slopes = slopes.to(device=q.device, dtype=torch.float32).contiguous()
    h0 = None if initial_state is None else initial_state.float()
    o, ht, _ = lightning_attn_fwd(q, k, v, slopes, h0, cu_seqlens, output_final_state, segment_len)
    return o, (ht if output_final_state else None)

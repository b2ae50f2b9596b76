"""Autograd Function joining the Triton passes (tier 2): forward, and a backward of three passes.

Forward: segment start states (local states + scan, only when a sequence is split), then the
output pass. The segment start states (float32, one [d, e] per segment and head: a few MB even at
1M tokens) are kept for backward, so the dq pass needs no state pass of its own.
Backward (see triton_kernels for the role table):
  dq = pass(do, v, k)            forward order, start states = forward's, transposed
  adjoint start states           local states of q^T do + reverse scan from dL/dS_T
  dv = pass(k, q, do)            reverse, SHIFT 1; its end state is dL/dS_0
  dk = pass(v, do, q)            reverse, SHIFT 1, adjoint start states transposed
No T x T matrix and no per-block state is ever stored.
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


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, T, H, D] -> [B·T, H, D] without a copy where the strides allow (views of a fused qkv
    projection do); the kernels take token and head strides but need D dense."""
    x = x.flatten(0, 1)
    return x if x.stride(-1) == 1 else x.contiguous()


class LightningAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, slopes, initial_state, cu_seqlens, output_final_state, segment_len):
        B, T, H, d = q.shape
        e = v.shape[-1]
        segs = build_segments(batch=B, seq_len=T, cu_seqlens=cu_seqlens, num_heads=H, head_dim_v=e,
                              device=q.device, segment_len=segment_len)
        qf, kf, vf = (_tokens(x) for x in (q, k, v))
        h0 = None if initial_state is None else initial_state.contiguous()
        o, ht, s_in, s_strides = _forward(qf, kf, vf, slopes, h0, segs, output_final_state)
        ctx.save_for_backward(qf, kf, vf, slopes, s_in)
        ctx.segs, ctx.s_strides, ctx.shape = segs, s_strides, (B, T, H, d, e)
        return o.view(B, T, H, e), ht

    @staticmethod
    def backward(ctx, do, dht):
        qf, kf, vf, slopes, s_in = ctx.saved_tensors
        B, T, H, d, e = ctx.shape
        if do is None:
            do = torch.zeros(B, T, H, e, device=qf.device, dtype=qf.dtype)
        dof = do.to(qf.dtype).contiguous().view(B * T, H, e)
        dht = None if dht is None else dht.float().contiguous()
        dq, dk, dv, dh0 = _backward(qf, kf, vf, dof, dht, slopes, ctx.segs, s_in, ctx.s_strides,
                                    need_dh0=ctx.needs_input_grad[4])
        return (dq.view(B, T, H, d), dk.view(B, T, H, d), dv.view(B, T, H, e), None, dh0, None, None, None)


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
    return LightningAttnFunction.apply(q, k, v, slopes, h0, cu_seqlens, output_final_state, segment_len)

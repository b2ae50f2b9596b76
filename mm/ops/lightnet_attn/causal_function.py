"""Launches and the autograd Function of causal LightNet attention on Triton (causal_kernels).

Forward: one pass writes o and z = logcumsumexp(k) (float32 `[T, H, d]`, saved for the backward).
Backward: dq (float32) in a forward pass, then dk, dv in a reverse pass that reads dq: the gradient
reaches the raw keys in the kernels (no torch logcumsumexp, no per-token torch pass).
Sequences are cut into segments (mm.ops.lightning_attn.segments) when (sequence, head) pairs alone
would leave the GPU idle; split sequences add, forward, the non-causal softmax partials per segment
(reduce_kernel) and a scan for each segment's start state and z; backward, a reverse-partial pass
and a reverse scan (the forward's start states are saved). A varlen pack costs no host sync beyond
`host_bounds` (cached per cu_seqlens tensor, read by the caller's argument check).
Token tensors are `[N_tok, H, D]` with any token and head strides but D dense.
Supported: head dims d, e ≤ CAUSAL_TRITON_MAX_DIM (128); float32/bfloat16/float16 inputs; output in q's dtype.
"""

from __future__ import annotations

import functools

import torch
import triton

from mm.ops.lightning_attn.segments import Segments, build_segments
from mm.ops.lightning_attn.triton_launch import _Tuned, padded
from mm.ops.triton_interpreter import INTERPRET

from . import CAUSAL_TRITON_MAX_DIM
from .causal_kernels import (
    causal_dkv_kernel,
    causal_dq_kernel,
    causal_fwd_kernel,
    causal_rev_local_kernel,
    causal_rev_scan_kernel,
    causal_scan_kernel,
)
from .triton_function import _prec, _reduce, _token_head, _tokens, _upcast

# Chunk length: 16 tokens (tl.dot's minimum) everywhere. The intra-chunk weights are a
# [BLOCK, BLOCK, BD] float32 tile in registers; compiled offline for sm_90 (ptxas resource usage),
# BLOCK = 32 spilled at d = 32 already, and at d = e = 64 in bf16 only 8 warps kept every kernel
# free of spills (4 warps spilled 344-520 bytes in the forward and dk/dv kernels).
BLOCK = 16
_KEY = ["D", "E", "HAS_SIN", "PREC"]


def fwd_configs(be: int) -> list[triton.Config]:
    """Autotune space of the forward on GPU: value tile, warps, stages."""
    shapes = [(128, 8, 2), (64, 8, 2), (128, 8, 1), (64, 4, 2)]
    keep = {(min(v, be), w, s) for v, w, s in shapes}
    return [triton.Config({"BV": v}, num_warps=w, num_stages=s) for v, w, s in sorted(keep)]


def bwd_configs() -> list[triton.Config]:
    return [triton.Config({}, num_warps=w, num_stages=s) for w, s in [(8, 2), (8, 1), (4, 2)]]


@functools.cache
def _tuned(kind: str, be: int) -> _Tuned:
    if kind == "fwd":
        return _Tuned(causal_fwd_kernel, fwd_configs(be), _KEY)
    return _Tuned(causal_dq_kernel if kind == "dq" else causal_dkv_kernel, bwd_configs(), _KEY)


def _meta(x: torch.Tensor) -> dict:
    return {"PREC": _prec(x), "UPCAST": _upcast(x)}


def _scan_block(n: int) -> int:
    return 1024 if n >= 1024 else padded(n)


def _start_states(kf, vf, segs: Segments):
    """Each segment's forward start state S_in `[S, H, d, e]` and z_in `[S, H, d]` (float32)."""
    _, H, d = kf.shape
    e = vf.shape[-1]
    m, lsum, acc = _reduce(kf, vf, segs, softmax=True)
    s_in = torch.empty_like(acc)
    z_in = torch.empty_like(m)
    block = _scan_block(d * e)
    causal_scan_kernel[(triton.cdiv(d * e, block), H, segs.num_seqs)](
        m, lsum, acc, s_in, z_in, segs.seq_segs, D=d, E=e, BLOCK_E=block, num_warps=4)
    return s_in, z_in


def _reverse_states(qf, dof, z, dq, z_in, segs: Segments):
    """Each segment's reverse start states dS `[S, H, d, e]` and ρ `[S, H, d]` (float32), normalised at
    the segment's last z."""
    _, H, d = qf.shape
    e = dof.shape[-1]
    S = segs.num_segments
    r = torch.empty(S, H, d, e, device=qf.device, dtype=torch.float32)
    rho = torch.empty(S, H, d, device=qf.device, dtype=torch.float32)
    causal_rev_local_kernel[(H, S)](
        qf, dof, z, dq, z_in, r, rho, segs.table, *_token_head(qf), *_token_head(dof),
        D=d, E=e, BD=padded(d), BE=padded(e), **_meta(qf), BLOCK=BLOCK, num_warps=8)
    z_end = z[(segs.table[:, 2] - 1).clamp_min(0)]  # [S, H, d]: z at each segment's last token
    g = z_in - z_end  # ≤ 0; -inf for a sequence's first segment
    outs = []
    for local, w in ((r, e), (rho, 1)):
        out = torch.empty_like(local)
        block = _scan_block(d * w)
        causal_rev_scan_kernel[(triton.cdiv(d * w, block), H, segs.num_seqs)](
            local, g, out, segs.seq_segs, D=d, W=w, BLOCK_E=block, num_warps=4)
        outs.append(out)
    return outs


class LightNetCausalFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, segs: Segments):
        B, T, H, d = q.shape
        e = v.shape[-1]
        qf, kf, vf = (_tokens(x) for x in (q, k, v))
        o = torch.empty(B * T, H, e, device=q.device, dtype=q.dtype)
        z = torch.empty(B * T, H, d, device=q.device, dtype=torch.float32)
        s_in, z_in = _start_states(kf, vf, segs) if segs.split else (z, z)  # unread placeholders when unsplit
        bd, be = padded(d), padded(e)
        fixed = {"BV": be, "num_warps": 4} if INTERPRET else {}
        _tuned("fwd", be).launch(
            lambda meta: (triton.cdiv(e, meta["BV"]), H, segs.num_segments), qf, kf, vf, o, z, s_in, z_in, segs.table,
            *_token_head(qf), *_token_head(kf), *_token_head(vf), D=d, E=e, BD=bd, HAS_SIN=segs.split,
            **_meta(qf), BLOCK=BLOCK, **fixed)
        ctx.save_for_backward(qf, kf, vf, z, s_in, z_in)
        ctx.segs, ctx.shape = segs, (B, T, H, d, e)
        return o.view(B, T, H, e)

    @staticmethod
    def backward(ctx, do):
        qf, kf, vf, z, s_in, z_in = ctx.saved_tensors
        segs = ctx.segs
        B, T, H, d, e = ctx.shape
        dof = _tokens(do.to(qf.dtype).reshape(B, T, H, e))
        bd, be = padded(d), padded(e)
        fixed = {"num_warps": 4} if INTERPRET else {}
        grid = (H, segs.num_segments)
        dq = torch.empty(B * T, H, d, device=qf.device, dtype=torch.float32)
        _tuned("dq", be).launch(
            grid, kf, vf, dof, z, dq, s_in, z_in, segs.table, *_token_head(kf), *_token_head(vf), *_token_head(dof),
            D=d, E=e, BD=bd, BE=be, HAS_SIN=segs.split, **_meta(qf), BLOCK=BLOCK, **fixed)
        ds_in, rho_in = _reverse_states(qf, dof, z, dq, z_in, segs) if segs.split else (z, z)
        dk = torch.empty(B * T, H, d, device=qf.device, dtype=qf.dtype)
        dv = torch.empty(B * T, H, e, device=qf.device, dtype=qf.dtype)
        _tuned("dkv", be).launch(
            grid, qf, kf, vf, dof, z, dq, dk, dv, ds_in, rho_in, segs.table,
            *_token_head(qf), *_token_head(kf), *_token_head(vf), *_token_head(dof),
            D=d, E=e, BD=bd, BE=be, HAS_SIN=segs.split, **_meta(qf), BLOCK=BLOCK, **fixed)
        return dq.to(qf.dtype).view(B, T, H, d), dk.view(B, T, H, d), dv.view(B, T, H, e), None


def lightnet_causal_triton(q, k, v, *, cu_seqlens=None, segment_len: int | None = None) -> torch.Tensor:
    """Causal LightNet attention on checked inputs (the public wrapper checks shapes and cu_seqlens);
    `segment_len` set small in tests (the split path), else chosen to fill the GPU."""
    d, e = q.shape[-1], v.shape[-1]
    if max(d, e) > CAUSAL_TRITON_MAX_DIM:
        raise ValueError(f"the causal triton backend takes head dims up to {CAUSAL_TRITON_MAX_DIM}, got d={d}, e={e}")
    B, T, H = q.shape[:3]
    if B * T == 0:
        return v.new_zeros(v.shape)
    segs = build_segments(batch=B, seq_len=T, cu_seqlens=cu_seqlens, num_heads=H, head_dim_v=0, device=q.device,
                          segment_len=segment_len)
    return LightNetCausalFunction.apply(q, k, v, segs)

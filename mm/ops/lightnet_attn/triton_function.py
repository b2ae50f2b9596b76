"""Launches and the autograd Function of non-causal LightNet attention on Triton (tiers 1 and 2).

Forward:  softmax partials per segment (reduce_kernel: max m, sum l, acc = Σ exp(k - m)ᵀ v) →
          combined per sequence in torch when a sequence was split → o = q diag(1/l) acc (apply_kernel).
Backward: dS partials Σ q_tᵀ do_t per segment (reduce_kernel, plain) → summed per split sequence →
          dq, dk, dv in one token pass (grad_kernel, which also forms S and c = Σ_j dS ⊙ S).
Saved for backward: q, k, v (the caller's views, not copies) and per sequence acc, m, l (float32,
[N, H, d, e] and [N, H, d]): no per-token intermediate. Token tensors are `[N_tok, H, D]` with any
token and head strides but D dense. Segments come from `mm.ops.lightning_attn.segments`.
"""

from __future__ import annotations

import functools
import math

import torch
import triton

from mm.ops.host_bounds import host_bounds
from mm.ops.lightning_attn.segments import ALIGN, Segments, build_segments
from mm.ops.lightning_attn.triton_launch import padded
from mm.ops.triton_interpreter import INTERPRET

from . import TRITON_MAX_DIM
from .triton_kernels import apply_kernel, grad_kernel, reduce_kernel

BLOCK = 16 if INTERPRET else 64  # tokens per step; one fixed config (the passes are memory-bound)


def _token_head(x: torch.Tensor) -> tuple[int, int]:
    if x.stride(-1) != 1:
        raise ValueError(f"lightnet attention needs unit stride along the head dimension, got strides {x.stride()}")
    return x.stride(0), x.stride(1)


def _prec(x: torch.Tensor) -> str:
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _upcast(x: torch.Tensor) -> bool:
    return INTERPRET and x.dtype == torch.bfloat16


@functools.lru_cache(maxsize=8)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def choose_segment_len(max_len: int, num_seqs: int, num_heads: int, device: torch.device) -> int:
    """Segment length giving at least ~8 programs per multiprocessor over (segment, head).

    Splitting costs one [d, e] float32 partial per segment (a 1024-token segment of d = e = 64 in
    bf16 reads 256 KiB of k and v and writes 16 KiB), so it is cheap; a long sequence left whole
    would leave most multiprocessors idle (16 sequences × 12 heads on 132 of them).
    """
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 4
    pieces = max(1, math.ceil(8 * sms / max(1, num_seqs * num_heads)))
    length = math.ceil(max(max_len, 1) / pieces)
    return max(ALIGN, math.ceil(length / ALIGN) * ALIGN)


def _segments(B, T, H, cu_seqlens, device, segment_len) -> Segments:
    if segment_len is None:
        if cu_seqlens is None:
            max_len, n = T, B
        else:
            bounds = host_bounds(cu_seqlens)
            max_len = max(b - a for a, b in zip(bounds, bounds[1:], strict=False))
            n = len(bounds) - 1
        segment_len = choose_segment_len(max_len, n, H, device)
    return build_segments(batch=B, seq_len=T, cu_seqlens=cu_seqlens, num_heads=H, head_dim_v=0,
                          device=device, segment_len=segment_len)


def _reduce(a, c, segs: Segments, softmax: bool):
    """Per-segment partials: (m, l, acc) with SOFTMAX, else (None, None, acc); float32."""
    _, H, DA = a.shape
    DC = c.shape[-1]
    S = segs.num_segments
    acc = torch.empty(S, H, DA, DC, device=a.device, dtype=torch.float32)
    m = torch.empty(S, H, DA, device=a.device, dtype=torch.float32) if softmax else acc
    lsum = torch.empty(S, H, DA, device=a.device, dtype=torch.float32) if softmax else acc
    bv = padded(DC) if INTERPRET else min(padded(DC), 128)
    grid = (triton.cdiv(DC, bv), H, S)
    reduce_kernel[grid](a, c, m, lsum, acc, segs.table, *_token_head(a), *_token_head(c),
                        DA=DA, DC=DC, BDA=padded(DA), BV=bv, SOFTMAX=softmax, PREC=_prec(c),
                        UPCAST=_upcast(c), BLOCK=BLOCK, num_warps=4)
    return (m, lsum, acc) if softmax else (None, None, acc)


def _combine_softmax(m, lsum, acc, segs: Segments):
    """Per-sequence (m, l, acc) from segment partials, each rescaled to the sequence's max.

    acc stays unnormalised (the kernels divide by l), so a sequence in one segment needs no pass here.
    """
    if not segs.split:
        return m, lsum, acc
    seq = segs.table[:, 0]
    N, (_, H, D) = segs.num_seqs, m.shape
    m_seq = torch.full((N, H, D), float("-inf"), device=m.device).scatter_reduce_(
        0, seq[:, None, None].expand_as(m), m, "amax")
    w = torch.where(torch.isfinite(m), torch.exp(m - m_seq[seq]), 0.0)  # [S, H, D]; empty segments: 0
    l_seq = torch.zeros(N, H, D, device=m.device).index_add_(0, seq, lsum * w)
    acc_seq = torch.zeros(N, H, D, acc.shape[-1], device=m.device).index_add_(0, seq, acc * w[..., None])
    return m_seq, l_seq, acc_seq


def _combine_sum(acc, segs: Segments):
    if not segs.split:
        return acc
    N, (_, H, D, E) = segs.num_seqs, acc.shape
    return torch.zeros(N, H, D, E, device=acc.device).index_add_(0, segs.table[:, 0], acc)


def _apply(a, mat, lsum, segs: Segments, out_dtype):
    """out_t = a_t diag(1 / l) mat[seq(t)]; a `[N_tok, H, DA]`, mat `[N, H, DA, DC]` (any strides) and
    lsum `[N, H, DA]` (contiguous), float32."""
    _, H, DA = a.shape
    DC = mat.shape[-1]
    out = torch.empty(a.shape[0], H, DC, device=a.device, dtype=out_dtype)
    bv = padded(DC) if INTERPRET else min(padded(DC), 128)
    grid = (triton.cdiv(DC, bv), H, segs.num_segments)
    apply_kernel[grid](a, mat, lsum, out, segs.table, *_token_head(a), *_token_head(out), *mat.stride(),
                       DA=DA, DC=DC, BDA=padded(DA), BV=bv, PREC=_prec(a), UPCAST=_upcast(a),
                       BLOCK=BLOCK, num_warps=4)
    return out


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, T, H, D] -> [B·T, H, D], a view where the strides allow (D must be dense)."""
    x = x.flatten(0, 1)
    return x if x.stride(-1) == 1 else x.contiguous()


class LightNetNonCausalFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, segment_len):
        B, T, H, d = q.shape
        e = v.shape[-1]
        segs = _segments(B, T, H, cu_seqlens, q.device, segment_len)
        qf, kf, vf = (_tokens(x) for x in (q, k, v))
        m_seq, l_seq, acc_seq = _combine_softmax(*_reduce(kf, vf, segs, softmax=True), segs)
        o = _apply(qf, acc_seq, l_seq, segs, q.dtype)
        ctx.save_for_backward(qf, kf, vf, acc_seq, m_seq, l_seq)
        ctx.segs, ctx.shape = segs, (B, T, H, d, e)
        return o.view(B, T, H, e)

    @staticmethod
    def backward(ctx, do):
        qf, kf, vf, acc_seq, m_seq, l_seq = ctx.saved_tensors
        B, T, H, d, e = ctx.shape
        segs = ctx.segs
        dof = do.to(qf.dtype).reshape(B * T, H, e)
        dof = dof if dof.stride(-1) == 1 else dof.contiguous()
        ds = _combine_sum(_reduce(qf, dof, segs, softmax=False)[2], segs)
        dq = torch.empty(B * T, H, d, device=qf.device, dtype=qf.dtype)
        dk, dv = torch.empty_like(dq), torch.empty(B * T, H, e, device=qf.device, dtype=qf.dtype)
        grad_kernel[(H, segs.num_segments)](
            kf, vf, dof, dq, dk, dv, acc_seq, ds, m_seq, l_seq,
            segs.table, *_token_head(kf), *_token_head(vf), *_token_head(dof),
            D=d, E=e, BD=padded(d), BE=padded(e), PREC=_prec(qf), UPCAST=_upcast(qf), BLOCK=BLOCK, num_warps=4,
        )
        return dq.view(B, T, H, d), dk.view(B, T, H, d), dv.view(B, T, H, e), None, None


def lightnet_noncausal_triton(q, k, v, *, cu_seqlens=None, segment_len: int | None = None) -> torch.Tensor:
    """Non-causal LightNet attention on checked inputs; `segment_len` set small in tests (split path)."""
    if max(q.shape[-1], v.shape[-1]) > TRITON_MAX_DIM:
        raise ValueError(f"the triton backend takes head dims up to {TRITON_MAX_DIM}, "
                         f"got d={q.shape[-1]}, e={v.shape[-1]}")
    return LightNetNonCausalFunction.apply(q, k, v, cu_seqlens, segment_len)

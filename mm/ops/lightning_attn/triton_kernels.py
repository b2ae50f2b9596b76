"""Triton kernel of lightning attention: one generic causal pass.

Every pass, forward and backward alike, computes for each head (lambda = exp(-slope)) and each
sequence, in processing order r (forward: r = t; REVERSE: r = T - 1 - t):

    out_r = sum_{r' <= r} lambda^(r - r') (a_r . b_r') c_r'  +  lambda^(r + 1 - SHIFT) a_r S_init

with the state carried as S_r = lambda S_{r-1} + b_r^T c_r (SHIFT = 1 keeps lambda * S instead,
the convention of the adjoint pass: its start value is dL/dS_T and its end value is dL/dS_0).
  forward:  (a, b, c) = (q, k, v),   forward order
  dq:       (a, b, c) = (do, v, k),  forward order, S_init = the forward's segment states, transposed
  dv:       (a, b, c) = (k, q, do),  reverse order, SHIFT 1, S_init = dL/dS_T; its end state = dh0
  dk:       (a, b, c) = (v, do, q),  reverse order, SHIFT 1, the dv pass's segment states transposed

`output_kernel` runs one program per (segment, head, value tile): blocks of BLOCK tokens,
intra-block left product, inter-block right product, state carried in registers (fp32)
(Lightning Attention-2 tiling inside each segment, segments in parallel, DESIGN §2). Each segment
starts from S_IN: given (HAS_SIN), or, when sequences are split, chained (CHAIN): programs take
numbers in start order from a counter; each computes its segment's own state from zero, waits for
its predecessor's flag, reads its start state S_IN[s] and publishes S_IN[next] = lambda^len S_IN[s]
+ local before its output loop. A program only waits on programs already running, so the chain
cannot deadlock, and each segment's local state is read while its predecessors are still working.
Feature dims need not be powers of two: tiles are padded to BDA/BV and masked in the kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _dot(x, y, PREC: tl.constexpr, UPCAST: tl.constexpr):
    # UPCAST: the interpreter multiplies bf16 tiles as raw integers, so under TRITON_INTERPRET the
    # (already bf16-rounded) operands are widened first; products of bf16 values are exact in fp32,
    # so this mirrors the tensor-core result.
    if UPCAST:
        return tl.dot(x.to(tl.float32), y.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(x, y, input_precision=PREC)


@triton.jit
def _cast(x, dtype: tl.constexpr, UPCAST: tl.constexpr):
    # The interpreter's float32 -> bf16 cast truncates (a -2.8e-3 bias); GPUs round to nearest even.
    # Under UPCAST, round by hand and keep the (now bf16-exact) value in float32.
    if UPCAST:
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(dtype)


@triton.jit
def _segment(SEG, i_s, REVERSE: tl.constexpr):
    # one row of the segment table (5 int64 columns: sequence, start, end, is_first, is_last);
    # first/last are returned in processing order (REVERSE swaps them)
    seq = tl.load(SEG + i_s * 5)
    start = tl.load(SEG + i_s * 5 + 1)
    end = tl.load(SEG + i_s * 5 + 2)
    if REVERSE:
        first = tl.load(SEG + i_s * 5 + 4)
        last = tl.load(SEG + i_s * 5 + 3)
    else:
        first = tl.load(SEG + i_s * 5 + 3)
        last = tl.load(SEG + i_s * 5 + 4)
    return seq, start, end, (end - start).to(tl.int32), first, last


@triton.jit
def _positions(start, end, t, REVERSE: tl.constexpr):
    # int64 token positions (start/end are int64): offsets can pass 2^31 elements at 1M tokens.
    if REVERSE:
        return end - 1 - t
    else:
        return start + t


@triton.jit
def _local_state(Bk, C, i_h, start, end, length, ld, rk, rv, mk, mv, stride_b, stride_c,
                 DB: tl.constexpr, DC: tl.constexpr, BDB: tl.constexpr,
                 REVERSE: tl.constexpr, SHIFT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                 BLOCK: tl.constexpr, BV: tl.constexpr):
    """sum_r lambda^(length - 1 - r + SHIFT) b_r^T c_r over the first `length` tokens, from zero."""
    ri = tl.arange(0, BLOCK)
    acc = tl.zeros([BDB, BV], dtype=tl.float32)
    for t0 in range(0, length, BLOCK):
        t = t0 + ri
        valid = t < length
        pos = _positions(start, end, t, REVERSE)[:, None]
        b = tl.load(Bk + i_h * DB + pos * stride_b + rk[None, :], mask=valid[:, None] & mk[None, :], other=0.0)
        c = tl.load(C + i_h * DC + pos * stride_c + rv[None, :], mask=valid[:, None] & mv[None, :], other=0.0)
        dec = tl.where(valid, tl.exp2(ld * tl.maximum(length - 1 - t + SHIFT, 0).to(tl.float32)), 0.0)
        acc += _dot(tl.trans(_cast(b * dec[:, None], c.dtype, UPCAST)), c, PREC, UPCAST)
    return acc


@triton.jit
def output_kernel(
    A, Bk, C, OUT, S_IN, S_OUT, INIT, SYNC, SLOPES, SEG,
    stride_a, stride_c,
    sin_seg, sin_h, sin_i, sin_j,
    sout_n, sout_h, sout_i, sout_j,
    init_n, init_h, init_i, init_j,
    H, NSEG,
    SLOTS,  # autotune key only: log2 bucket of the number of (segment, head) programs
    DA: tl.constexpr, DC: tl.constexpr, BDA: tl.constexpr,
    REVERSE: tl.constexpr, SHIFT: tl.constexpr, HAS_SIN: tl.constexpr, HAS_SOUT: tl.constexpr,
    CHAIN: tl.constexpr, HAS_INIT: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK: tl.constexpr, BV: tl.constexpr,
):
    n_v = tl.cdiv(DC, BV)
    if CHAIN:  # programs numbered in start order: each waits only on programs already running
        pid = tl.atomic_add(SYNC, 1)
    else:
        pid = tl.program_id(0)
    i_v = pid % n_v
    i_h = (pid // n_v) % H
    i_s = pid // (n_v * H)
    if REVERSE:  # processing order: a sequence's later segments first
        i_s = NSEG - 1 - i_s
    seq, start, end, length, first, last = _segment(SEG, i_s, REVERSE)
    ld = -tl.load(SLOPES + i_h).to(tl.float32) * 1.4426950408889634  # log2 of lambda

    ri = tl.arange(0, BLOCK)
    rk = tl.arange(0, BDA)
    rv = i_v * BV + tl.arange(0, BV)
    mk = rk < DA
    mv = rv < DC
    m_state = mk[:, None] & mv[None, :]
    diff = ri[:, None] - ri[None, :]
    # decays are masked before exp2 so padded or future positions never produce inf * 0
    intra = tl.where(diff >= 0, tl.exp2(ld * tl.maximum(diff, 0).to(tl.float32)), 0.0)
    qdec = tl.exp2(ld * (ri + 1 - SHIFT).to(tl.float32))

    tile = rk[:, None] * sin_i + rv[None, :] * sin_j
    if CHAIN:
        # Chained start states: this segment's own state from zero first (reading b, c while the
        # predecessor may still be busy), then the predecessor's start state S_IN[s], then
        # S_IN[next] = lambda^len S_IN[s] + local is published for the successor.
        local = _local_state(Bk, C, i_h, start, end, tl.where(last != 0, 0, length), ld, rk, rv, mk, mv,
                             stride_a, stride_c, DA, DC, BDA, REVERSE, SHIFT, PREC, UPCAST, BLOCK, BV)
        own = S_IN + i_s * sin_seg + i_h * sin_h + tile
        if first != 0:
            if HAS_INIT:
                p = INIT + seq * init_n + i_h * init_h + rk[:, None] * init_i + rv[None, :] * init_j
                state = tl.load(p, mask=m_state, other=0.0).to(tl.float32)
            else:
                state = tl.zeros([BDA, BV], dtype=tl.float32)
            tl.store(own, state, mask=m_state)  # kept for the backward passes
        else:
            while tl.atomic_add(SYNC + 1 + (i_s * H + i_h) * n_v + i_v, 0, sem="acquire") == 0:
                pass
            state = tl.load(own, mask=m_state, other=0.0, cache_modifier=".cg")
        if last == 0:
            if REVERSE:
                nxt = i_s - 1
            else:
                nxt = i_s + 1
            tl.store(S_IN + nxt * sin_seg + i_h * sin_h + tile, state * tl.exp2(ld * length.to(tl.float32)) + local,
                     mask=m_state)
            tl.debug_barrier()
            tl.atomic_xchg(SYNC + 1 + (nxt * H + i_h) * n_v + i_v, 1, sem="release")
    elif HAS_SIN:
        state = tl.load(S_IN + i_s * sin_seg + i_h * sin_h + tile, mask=m_state, other=0.0).to(tl.float32)
    else:
        state = tl.zeros([BDA, BV], dtype=tl.float32)

    a_base = A + i_h * DA + rk[None, :]
    b_base = Bk + i_h * DA + rk[None, :]
    c_base = C + i_h * DC + rv[None, :]
    o_base = OUT + i_h * DC + rv[None, :]
    for t0 in range(0, length, BLOCK):
        t = t0 + ri
        valid = t < length
        pos = _positions(start, end, t, REVERSE)[:, None]
        m_ab = valid[:, None] & mk[None, :]
        m_c = valid[:, None] & mv[None, :]
        a = tl.load(a_base + pos * stride_a, mask=m_ab, other=0.0)
        b = tl.load(b_base + pos * stride_a, mask=m_ab, other=0.0)
        c = tl.load(c_base + pos * stride_c, mask=m_c, other=0.0)
        scores = _dot(a, tl.trans(b), PREC, UPCAST) * intra
        out = _dot(_cast(scores, c.dtype, UPCAST), c, PREC, UPCAST)
        out += _dot(_cast(a * qdec[:, None], c.dtype, UPCAST), _cast(state, c.dtype, UPCAST), PREC, UPCAST)
        tl.store(o_base + pos * stride_c, _cast(out, OUT.dtype.element_ty, UPCAST).to(OUT.dtype.element_ty), mask=m_c)
        nb = tl.minimum(length - t0, BLOCK)
        kdec = tl.where(valid, tl.exp2(ld * tl.maximum(nb - 1 - ri + SHIFT, 0).to(tl.float32)), 0.0)
        bd = _cast(b * kdec[:, None], c.dtype, UPCAST)
        state = state * tl.exp2(ld * nb.to(tl.float32)) + _dot(tl.trans(bd), c, PREC, UPCAST)

    if HAS_SOUT:
        if last != 0:
            s_ptr = S_OUT + seq * sout_n + i_h * sout_h + rk[:, None] * sout_i + rv[None, :] * sout_j
            tl.store(s_ptr, state, mask=m_state)


def output_configs() -> list[triton.Config]:
    """Autotune space of `output_kernel` on GPU (the interpreter uses one fixed config)."""
    # Kept small: every config costs a compile per kernel variant. The winners seen on an H200
    # (d = e = 128, bf16) were (64, 128, 8, 3) and (64, 64, 4, 2); BV 32 serves d = 256.
    shapes = [(64, 64, 4, 2), (64, 128, 8, 3), (64, 64, 8, 3), (64, 32, 4, 2)]
    return [triton.Config({"BLOCK": b, "BV": v}, num_warps=w, num_stages=s) for b, v, w, s in shapes]

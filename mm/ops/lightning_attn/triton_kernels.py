"""Triton kernels of lightning attention: one generic causal pass, in three kernels.

Every pass, forward and backward alike, computes for each head (lambda = exp(-slope)) and each
sequence, in processing order r (forward: r = t; REVERSE: r = T - 1 - t):

    out_r = sum_{r' <= r} lambda^(r - r') (a_r . b_r') c_r'  +  lambda^(r + 1 - SHIFT) a_r S_init

with the state carried as S_r = lambda S_{r-1} + b_r^T c_r (SHIFT = 1 keeps lambda * S instead,
the convention of the adjoint pass: its start value is dL/dS_T and its end value is dL/dS_0).
  forward:  (a, b, c) = (q, k, v),   forward order
  dq:       (a, b, c) = (do, v, k),  forward order, S_init = the forward's segment states, transposed
  dv:       (a, b, c) = (k, q, do),  reverse order, SHIFT 1, S_init = dL/dS_T; its end state = dh0
  dk:       (a, b, c) = (v, do, q),  reverse order, SHIFT 1, the dv pass's segment states transposed

Kernels (Lightning Attention-2 tiling inside each segment, segments in parallel, DESIGN §2):
  `local_state_kernel`  per (segment, head, tile): the segment's own state from zero;
  `scan_kernel`         per (sequence, head, tile): walks the segments, writes each one's start state;
  `output_kernel`       per (segment, head, value tile): blocks of BLOCK tokens, intra-block left
                        product, inter-block right product, state carried in registers (fp32).
Feature dims need not be powers of two: tiles are padded to BDA/BV and masked in the kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

HORIZON_LOG2: tl.constexpr = tl.constexpr(32)  # local-state pass: tokens weighted below 2^-32 are skipped


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
    # one row of the segment table (5 int64 columns: sequence, start, end, is_first, is_last)
    seq = tl.load(SEG + i_s * 5)
    start = tl.load(SEG + i_s * 5 + 1)
    end = tl.load(SEG + i_s * 5 + 2)
    if REVERSE:  # the last segment in processing order is the sequence's first one
        last = tl.load(SEG + i_s * 5 + 3)
    else:
        last = tl.load(SEG + i_s * 5 + 4)
    return seq, start, end, (end - start).to(tl.int32), last


@triton.jit
def _positions(start, end, t, REVERSE: tl.constexpr):
    # int64 token positions (start/end are int64): offsets can pass 2^31 elements at 1M tokens.
    if REVERSE:
        return end - 1 - t
    else:
        return start + t


@triton.jit
def output_kernel(
    A, Bk, C, OUT, S_IN, S_OUT, SLOPES, SEG,
    sa_t, sa_h, sb_t, sb_h, sc_t, sc_h, so_t, so_h,  # token and head strides of a, b, c, out
    sin_seg, sin_h, sin_i, sin_j,
    sout_n, sout_h, sout_i, sout_j,
    SLOTS,  # autotune key only: log2 bucket of the number of (segment, head) programs
    DA: tl.constexpr, DC: tl.constexpr, BDA: tl.constexpr,
    REVERSE: tl.constexpr, SHIFT: tl.constexpr, HAS_SIN: tl.constexpr, HAS_SOUT: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK: tl.constexpr, BV: tl.constexpr,
):
    i_v = tl.program_id(0)
    i_h = tl.program_id(1)
    i_s = tl.program_id(2)
    seq, start, end, length, last = _segment(SEG, i_s, REVERSE)
    ld = -tl.load(SLOPES + i_h).to(tl.float32) * 1.4426950408889634  # log2 of lambda

    ri = tl.arange(0, BLOCK)
    rk = tl.arange(0, BDA)
    rv = i_v * BV + tl.arange(0, BV)
    mk = rk < DA
    mv = rv < DC
    diff = ri[:, None] - ri[None, :]
    # decays are masked before exp2 so padded or future positions never produce inf * 0
    intra = tl.where(diff >= 0, tl.exp2(ld * tl.maximum(diff, 0).to(tl.float32)), 0.0)
    qdec = tl.exp2(ld * (ri + 1 - SHIFT).to(tl.float32))

    if HAS_SIN:
        s_ptr = S_IN + i_s * sin_seg + i_h * sin_h + rk[:, None] * sin_i + rv[None, :] * sin_j
        state = tl.load(s_ptr, mask=mk[:, None] & mv[None, :], other=0.0).to(tl.float32)
    else:
        state = tl.zeros([BDA, BV], dtype=tl.float32)

    a_base = A + i_h * sa_h + rk[None, :]
    b_base = Bk + i_h * sb_h + rk[None, :]
    c_base = C + i_h * sc_h + rv[None, :]
    o_base = OUT + i_h * so_h + rv[None, :]
    for t0 in range(0, length, BLOCK):
        t = t0 + ri
        valid = t < length
        pos = _positions(start, end, t, REVERSE)[:, None]
        m_ab = valid[:, None] & mk[None, :]
        m_c = valid[:, None] & mv[None, :]
        a = tl.load(a_base + pos * sa_t, mask=m_ab, other=0.0)
        b = tl.load(b_base + pos * sb_t, mask=m_ab, other=0.0)
        c = tl.load(c_base + pos * sc_t, mask=m_c, other=0.0)
        scores = _dot(a, tl.trans(b), PREC, UPCAST) * intra
        out = _dot(_cast(scores, c.dtype, UPCAST), c, PREC, UPCAST)
        out += _dot(_cast(a * qdec[:, None], c.dtype, UPCAST), _cast(state, c.dtype, UPCAST), PREC, UPCAST)
        tl.store(o_base + pos * so_t, _cast(out, OUT.dtype.element_ty, UPCAST).to(OUT.dtype.element_ty), mask=m_c)
        nb = tl.minimum(length - t0, BLOCK)
        kdec = tl.where(valid, tl.exp2(ld * tl.maximum(nb - 1 - ri + SHIFT, 0).to(tl.float32)), 0.0)
        bd = _cast(b * kdec[:, None], c.dtype, UPCAST)
        state = state * tl.exp2(ld * nb.to(tl.float32)) + _dot(tl.trans(bd), c, PREC, UPCAST)

    if HAS_SOUT:
        if last != 0:
            s_ptr = S_OUT + seq * sout_n + i_h * sout_h + rk[:, None] * sout_i + rv[None, :] * sout_j
            tl.store(s_ptr, state, mask=mk[:, None] & mv[None, :])


@triton.jit
def local_state_kernel(
    Bk, C, LOCAL, SLOPES, SEG,
    sb_t, sb_h, sc_t, sc_h,  # token and head strides of b and c
    SLOTS,
    DB: tl.constexpr, DC: tl.constexpr,
    REVERSE: tl.constexpr, SHIFT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    """LOCAL[s, h] = sum_r lambda^(len - 1 - r + SHIFT) b_r^T c_r over segment s ([S, H, DB, DC], fp32).

    The last segment of each sequence (in processing order) is skipped: nobody reads its local state.
    Decay horizon: a token whose weight lambda^(len - 1 - r + SHIFT) is below 2^-HORIZON_LOG2 is
    not read. The dropped tail sums to at most 2^-HORIZON_LOG2 of what the same tokens would add at
    full weight, far below float32 rounding; a fast-decaying head then reads only its segment's last
    HORIZON_LOG2 / (slope log2 e) tokens instead of all of them (no effect when the slope is ~0).
    """
    n_v = tl.cdiv(DC, BV)
    i_k = tl.program_id(0) // n_v
    i_v = tl.program_id(0) % n_v
    i_h = tl.program_id(1)
    i_s = tl.program_id(2)
    H = tl.num_programs(1)
    seq, start, end, length, last = _segment(SEG, i_s, REVERSE)
    ld = -tl.load(SLOPES + i_h).to(tl.float32) * 1.4426950408889634
    ri = tl.arange(0, BLOCK)
    rk = i_k * BK + tl.arange(0, BK)
    rv = i_v * BV + tl.arange(0, BV)
    mk = rk < DB
    mv = rv < DC
    acc = tl.zeros([BK, BV], dtype=tl.float32)
    n_tok = tl.where(last != 0, 0, length)
    reach = tl.minimum(HORIZON_LOG2 / tl.maximum(-ld, 1e-20), 1e9).to(tl.int32) + 1
    first = tl.maximum(length - reach, 0) // BLOCK * BLOCK
    for t0 in range(first, n_tok, BLOCK):
        t = t0 + ri
        valid = t < length
        pos = _positions(start, end, t, REVERSE)[:, None]
        b = tl.load(Bk + i_h * sb_h + pos * sb_t + rk[None, :], mask=valid[:, None] & mk[None, :], other=0.0)
        c = tl.load(C + i_h * sc_h + pos * sc_t + rv[None, :], mask=valid[:, None] & mv[None, :], other=0.0)
        dec = tl.where(valid, tl.exp2(ld * tl.maximum(length - 1 - t + SHIFT, 0).to(tl.float32)), 0.0)
        acc += _dot(tl.trans(_cast(b * dec[:, None], c.dtype, UPCAST)), c, PREC, UPCAST)
    base = (i_s.to(tl.int64) * H + i_h) * DB * DC
    tl.store(LOCAL + base + rk[:, None] * DC + rv[None, :], acc, mask=mk[:, None] & mv[None, :])


@triton.jit
def scan_kernel(
    LOCAL, INIT, S_IN, SLOPES, SEG, SEQ_SEGS,
    init_n, init_h, init_i, init_j,
    DB: tl.constexpr, DC: tl.constexpr,
    REVERSE: tl.constexpr, HAS_INIT: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """S_IN[s] for each segment of sequence n: S_IN[first] = init, S_IN[next] = lambda^len S_IN + LOCAL."""
    i_e = tl.program_id(0)
    i_h = tl.program_id(1)
    i_n = tl.program_id(2)
    H = tl.num_programs(1)
    ld = -tl.load(SLOPES + i_h).to(tl.float32) * 1.4426950408889634
    f = i_e * BLOCK_E + tl.arange(0, BLOCK_E)
    m = f < DB * DC
    if HAS_INIT:
        p = INIT + i_n * init_n + i_h * init_h + (f // DC) * init_i + (f % DC) * init_j
        state = tl.load(p, mask=m, other=0.0).to(tl.float32)
    else:
        state = tl.zeros([BLOCK_E], dtype=tl.float32)
    lo = tl.load(SEQ_SEGS + i_n)
    hi = tl.load(SEQ_SEGS + i_n + 1)
    for idx in range(0, (hi - lo).to(tl.int32)):
        if REVERSE:
            seg = hi - 1 - idx
        else:
            seg = lo + idx
        base = (seg * H + i_h) * DB * DC
        tl.store(S_IN + base + f, state, mask=m)
        length = tl.load(SEG + seg * 5 + 2) - tl.load(SEG + seg * 5 + 1)
        local = tl.load(LOCAL + base + f, mask=m, other=0.0)
        state = state * tl.exp2(ld * length.to(tl.float32)) + local


def output_configs() -> list[triton.Config]:
    """Autotune space of `output_kernel` on GPU (the interpreter uses one fixed config)."""
    # Kept small: every config costs a compile per kernel variant. The winners seen on an H200
    # (d = e = 128, bf16) were (64, 128, 8, 3) and (64, 64, 4, 2); BV 32 serves d = 256.
    shapes = [(64, 64, 4, 2), (64, 128, 8, 3), (64, 64, 8, 3), (64, 32, 4, 2)]
    return [triton.Config({"BLOCK": b, "BV": v}, num_warps=w, num_stages=s) for b, v, w, s in shapes]


def local_state_configs() -> list[triton.Config]:
    shapes = [(64, 8, 3), (64, 4, 2)]
    return [triton.Config({"BLOCK": b}, num_warps=w, num_stages=s) for b, w, s in shapes]

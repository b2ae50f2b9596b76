"""Triton kernels of non-causal LightNet attention: a reduction over tokens and two token passes.

Per sequence and head, with p = softmax over the sequence of each key channel (DESIGN §5):

    S = Σ_s p_sᵀ v_s  [d, e],   o_t = q_t S.

Backward (dS = Σ_t q_tᵀ do_t, c_i = Σ_j dS_ij S_ij):

    dq_t = do_t Sᵀ,   dv_s = p_s dS,   dk_s = p_s ⊙ (v_s dSᵀ - c).

Kernels, one program per (segment, head[, value tile]); a segment is a contiguous piece of one
sequence (mm.ops.lightning_attn.segments), so long sequences are reduced in parallel:
  `reduce_kernel`   SOFTMAX: the segment's online-softmax partials (max m, sum l, Σ exp(k - m)ᵀ v),
                    rescaled block by block as the running max grows (flash-attention style), so no
                    exp can overflow; else the plain sum Σ aᵀ c (the backward's dS partials).
  `apply_kernel`    o_t = q_t S, S = diag(1 / l) acc formed in the program.
  `grad_kernel`     dq, dk, dv of a block from k, v, do and the sequence's acc, dS, m, l.
Split sequences' partials are combined in torch (a few [d, e] matrices per sequence); a sequence
in one segment uses its partials as they are.
Every pass reads each token tensor once: the op is memory-bound.
"""

from __future__ import annotations

import triton
import triton.language as tl

from mm.ops.lightning_attn.triton_kernels import _cast, _dot, _segment


@triton.jit
def reduce_kernel(
    A, C, M_OUT, L_OUT, ACC, SEG,
    sa_t, sa_h, sc_t, sc_h,
    DA: tl.constexpr, DC: tl.constexpr, BDA: tl.constexpr, BV: tl.constexpr,
    SOFTMAX: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK: tl.constexpr,
):
    """ACC[s, h] = Σ_t w_tᵀ c_t over segment s, w = exp(a - m) (SOFTMAX, also m, l) or w = a."""
    i_v = tl.program_id(0)
    i_h = tl.program_id(1)
    i_s = tl.program_id(2)
    H = tl.num_programs(1)
    _, start, _, length, _ = _segment(SEG, i_s, False)
    ri = tl.arange(0, BLOCK)
    rk = tl.arange(0, BDA)
    rv = i_v * BV + tl.arange(0, BV)
    mk = rk < DA
    mv = rv < DC
    acc = tl.zeros([BDA, BV], dtype=tl.float32)
    m = tl.full([BDA], float("-inf"), dtype=tl.float32)
    lsum = tl.zeros([BDA], dtype=tl.float32)
    for t0 in range(0, length, BLOCK):
        valid = t0 + ri < length
        pos = (start + t0 + ri)[:, None]
        a = tl.load(A + i_h * sa_h + pos * sa_t + rk[None, :], mask=valid[:, None] & mk[None, :], other=0.0)
        c = tl.load(C + i_h * sc_h + pos * sc_t + rv[None, :], mask=valid[:, None] & mv[None, :], other=0.0)
        if SOFTMAX:
            a = tl.where(valid[:, None], a.to(tl.float32), float("-inf"))
            m_new = tl.maximum(m, tl.max(a, axis=0))  # finite: every block has a valid row
            alpha = tl.exp(m - m_new)  # exp(-inf) = 0 on the first block
            w = tl.exp(a - m_new[None, :])  # invalid rows: exp(-inf) = 0
            lsum = lsum * alpha + tl.sum(w, axis=0)
            acc = acc * alpha[:, None] + _dot(tl.trans(_cast(w, c.dtype, UPCAST)), c, PREC, UPCAST)
            m = m_new
        else:
            acc += _dot(tl.trans(a), c, PREC, UPCAST)
    base = i_s.to(tl.int64) * H + i_h
    tl.store(ACC + base * DA * DC + rk[:, None] * DC + rv[None, :], acc, mask=mk[:, None] & mv[None, :])
    if SOFTMAX:
        if i_v == 0:
            tl.store(M_OUT + base * DA + rk, m, mask=mk)
            tl.store(L_OUT + base * DA + rk, lsum, mask=mk)


@triton.jit
def apply_kernel(
    A, MAT, LS, OUT, SEG,
    sa_t, sa_h, so_t, so_h, sm_n, sm_h, sm_i, sm_j,
    DA: tl.constexpr, DC: tl.constexpr, BDA: tl.constexpr, BV: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK: tl.constexpr,
):
    """OUT_t = A_t diag(1 / LS[seq]) MAT[seq] for the tokens of segment s (MAT float32, indexed
    [n, h, i, j] by strides; LS [N, H, DA] the softmax sums, so the normalised S never goes to memory)."""
    i_v = tl.program_id(0)
    i_h = tl.program_id(1)
    i_s = tl.program_id(2)
    seq, start, _, length, _ = _segment(SEG, i_s, False)
    ri = tl.arange(0, BLOCK)
    rk = tl.arange(0, BDA)
    rv = i_v * BV + tl.arange(0, BV)
    mk = rk < DA
    mv = rv < DC
    mat = tl.load(MAT + seq * sm_n + i_h * sm_h + rk[:, None] * sm_i + rv[None, :] * sm_j,
                  mask=mk[:, None] & mv[None, :], other=0.0)
    # l >= 1 for any token (the channel's max has weight exp(0)); an empty sequence has l = 0 and no tokens
    inv_l = 1.0 / tl.maximum(tl.load(LS + (seq * tl.num_programs(1) + i_h) * DA + rk, mask=mk, other=1.0), 1.0)
    mat = _cast(mat * inv_l[:, None], A.dtype.element_ty, UPCAST)
    for t0 in range(0, length, BLOCK):
        valid = t0 + ri < length
        pos = (start + t0 + ri)[:, None]
        a = tl.load(A + i_h * sa_h + pos * sa_t + rk[None, :], mask=valid[:, None] & mk[None, :], other=0.0)
        out = _dot(a, mat, PREC, UPCAST)
        tl.store(OUT + i_h * so_h + pos * so_t + rv[None, :], _cast(out, OUT.dtype.element_ty, UPCAST).to(
            OUT.dtype.element_ty), mask=valid[:, None] & mv[None, :])


@triton.jit
def grad_kernel(
    K, V, DO, DQ, DK, DV, ACC, DS, MX, LS, SEG,
    sk_t, sk_h, sv_t, sv_h, sdo_t, sdo_h,  # token and head strides of the inputs (outputs are dense)
    D: tl.constexpr, E: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK: tl.constexpr,
):
    """dq = do Sᵀ, dv = p dS, dk = p ⊙ (v dSᵀ - c) for the tokens of segment s, p = exp(k - m) / l,
    S = diag(1 / l) ACC and c = Σ_j dS ⊙ S formed here (one [D, E] per program, never in memory).

    ACC, DS `[N, H, D, E]`, MX, LS `[N, H, D]`: float32 per sequence. DQ, DK `[T, H, D]`,
    DV `[T, H, E]` dense.
    """
    i_h = tl.program_id(0)
    i_s = tl.program_id(1)
    H = tl.num_programs(0)
    seq, start, _, length, _ = _segment(SEG, i_s, False)
    ri = tl.arange(0, BLOCK)
    rd = tl.arange(0, BD)
    re = tl.arange(0, BE)
    md = rd < D
    me = re < E
    base = seq * H + i_h
    m2 = md[:, None] & me[None, :]
    mx = tl.load(MX + base * D + rd, mask=md, other=0.0)
    inv_l = 1.0 / tl.maximum(tl.load(LS + base * D + rd, mask=md, other=1.0), 1.0)  # l >= 1, as above
    s_mat = tl.load(ACC + base * D * E + rd[:, None] * E + re[None, :], mask=m2, other=0.0) * inv_l[:, None]
    ds_mat = tl.load(DS + base * D * E + rd[:, None] * E + re[None, :], mask=m2, other=0.0)
    cc = tl.sum(ds_mat * s_mat, axis=1)
    dt = DO.dtype.element_ty
    s_c = _cast(s_mat, dt, UPCAST)
    ds_c = _cast(ds_mat, dt, UPCAST)
    for t0 in range(0, length, BLOCK):
        valid = t0 + ri < length
        pos = (start + t0 + ri)[:, None]
        vd = valid[:, None] & md[None, :]
        ve = valid[:, None] & me[None, :]
        k = tl.load(K + i_h * sk_h + pos * sk_t + rd[None, :], mask=vd, other=0.0).to(tl.float32)
        v = tl.load(V + i_h * sv_h + pos * sv_t + re[None, :], mask=ve, other=0.0)
        do = tl.load(DO + i_h * sdo_h + pos * sdo_t + re[None, :], mask=ve, other=0.0)
        p = tl.where(vd, tl.exp(k - mx[None, :]) * inv_l[None, :], 0.0)
        dq = _dot(do, tl.trans(s_c), PREC, UPCAST)
        dv = _dot(_cast(p, dt, UPCAST), ds_c, PREC, UPCAST)
        dk = p * (_dot(v, tl.trans(ds_c), PREC, UPCAST) - cc[None, :])
        tok = pos * H + i_h
        tl.store(DQ + tok * D + rd[None, :], _cast(dq, DQ.dtype.element_ty, UPCAST).to(DQ.dtype.element_ty), mask=vd)
        tl.store(DK + tok * D + rd[None, :], _cast(dk, DK.dtype.element_ty, UPCAST).to(DK.dtype.element_ty), mask=vd)
        tl.store(DV + tok * E + re[None, :], _cast(dv, DV.dtype.element_ty, UPCAST).to(DV.dtype.element_ty), mask=ve)

"""Triton kernels of causal LightNet attention: gated linear attention with a per-channel log-decay.

With z = logcumsumexp(k) per channel over the sequence's prefix (DESIGN §5, chunked.py), the weight
of token s ≤ t in o_t on channel i is P_tsi = exp(k_si − z_ti) ≤ 1, and

    o_t = Σ_{s≤t} Σ_i q_ti P_tsi v_s = [intra-chunk] + (q_t ⊙ exp(z_in − z_t)) S_in,
    S_out = diag(exp(z_in − z_end)) S_in + Σ_{s in chunk} exp(k_s − z_end)ᵀ v_s,

where S_in is the state after the previous chunks normalised at z_in (z at the previous chunk's last
token, −inf before the first chunk) and z_end is z at the chunk's last token. z is non-decreasing,
so every exponent here is a difference ≤ 0: nothing overflows whatever the keys. The intra-chunk
weights P (a [C, C, d] tile, masked to s ≤ t before exp) are elementwise per channel, as in chunked.py.

Backward (B_ts = do_t · v_s, dq_t = do_t S_tᵀ with S_t the state normalised at z_t):

    dq_ti = Σ_{s≤t} P_tsi B_ts,
    dv_s  = Σ_{t≥s} (Σ_i q_ti P_tsi) do_t,
    dk_si = Σ_{t≥s} P_tsi q_ti (B_ts − dq_ti),

the last being k̂ ⊙ (dk̂ − r) with r the reverse scan of logcumsumexp's backward (the term −q_ti dq_ti),
so the gradient reaches the raw keys in the kernel. The reverse states entering a chunk hold the
later tokens normalised at the chunk's z_end: dS = Σ_{t later} diag(exp(z_end − z_t)) q_tᵀ do_t and
ρ = Σ_{t later} exp(z_end − z_t) ⊙ q_t ⊙ dq_t, so they add exp(k_s − z_end) ⊙ (v_s dSᵀ − ρ) to dk_s
and exp(k_s − z_end) dS to dv_s; after the chunk they are renormalised at the previous chunk's z_end.

Kernels, one program per (segment, head[, value tile]), chunks of BLOCK tokens walked in order
(states in float32 registers). A segment is a contiguous piece of one sequence (a batch row or one
sequence of a varlen pack; mm.ops.lightning_attn.segments), so packs need no Python loop and long
sequences run in parallel; HAS_SIN: the segment starts from the states of the segments before it
(after it, in the reverse pass), found by a short scan over per-segment partials:
  `causal_fwd_kernel`         z (written once, float32, kept for the backward) and o;
  `causal_dq_kernel`          dq (float32), forward order;
  `causal_dkv_kernel`         dk, dv, reverse order (reads z and dq);
  `causal_scan_kernel`        forward start states: walks a sequence's segments from their softmax
                              partials (max m, sum l, Σ exp(k − m)ᵀ v; the non-causal reduce_kernel),
                              z_in ← logaddexp(z_in, m + log l), S_in ← exp(z_in − z_new) S_in + exp(m − z_new) acc;
  `causal_rev_local_kernel`   each segment's reverse partials dS, ρ normalised at its z_in;
  `causal_rev_scan_kernel`    reverse start states from those partials (renormalised by exp(z_in − z_end)).
"""

from __future__ import annotations

import triton
import triton.language as tl

from mm.ops.lightning_attn.triton_kernels import _cast, _dot, _segment


@triton.jit
def _keys(K, i_h, sk_t, sk_h, pos, rd, valid, md):
    # [C, BD] float32 keys; rows past the sequence end are -inf (zero weight), padded channels 0
    k = tl.load(K + i_h * sk_h + pos * sk_t + rd[None, :], mask=valid[:, None] & md[None, :], other=0.0)
    return tl.where(valid[:, None], k.to(tl.float32), float("-inf"))


@triton.jit
def _zrows(Z, pos, H, i_h, D: tl.constexpr, rd, valid, md):
    # [C, BD] z of a chunk (float32, dense [T, H, D]); rows past the end +inf (zero weight), padded channels 0
    z = tl.load(Z + (pos * H + i_h) * D + rd[None, :], mask=valid[:, None] & md[None, :], other=float("inf"))
    return tl.where(md[None, :], z, 0.0)


@triton.jit
def _start(S_IN, ZS_IN, base, rd, rv, md, mv, HAS_SIN: tl.constexpr, D: tl.constexpr, E: tl.constexpr,
           BD: tl.constexpr, BV: tl.constexpr, FORWARD: tl.constexpr):
    # a program's start state [BD, BV] and vector [BD]: the segment's (dense [S, H, D, E] and [S, H, D]),
    # or zeros and, FORWARD, z_in = -inf (no token before)
    if HAS_SIN:
        state = tl.load(S_IN + base * D * E + rd[:, None] * E + rv[None, :], mask=md[:, None] & mv[None, :], other=0.0)
        vec = tl.load(ZS_IN + base * D + rd, mask=md, other=0.0)
    else:
        state = tl.zeros([BD, BV], dtype=tl.float32)
        if FORWARD:
            vec = tl.full([BD], float("-inf"), dtype=tl.float32)
        else:
            vec = tl.zeros([BD], dtype=tl.float32)
    return state, vec


@triton.jit
def _weights(k, z, causal):
    # P_tsi = exp(k_si - z_ti) for s ≤ t, 0 elsewhere (masked before exp): [C, C, BD]
    return tl.exp(tl.where(causal[:, :, None], k[None, :, :], float("-inf")) - z[:, None, :])


@triton.jit
def _advance(state, k, v, z_in, z_end, dt: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """The state past one chunk, normalised at its last z:
    S ← diag(exp(z_in − z_end)) S + exp(k − z_end)ᵀ v (rows past a sequence's end: exp(−inf) = 0)."""
    w = _cast(tl.exp(k - z_end[None, :]), dt, UPCAST)
    return state * tl.exp(z_in - z_end)[:, None] + _dot(tl.trans(w), v, PREC, UPCAST)


@triton.jit
def causal_fwd_kernel(
    Q, K, V, OUT, Z, S_IN, Z_IN, SEG,
    sq_t, sq_h, sk_t, sk_h, sv_t, sv_h,  # token and head strides of q, k, v (OUT and Z are dense)
    D: tl.constexpr, E: tl.constexpr, BD: tl.constexpr, HAS_SIN: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK: tl.constexpr, BV: tl.constexpr,
):
    """o (value tile i_v) and, from the first value tile, z. Per chunk, with m_t = max(z_in, max_{s≤t} k_s):
    l_t = exp(z_in − m_t) + Σ_{s≤t} exp(k_s − m_t) ≥ 1, z_t = m_t + log l_t, P_ts = exp(k_s − m_t) / l_t."""
    i_v = tl.program_id(0)
    i_h = tl.program_id(1)
    i_s = tl.program_id(2)
    H = tl.num_programs(1)
    _, start, _, length, _ = _segment(SEG, i_s, False)
    ri = tl.arange(0, BLOCK)
    rd = tl.arange(0, BD)
    rv = i_v * BV + tl.arange(0, BV)
    md = rd < D
    mv = rv < E
    causal = ri[:, None] >= ri[None, :]
    dt = V.dtype.element_ty
    state, z_in = _start(S_IN, Z_IN, i_s.to(tl.int64) * H + i_h, rd, rv, md, mv, HAS_SIN, D, E, BD, BV, True)
    for t0 in range(0, length, BLOCK):
        valid = t0 + ri < length
        pos = (start + t0 + ri)[:, None]
        vd = valid[:, None] & md[None, :]
        vv = valid[:, None] & mv[None, :]
        q = tl.load(Q + i_h * sq_h + pos * sq_t + rd[None, :], mask=vd, other=0.0).to(tl.float32)
        k = _keys(K, i_h, sk_t, sk_h, pos, rd, valid, md)
        v = tl.load(V + i_h * sv_h + pos * sv_t + rv[None, :], mask=vv, other=0.0)
        k3 = tl.where(causal[:, :, None], k[None, :, :], float("-inf"))  # [t, s, i]
        m = tl.maximum(tl.max(k3, axis=1), z_in[None, :])  # finite: s = 0 is a valid token
        p3 = tl.exp(k3 - m[:, None, :])
        lsum = tl.sum(p3, axis=1) + tl.exp(z_in[None, :] - m)
        z = m + tl.log(lsum)
        a = tl.sum(p3 * (q / lsum)[:, None, :], axis=2)  # [t, s] = Σ_i q_ti P_tsi
        o = _dot(_cast(a, dt, UPCAST), v, PREC, UPCAST)
        o += _dot(_cast(q * tl.exp(z_in[None, :] - z), dt, UPCAST), _cast(state, dt, UPCAST), PREC, UPCAST)
        ot = OUT.dtype.element_ty
        tl.store(OUT + (pos * H + i_h) * E + rv[None, :], _cast(o, ot, UPCAST).to(ot), mask=vv)
        if i_v == 0:
            tl.store(Z + (pos * H + i_h) * D + rd[None, :], z, mask=vd)
        nb = tl.minimum(length - t0, BLOCK)
        z_end = tl.sum(tl.where((ri == nb - 1)[:, None], z, 0.0), axis=0)
        state = _advance(state, k, v, z_in, z_end, dt, PREC, UPCAST)
        z_in = z_end


@triton.jit
def causal_dq_kernel(
    K, V, DO, Z, DQ, S_IN, Z_IN, SEG,
    sk_t, sk_h, sv_t, sv_h, sdo_t, sdo_h,  # Z and DQ (float32) are dense [T, H, D]
    D: tl.constexpr, E: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr, HAS_SIN: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK: tl.constexpr,
):
    """dq_t = Σ_{s≤t in chunk} P_ts ⊙ B_ts + exp(z_in − z_t) ⊙ (do_t S_inᵀ), state as in the forward."""
    i_h = tl.program_id(0)
    i_s = tl.program_id(1)
    H = tl.num_programs(0)
    _, start, _, length, _ = _segment(SEG, i_s, False)
    ri = tl.arange(0, BLOCK)
    rd = tl.arange(0, BD)
    re = tl.arange(0, BE)
    md = rd < D
    me = re < E
    causal = ri[:, None] >= ri[None, :]
    dt = V.dtype.element_ty
    state, z_in = _start(S_IN, Z_IN, i_s.to(tl.int64) * H + i_h, rd, re, md, me, HAS_SIN, D, E, BD, BE, True)
    for t0 in range(0, length, BLOCK):
        valid = t0 + ri < length
        pos = (start + t0 + ri)[:, None]
        vd = valid[:, None] & md[None, :]
        ve = valid[:, None] & me[None, :]
        k = _keys(K, i_h, sk_t, sk_h, pos, rd, valid, md)
        z = _zrows(Z, pos, H, i_h, D, rd, valid, md)
        v = tl.load(V + i_h * sv_h + pos * sv_t + re[None, :], mask=ve, other=0.0)
        do = tl.load(DO + i_h * sdo_h + pos * sdo_t + re[None, :], mask=ve, other=0.0)
        b = _dot(do, tl.trans(v), PREC, UPCAST)  # [t, s]
        dq = tl.sum(_weights(k, z, causal) * b[:, :, None], axis=1)
        dq += tl.exp(z_in[None, :] - z) * _dot(do, tl.trans(_cast(state, dt, UPCAST)), PREC, UPCAST)
        tl.store(DQ + (pos * H + i_h) * D + rd[None, :], dq, mask=vd)
        nb = tl.minimum(length - t0, BLOCK)
        z_end = tl.load(Z + ((start + t0 + nb - 1) * H + i_h) * D + rd, mask=md, other=0.0)
        state = _advance(state, k, v, z_in, z_end, dt, PREC, UPCAST)
        z_in = z_end


@triton.jit
def causal_dkv_kernel(
    Q, K, V, DO, Z, DQ, DK, DV, DS_IN, RHO_IN, SEG,
    sq_t, sq_h, sk_t, sk_h, sv_t, sv_h, sdo_t, sdo_h,  # Z, DQ (float32), DK, DV are dense
    D: tl.constexpr, E: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr, HAS_SIN: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK: tl.constexpr,
):
    """dk, dv chunk by chunk from the segment's end, the reverse states dS [BD, BE] and ρ [BD] carried
    (HAS_SIN: starting from the later segments' DS_IN, RHO_IN, normalised at this segment's z_end)."""
    i_h = tl.program_id(0)
    i_s = tl.program_id(1)
    H = tl.num_programs(0)
    _, start, _, length, _ = _segment(SEG, i_s, False)
    ri = tl.arange(0, BLOCK)
    rd = tl.arange(0, BD)
    re = tl.arange(0, BE)
    md = rd < D
    me = re < E
    causal = ri[:, None] >= ri[None, :]
    dt = V.dtype.element_ty
    ds, rho = _start(DS_IN, RHO_IN, i_s.to(tl.int64) * H + i_h, rd, re, md, me, HAS_SIN, D, E, BD, BE, False)
    n_chunks = tl.cdiv(length, BLOCK)
    for c in range(0, n_chunks):
        t0 = (n_chunks - 1 - c) * BLOCK
        valid = t0 + ri < length
        pos = (start + t0 + ri)[:, None]
        vd = valid[:, None] & md[None, :]
        ve = valid[:, None] & me[None, :]
        q = tl.load(Q + i_h * sq_h + pos * sq_t + rd[None, :], mask=vd, other=0.0).to(tl.float32)
        k = _keys(K, i_h, sk_t, sk_h, pos, rd, valid, md)
        z = _zrows(Z, pos, H, i_h, D, rd, valid, md)
        dq = tl.load(DQ + (pos * H + i_h) * D + rd[None, :], mask=vd, other=0.0)
        v = tl.load(V + i_h * sv_h + pos * sv_t + re[None, :], mask=ve, other=0.0)
        do = tl.load(DO + i_h * sdo_h + pos * sdo_t + re[None, :], mask=ve, other=0.0)
        nb = tl.minimum(length - t0, BLOCK)
        z_end = tl.load(Z + ((start + t0 + nb - 1) * H + i_h) * D + rd, mask=md, other=0.0)
        z_prev = tl.load(Z + ((start + tl.maximum(t0 - 1, 0)) * H + i_h) * D + rd, mask=md, other=0.0)
        p3 = _weights(k, z, causal)  # [t, s, i]
        b = _dot(do, tl.trans(v), PREC, UPCAST)  # [t, s]
        a = tl.sum(p3 * q[:, None, :], axis=2)  # [t, s]
        w = tl.exp(k - z_end[None, :])  # [s, i], ≤ 1
        ds_c = _cast(ds, dt, UPCAST)
        dv = _dot(tl.trans(_cast(a, dt, UPCAST)), do, PREC, UPCAST) + _dot(_cast(w, dt, UPCAST), ds_c, PREC, UPCAST)
        dk = tl.sum(p3 * q[:, None, :] * (b[:, :, None] - dq[:, None, :]), axis=0)
        dk += w * (_dot(v, tl.trans(ds_c), PREC, UPCAST) - rho[None, :])
        tok = pos * H + i_h
        tl.store(DK + tok * D + rd[None, :], _cast(dk, DK.dtype.element_ty, UPCAST).to(DK.dtype.element_ty), mask=vd)
        tl.store(DV + tok * E + re[None, :], _cast(dv, DV.dtype.element_ty, UPCAST).to(DV.dtype.element_ty), mask=ve)
        qz = q * tl.exp(z_prev[None, :] - z)  # rows past the end: z = +inf, weight 0
        carry = tl.exp(z_prev - z_end)
        ds = ds * carry[:, None] + _dot(tl.trans(_cast(qz, dt, UPCAST)), do, PREC, UPCAST)
        rho = rho * carry + tl.sum(qz * dq, axis=0)


@triton.jit
def causal_scan_kernel(
    M, LS, ACC, S_IN, Z_IN, SEQ_SEGS,
    D: tl.constexpr, E: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """S_IN, Z_IN of each segment of sequence n, walking its segments in order from S = 0, z = −inf:
    z_new = logaddexp(z, m + log l), S ← exp(z − z_new) S + exp(m − z_new) acc (every exponent ≤ 0).
    M, LS `[S, H, D]`, ACC `[S, H, D, E]`: the segments' softmax partials; one program per element tile."""
    i_e = tl.program_id(0)
    i_h = tl.program_id(1)
    i_n = tl.program_id(2)
    H = tl.num_programs(1)
    f = i_e * BLOCK_E + tl.arange(0, BLOCK_E)
    mf = f < D * E
    ch = f // E
    state = tl.zeros([BLOCK_E], dtype=tl.float32)
    z = tl.full([BLOCK_E], float("-inf"), dtype=tl.float32)
    lo = tl.load(SEQ_SEGS + i_n)
    hi = tl.load(SEQ_SEGS + i_n + 1)
    for idx in range(0, (hi - lo).to(tl.int32)):
        base = (lo + idx) * H + i_h
        tl.store(S_IN + base * D * E + f, state, mask=mf)
        tl.store(Z_IN + base * D + ch, z, mask=mf & (f % E == 0))
        ls = tl.load(LS + base * D + ch, mask=mf, other=1.0)
        full = ls > 0  # an empty sequence's one segment has l = 0, m = -inf: it changes nothing
        m = tl.where(full, tl.load(M + base * D + ch, mask=mf, other=0.0), 0.0)
        lse = m + tl.log(tl.maximum(ls, 1.0))  # l ≥ 1: the max token has weight 1
        top = tl.maximum(z, lse)
        z_new = top + tl.log(tl.exp(z - top) + tl.exp(lse - top))
        acc = tl.load(ACC + base * D * E + f, mask=mf, other=0.0)
        state = tl.where(full, state * tl.exp(z - z_new) + acc * tl.exp(m - z_new), state)
        z = tl.where(full, z_new, z)


@triton.jit
def causal_rev_local_kernel(
    Q, DO, Z, DQ, Z_IN, R, RHO, SEG,
    sq_t, sq_h, sdo_t, sdo_h,
    D: tl.constexpr, E: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK: tl.constexpr,
):
    """R[s] = Σ_{t in s} diag(exp(z_in − z_t)) q_tᵀ do_t, RHO[s] = Σ_{t in s} exp(z_in − z_t) ⊙ q_t ⊙ dq_t
    (float32, z_in = Z_IN[s], z one token before the segment); zeros for each sequence's first segment."""
    i_h = tl.program_id(0)
    i_s = tl.program_id(1)
    H = tl.num_programs(0)
    _, start, _, length, first = _segment(SEG, i_s, True)  # REVERSE: the flag is is_first
    ri = tl.arange(0, BLOCK)
    rd = tl.arange(0, BD)
    re = tl.arange(0, BE)
    md = rd < D
    me = re < E
    dt = DO.dtype.element_ty
    base = i_s.to(tl.int64) * H + i_h
    z_in = tl.load(Z_IN + base * D + rd, mask=md, other=0.0)
    acc = tl.zeros([BD, BE], dtype=tl.float32)
    rho = tl.zeros([BD], dtype=tl.float32)
    for t0 in range(0, tl.where(first != 0, 0, length), BLOCK):
        valid = t0 + ri < length
        pos = (start + t0 + ri)[:, None]
        vd = valid[:, None] & md[None, :]
        q = tl.load(Q + i_h * sq_h + pos * sq_t + rd[None, :], mask=vd, other=0.0).to(tl.float32)
        do = tl.load(DO + i_h * sdo_h + pos * sdo_t + re[None, :], mask=valid[:, None] & me[None, :], other=0.0)
        dq = tl.load(DQ + (pos * H + i_h) * D + rd[None, :], mask=vd, other=0.0)
        qz = q * tl.exp(z_in[None, :] - _zrows(Z, pos, H, i_h, D, rd, valid, md))
        acc += _dot(tl.trans(_cast(qz, dt, UPCAST)), do, PREC, UPCAST)
        rho += tl.sum(qz * dq, axis=0)
    tl.store(R + base * D * E + rd[:, None] * E + re[None, :], acc, mask=md[:, None] & me[None, :])
    tl.store(RHO + base * D + rd, rho, mask=md)


@triton.jit
def causal_rev_scan_kernel(
    LOCAL, G, OUT, SEQ_SEGS,
    D: tl.constexpr, W: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """OUT[s] for each segment of sequence n, walking its segments from the last with state 0:
    OUT[s] = state, then state ← diag(exp(G[s])) state + LOCAL[s]. LOCAL, OUT `[S, H, D, W]`,
    G = z_in − z_end ≤ 0 `[S, H, D]` (−inf for a sequence's first segment)."""
    i_e = tl.program_id(0)
    i_h = tl.program_id(1)
    i_n = tl.program_id(2)
    H = tl.num_programs(1)
    f = i_e * BLOCK_E + tl.arange(0, BLOCK_E)
    mf = f < D * W
    state = tl.zeros([BLOCK_E], dtype=tl.float32)
    lo = tl.load(SEQ_SEGS + i_n)
    hi = tl.load(SEQ_SEGS + i_n + 1)
    for idx in range(0, (hi - lo).to(tl.int32)):
        base = (hi - 1 - idx) * H + i_h
        tl.store(OUT + base * D * W + f, state, mask=mf)
        g = tl.load(G + base * D + f // W, mask=mf, other=0.0)
        state = state * tl.exp(g) + tl.load(LOCAL + base * D * W + f, mask=mf, other=0.0)

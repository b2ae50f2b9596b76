"""The backward of :func:`mm.ops.weighted_swiglu.weighted_swiglu` as one Triton kernel.

One program takes BLOCK_A rows and walks their f columns in BLOCK_F chunks: it reads g, u and dh
once, writes ∂g and ∂u, and keeps the row sum for ∂w in registers. Memory-bound; one fixed
configuration (no autotuning), the same under the interpreter with smaller blocks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mm.ops.triton_interpreter import INTERPRET


@triton.jit
def _backward_kernel(GU, W, DH, DGU, DW, A, F, stride_gu, stride_dh, stride_dgu,
                     BLOCK_A: tl.constexpr, BLOCK_F: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_A + tl.arange(0, BLOCK_A)
    m_row = rows < A
    rows64 = rows.to(tl.int64)[:, None]
    w = tl.load(W + rows, mask=m_row, other=0.0).to(tl.float32)[:, None]
    dw = tl.zeros([BLOCK_A], dtype=tl.float32)
    for f0 in range(0, F, BLOCK_F):
        cols = f0 + tl.arange(0, BLOCK_F)[None, :]
        m = m_row[:, None] & (cols < F)
        g = tl.load(GU + rows64 * stride_gu + cols, mask=m, other=0.0).to(tl.float32)
        u = tl.load(GU + rows64 * stride_gu + F + cols, mask=m, other=0.0).to(tl.float32)
        dh = tl.load(DH + rows64 * stride_dh + cols, mask=m, other=0.0).to(tl.float32)
        sig = tl.sigmoid(g)
        s = g * sig
        dw += tl.sum(dh * s * u, axis=1)
        dhw = dh * w
        dg = dhw * u * sig * (1.0 + g * (1.0 - sig))
        tl.store(DGU + rows64 * stride_dgu + cols, dg.to(DGU.dtype.element_ty), mask=m)
        tl.store(DGU + rows64 * stride_dgu + F + cols, (dhw * s).to(DGU.dtype.element_ty), mask=m)
    tl.store(DW + rows, dw.to(DW.dtype.element_ty), mask=m_row)


def weighted_swiglu_backward(gu: torch.Tensor, w: torch.Tensor, dh: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """gu [A, 2f], w [A], dh [A, f] -> (∂L/∂gu [A, 2f] in gu's dtype, ∂L/∂w [A] in w's dtype)."""
    A, F = dh.shape
    gu, dh, w = (t if t.stride(-1) == 1 else t.contiguous() for t in (gu, dh, w))
    dgu = torch.empty(A, 2 * F, device=gu.device, dtype=gu.dtype)
    dw = torch.empty(A, device=gu.device, dtype=w.dtype)
    block_a, block_f = (4, 16) if INTERPRET else (16, min(256, triton.next_power_of_2(F)))
    _backward_kernel[(triton.cdiv(A, block_a),)](
        gu, w, dh, dgu, dw, A, F, gu.stride(0), dh.stride(0), dgu.stride(0),
        BLOCK_A=block_a, BLOCK_F=block_f, num_warps=4,
    )
    return dgu, dw

"""Logits to per-row cross-entropy and, in place, to their gradient: one Triton program per row.

The program walks the row in BLOCK_V chunks twice: first an online logsumexp (running max m and
s = Σ exp(z − m), rescaled when m grows), then ∂L/∂z = exp(z − lse) − onehot(y) written over z.
Memory-bound. One fixed configuration (no autotuning), smaller blocks under the interpreter. On an
H200 with V = 32000, 8192-wide chunks and 16 warps ran at 1.40 ms for 32K rows, against 1.48 ms
for 4096 and 8 warps; a variant that holds the whole row in registers and reads it once was slower
(1.53 ms: one program per multiprocessor hides too little latency).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mm.ops.triton_interpreter import INTERPRET


@triton.jit
def _logits_to_grad_kernel(Z, LABELS, LOSS, V, stride_z, IGNORE: tl.constexpr, WRITE_GRAD: tl.constexpr,
                           BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    z_row = Z + row * stride_z
    label = tl.load(LABELS + row).to(tl.int64)
    m = float("-inf")
    s = 0.0
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        z = tl.load(z_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))  # finite: every chunk holds at least one column
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    valid = (label >= 0) & (label < V)
    target = tl.load(z_row + label, mask=valid, other=0.0).to(tl.float32)
    loss = tl.where(valid, lse - target, float("nan"))
    tl.store(LOSS + row, tl.where(label == IGNORE, 0.0, loss))
    if WRITE_GRAD:
        keep = tl.where(label == IGNORE, 0.0, 1.0)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            z = tl.load(z_row + cols, mask=cols < V, other=0.0).to(tl.float32)
            grad = (tl.exp(z - lse) - tl.where(cols == label, 1.0, 0.0)) * keep
            tl.store(z_row + cols, grad.to(Z.dtype.element_ty), mask=cols < V)


def logits_to_grad_(z: torch.Tensor, labels: torch.Tensor, ignore_index: int, write_grad: bool) -> torch.Tensor:
    """z [N, V] (unit stride along V), labels [N] -> ℓ [N] float32; with ``write_grad`` z is
    overwritten with ∂L/∂z (see :mod:`mm.ops.linear_cross_entropy`)."""
    if z.stride(1) != 1:
        raise ValueError(f"need logits with unit stride along the vocabulary, got strides {z.stride()}")
    n, vocab = z.shape
    loss = torch.empty(n, device=z.device, dtype=torch.float32)
    if n:
        block_v, warps = (16, 1) if INTERPRET else (min(8192, triton.next_power_of_2(vocab)), 16)
        _logits_to_grad_kernel[(n,)](z, labels, loss, vocab, z.stride(0), IGNORE=ignore_index, WRITE_GRAD=write_grad,
                                     BLOCK_V=block_v, num_warps=warps)
    return loss

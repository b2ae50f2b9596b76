"""SwiGLU activation scaled per row, the middle of an MoE expert:  h = silu(g) ⊙ u · w.

    gu [A, 2f] = [g | u] (one grouped matmul's output), w [A] routing weights  ->  h [A, f]

Backward, with s = silu(g) = g·σ(g) and dh = ∂L/∂h:
    ∂L/∂u = dh · w · s
    ∂L/∂g = dh · w · u · σ(g) · (1 + g · (1 − σ(g)))
    ∂L/∂w = Σ_f dh · s · u                                   (a sum along each row)

The forward is elementwise work that torch.compile fuses well. The backward on CUDA is one Triton
kernel: it reads g, u and dh once and writes [∂g | ∂u] and ∂w. Traced by autograd, it is two
passes over those operands, because inductor keeps the row sum and the elementwise part in separate
kernels. Elsewhere it runs the same formulas in torch (:func:`backward_reference`); the tests run
the kernel itself on CPU under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch

__all__ = ["weighted_swiglu", "backward_reference"]


def _check(gu: torch.Tensor, w: torch.Tensor) -> None:
    if gu.ndim != 2 or gu.shape[1] % 2 or w.shape != gu.shape[:1]:
        raise ValueError(f"need gu [A, 2f] and w [A], got {tuple(gu.shape)} and {tuple(w.shape)}")


def backward_reference(gu: torch.Tensor, w: torch.Tensor, dh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂gu in gu's dtype, ∂L/∂w in w's dtype), computed in float32 (float64 stays float64)."""
    ct = torch.promote_types(gu.dtype, torch.float32)
    g, u = gu.to(ct).chunk(2, dim=-1)
    dh, wc = dh.to(ct), w.to(ct)[:, None]
    sig = torch.sigmoid(g)
    s = g * sig
    dg = dh * wc * u * sig * (1 + g * (1 - sig))
    du = dh * wc * s
    return torch.cat([dg, du], dim=-1).to(gu.dtype), (dh * s * u).sum(-1).to(w.dtype)


class _WeightedSwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gu, w):
        ctx.save_for_backward(gu, w)
        g, u = gu.chunk(2, dim=-1)
        return torch.nn.functional.silu(g) * u * w.to(gu.dtype)[:, None]

    @staticmethod
    def backward(ctx, dh):
        gu, w = ctx.saved_tensors
        if gu.is_cuda:  # the tests run the kernel on CPU under the interpreter directly
            from mm.ops.weighted_swiglu.triton_kernel import weighted_swiglu_backward

            return weighted_swiglu_backward(gu, w, dh)
        return backward_reference(gu, w, dh)


def weighted_swiglu(gu: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """gu [A, 2f] = [g | u], w [A] -> silu(g) ⊙ u · w [A, f] in gu's dtype. Differentiable in both."""
    _check(gu, w)
    return _WeightedSwiGLU.apply(gu, w)

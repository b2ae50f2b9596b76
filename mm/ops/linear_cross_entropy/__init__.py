"""Summed cross-entropy of a linear layer's logits (the LM head), the logits' gradient made in the
forward so that the [N, V] logits never outlive it.

    z = x Wᵀ  [N, V] in the compute dtype (autocast's, else x's)
    ℓ_t = logsumexp(z_t) − z_t[y_t],  0 where y_t = ignore_index;   L = Σ_t ℓ_t        (float32)
    ∂L/∂z_t = softmax(z_t) − onehot(y_t),  0 where y_t = ignore_index
    ∂L/∂x = (∂L/∂z) W,   ∂L/∂W = (∂L/∂z)ᵀ x

The forward runs, for each chunk of rows, the logits matmul, one pass that turns the logits into
∂L/∂z in place and writes ℓ (a Triton kernel on CUDA: :mod:`.triton_kernel`, else
:func:`logits_to_grad_reference_`), then the two gradient matmuls. The backward only scales ∂L/∂x
and ∂L/∂W by the incoming gradient of L. Against logits → cross_entropy under autograd this saves
the passes of a separate loss kernel and its backward over the [N, V] logits, and the memory of
keeping them from forward to backward. With no gradient needed the forward stops after ℓ.

A label outside [0, V) other than ignore_index gives a NaN loss for its row (the kernel cannot
raise; the step is then skipped as non-finite and logged).
"""

from __future__ import annotations

import torch

from mm.ops.compute_dtype import compute_dtype

__all__ = ["linear_cross_entropy", "logits_to_grad_reference_", "IGNORE_INDEX"]

IGNORE_INDEX = -100
_CHUNK_ELEMENTS = 2**30  # logits held at once: 2 GiB in bf16


def logits_to_grad_reference_(z: torch.Tensor, labels: torch.Tensor, write_grad: bool) -> torch.Tensor:
    """z [N, V], labels [N] -> ℓ [N] float32; with ``write_grad`` z is overwritten with ∂L/∂z."""
    zf = z.float()
    vocab = z.shape[1]
    lse = zf.logsumexp(-1)
    ignored = labels == IGNORE_INDEX
    valid = (labels >= 0) & (labels < vocab)
    safe = labels.clamp(0, vocab - 1)[:, None]
    loss = (lse - zf.gather(1, safe)[:, 0]).masked_fill(~valid, float("nan")).masked_fill(ignored, 0.0)
    if write_grad:
        grad = (zf - lse[:, None]).exp()
        grad.scatter_add_(1, safe, -valid.float()[:, None])
        z.copy_(grad.masked_fill_(ignored[:, None], 0.0))
    return loss


def _logits_to_grad_(z: torch.Tensor, labels: torch.Tensor, write_grad: bool) -> torch.Tensor:
    if z.is_cuda:  # the tests run the kernel on CPU under the interpreter directly
        from mm.ops.linear_cross_entropy.triton_kernel import logits_to_grad_

        return logits_to_grad_(z, labels, IGNORE_INDEX, write_grad)
    return logits_to_grad_reference_(z, labels, write_grad)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, labels, dtype):
        need_dx, need_dw = ctx.needs_input_grad[:2]  # a frozen head (need_dw False) skips its matmul
        xc, wc = x.to(dtype), weight.to(dtype)
        n, vocab = x.shape[0], weight.shape[0]
        rows = max(1, _CHUNK_ELEMENTS // vocab)
        loss = torch.empty(n, device=x.device, dtype=torch.float32)
        dx = torch.empty_like(xc) if need_dx else None
        dw = torch.zeros(weight.shape, device=x.device, dtype=torch.float32) if need_dw else None
        with torch.autocast(x.device.type, enabled=False):
            for start in range(0, n, rows):
                part = slice(start, start + rows)
                z = xc[part] @ wc.T
                loss[part] = _logits_to_grad_(z, labels[part], need_dx or need_dw)
                if need_dx:
                    torch.mm(z, wc, out=dx[part])
                if need_dw:
                    dw += z.T @ xc[part]
        ctx.save_for_backward(dx, dw)
        ctx.dtypes = x.dtype, weight.dtype
        return loss.sum()

    @staticmethod
    def backward(ctx, grad):
        dx, dw = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        return (None if dx is None else (dx * grad).to(x_dtype), None if dw is None else (dw * grad).to(w_dtype),
                None, None)


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """x [N, h], weight [V, h], labels [N] (IGNORE_INDEX = skip) -> Σ_t ℓ_t, a float32 scalar;
    differentiable in x and weight. Runs in autocast's dtype when autocast is on, else in x's."""
    if x.ndim != 2 or weight.ndim != 2 or x.shape[1] != weight.shape[1] or labels.shape != x.shape[:1]:
        raise ValueError(f"need x [N, h], weight [V, h] and labels [N], got {tuple(x.shape)}, "
                         f"{tuple(weight.shape)} and {tuple(labels.shape)}")
    return _LinearCrossEntropy.apply(x, weight, labels, compute_dtype(x))

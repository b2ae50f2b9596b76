"""Weighted SwiGLU (the middle of an MoE expert): Triton backward and torch backward against autograd
of the plain formula in float64."""

import pytest
import torch

from mm.ops.weighted_swiglu import backward_reference, weighted_swiglu
from tests.ops.devices import on

F64 = torch.float64


def autograd_of_formula(gu, w, dh):
    gu, w = gu.detach().to(F64).requires_grad_(), w.detach().to(F64).requires_grad_()
    g, u = gu.chunk(2, dim=-1)
    h = torch.nn.functional.silu(g) * u * w[:, None]
    return h, *torch.autograd.grad(h, (gu, w), dh.to(F64))


def rel(x, ref):
    x, ref = x.detach().to(F64), ref.detach().to(F64)
    return float("inf") if not torch.isfinite(x).all() else ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


SHAPES = [on(d, A, f) for d, A, f in
          [("kernel", 1, 16), ("kernel", 13, 5), ("kernel", 37, 40), ("kernel", 64, 33), ("cuda", 1021, 1536),
           ("cuda", 3, 300)]]
DTYPES = [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)]


@pytest.mark.parametrize("device,A,f", SHAPES)
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_triton_backward_kernel(nan_poison, device, A, f, dtype, tol):
    """The kernel (compiled on CUDA, under the interpreter on CPU): one row, primes, widths past the
    column block (16 under the interpreter, 256 on a GPU)."""
    from mm.ops.weighted_swiglu.triton_kernel import weighted_swiglu_backward

    gu, w = (3 * torch.randn(A, 2 * f, device=device)).to(dtype), torch.rand(A, device=device)
    dh = torch.randn(A, f, device=device).to(dtype)
    _, dgu_ref, dw_ref = autograd_of_formula(gu, w, dh)
    dgu, dw = weighted_swiglu_backward(gu, w, dh)
    assert dgu.dtype == dtype and dw.dtype == torch.float32
    assert rel(dgu, dgu_ref) < tol and rel(dw, dw_ref) < tol


@pytest.mark.parametrize("device,A,f", [("cpu", 13, 5), on("cuda", 1021, 1536)])
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_forward_and_autograd(device, A, f, dtype, tol):
    """Through autograd: torch formulas on CPU, the kernel on CUDA."""
    gu = (3 * torch.randn(A, 2 * f, device=device)).to(dtype).requires_grad_()
    w, dh = torch.rand(A, device=device).requires_grad_(), torch.randn(A, f, device=device).to(dtype)
    h_ref, dgu_ref, dw_ref = autograd_of_formula(gu, w, dh)
    h = weighted_swiglu(gu, w)
    dgu, dw = torch.autograd.grad(h, (gu, w), dh)
    assert h.dtype == dgu.dtype == dtype and dw.dtype == torch.float32
    for name, x, r in [("h", h, h_ref), ("dgu", dgu, dgu_ref), ("dw", dw, dw_ref)]:
        assert rel(x, r) < tol, f"{name}: {rel(x, r):.2e}"


def test_torch_backward_matches_autograd():
    """The path CPU runs outside the interpreter and compiled CPU graphs take."""
    gu, w, dh = torch.randn(19, 2 * 7, dtype=F64), torch.rand(19, dtype=F64), torch.randn(19, 7, dtype=F64)
    _, dgu_ref, dw_ref = autograd_of_formula(gu, w, dh)
    dgu, dw = backward_reference(gu, w, dh)
    assert rel(dgu, dgu_ref) < 1e-12 and rel(dw, dw_ref) < 1e-12


def test_shape_errors():
    with pytest.raises(ValueError, match=r"gu \[A, 2f\]"):
        weighted_swiglu(torch.randn(4, 5), torch.rand(4))
    with pytest.raises(ValueError, match=r"w \[A\]"):
        weighted_swiglu(torch.randn(4, 6), torch.rand(3))

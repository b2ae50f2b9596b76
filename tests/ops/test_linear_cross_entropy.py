"""Linear + cross-entropy with the logits' gradient made in the forward: the Triton row kernel (under
the interpreter on CPU) and the torch pass against float64 autograd of log-softmax, then the whole
op against autograd of logits → cross_entropy."""

import pytest
import torch

from mm.ops import linear_cross_entropy as lce
from mm.ops.linear_cross_entropy import IGNORE_INDEX, linear_cross_entropy, logits_to_grad_reference_
from tests.ops.devices import on

F64 = torch.float64


def rel(x, ref):
    x, ref = x.detach().to(F64), ref.detach().to(F64)
    return float("inf") if not torch.isfinite(x).all() else ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def labels_for(n, vocab, device):
    """Random targets, one row ignored when there are several (the last target the vocabulary's last id)."""
    labels = torch.randint(0, vocab, (n,), device=device)
    labels[-1] = vocab - 1
    if n > 1:
        labels[n // 2] = IGNORE_INDEX
    return labels


def formula(z, labels):
    """Per-row loss and ∂(Σ loss)/∂z by float64 autograd of log-softmax; ignored rows 0."""
    z = z.detach().to(F64).requires_grad_()
    keep = labels != IGNORE_INDEX
    logp = z.log_softmax(-1).gather(1, labels.clamp(min=0)[:, None])[:, 0]
    loss = -logp * keep
    return loss, torch.autograd.grad(loss.sum(), z)[0]


def run_kernel(z, labels, write_grad):
    from mm.ops.linear_cross_entropy.triton_kernel import logits_to_grad_

    return logits_to_grad_(z, labels, IGNORE_INDEX, write_grad)


PASSES = {"triton": run_kernel, "torch": logits_to_grad_reference_}
SHAPES = [("cpu", 1, 16), ("cpu", 7, 37), ("cpu", 5, 48), ("cpu", 3, 1), ("cpu", 4, 11),
          ("cuda", 131, 32000), ("cuda", 3, 50021), ("cuda", 2, 5)]


def cases(shapes):
    """Each shape through each pass: (device, pass, n, vocab); the kernel's "cpu" shapes run on
    KERNEL_DEVICE (the interpreter on CPU, compiled on CUDA)."""
    kernel_device = lambda name, d: "kernel" if name == "triton" and d == "cpu" else d
    return [on(kernel_device(name, d), fn, n, v, id=f"{name}-{kernel_device(name, d)}-{n}-{v}")
            for name, fn in PASSES.items() for d, n, v in shapes]
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)]  # float32: z − lse rounds at |z| ≈ 400


@pytest.mark.parametrize("device,logits_to_grad,n,vocab", cases(SHAPES))
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_logits_to_grad(nan_poison, device, logits_to_grad, n, vocab, dtype, tol):
    """One row, a prime vocabulary past the block (16 under the interpreter, 8192 on a GPU), an exact
    multiple of it, one block, V = 1;
    large logits (a plain exp would overflow), the largest in the first chunk of a row (exp of the
    later chunks against their own maximum would overflow too)."""
    z = 30 * torch.randn(n, vocab, device=device)
    z[0, 0] = 400
    z = z.to(dtype)
    labels = labels_for(n, vocab, device)
    loss_ref, grad_ref = formula(z, labels)
    untouched = z.clone()
    loss = logits_to_grad(untouched, labels, False)
    assert torch.equal(untouched, z), "without write_grad the logits stay as they were"
    assert loss.dtype == torch.float32 and rel(loss, loss_ref) < tol
    loss = logits_to_grad(z, labels, True)
    assert rel(loss, loss_ref) < tol and rel(z, grad_ref) < tol
    if n > 1:
        assert (z[n // 2] == 0).all() and loss[n // 2] == 0


@pytest.mark.parametrize("device,logits_to_grad,n,vocab", cases([("cpu", 3, 20), ("cuda", 3, 20)]))
def test_label_out_of_range_gives_nan(device, logits_to_grad, n, vocab):
    z, labels = torch.randn(n, vocab, device=device), torch.tensor([4, vocab, -5], device=device)
    loss = logits_to_grad(z, labels, True)
    assert torch.isfinite(loss[0]) and loss[1:].isnan().all()


def reference(x, weight, labels, scale, dtype):
    """(Σ loss, ∂/∂x, ∂/∂W) of scale · Σ cross_entropy(x Wᵀ) by autograd, the matmul in ``dtype``."""
    x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
    z = (x.to(dtype) @ weight.to(dtype).T).float()
    loss = torch.nn.functional.cross_entropy(z, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, *torch.autograd.grad(scale * loss, (x, weight))


@pytest.mark.parametrize("device,n,vocab,h,chunk_rows", [
    ("cpu", 13, 37, 8, 4), ("cpu", 1, 5, 3, 4), ("cpu", 13, 37, 8, 100),
    on("cuda", 1000, 32000, 256, 300),
])
def test_against_autograd_of_cross_entropy(monkeypatch, device, n, vocab, h, chunk_rows):
    """float64 on CPU, bf16 autocast on CUDA; several chunks of rows with a short last one, and an
    upstream gradient other than 1 (the backward scales)."""
    monkeypatch.setattr(lce, "_CHUNK_ELEMENTS", chunk_rows * vocab)
    dtype = F64 if device == "cpu" else torch.bfloat16
    x = torch.randn(n, h, device=device, dtype=F64 if device == "cpu" else torch.float32).requires_grad_()
    weight = torch.randn(vocab, h, device=device, dtype=x.dtype).requires_grad_()
    labels = labels_for(n, vocab, device)
    loss_ref, dx_ref, dw_ref = reference(x, weight, labels, 0.37, dtype)
    with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
        loss = linear_cross_entropy(x, weight, labels)
    dx, dw = torch.autograd.grad(0.37 * loss, (x, weight))
    tol = 1e-6 if device == "cpu" else 1e-2  # the loss pass runs in float32
    assert loss.dtype == torch.float32 and dx.dtype == dw.dtype == x.dtype
    for name, got, want in [("loss", loss, loss_ref), ("dx", dx, dx_ref), ("dw", dw, dw_ref)]:
        assert rel(got, want) < tol, f"{name}: {rel(got, want):.2e}"


def test_no_grad_gives_the_loss_alone():
    x, weight, labels = torch.randn(6, 4), torch.randn(9, 4), labels_for(6, 9, "cpu")
    with torch.no_grad():
        loss = linear_cross_entropy(x.requires_grad_(), weight, labels)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, reference(x, weight, labels, 1.0, torch.float32)[0])


@pytest.mark.parametrize("frozen", ["x", "weight"])
def test_frozen_input_gets_no_gradient(frozen):
    """A frozen LM head (or frozen features) gets None and the other input its usual gradient."""
    x, weight, labels = torch.randn(6, 4, dtype=F64), torch.randn(9, 4, dtype=F64), labels_for(6, 9, "cpu")
    _, dx_ref, dw_ref = reference(x, weight, labels, 1.0, F64)
    x.requires_grad_(frozen != "x")
    weight.requires_grad_(frozen != "weight")
    linear_cross_entropy(x, weight, labels).backward()
    assert (x.grad is None) == (frozen == "x") and (weight.grad is None) == (frozen == "weight")
    got, want = (weight.grad, dw_ref) if frozen == "x" else (x.grad, dx_ref)
    assert rel(got, want) < 1e-6


def test_shape_errors():
    with pytest.raises(ValueError, match=r"x \[N, h\], weight \[V, h\] and labels \[N\]"):
        linear_cross_entropy(torch.randn(4, 5), torch.randn(9, 6), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels \[N\]"):
        linear_cross_entropy(torch.randn(4, 5), torch.randn(9, 5), torch.zeros(3, dtype=torch.long))

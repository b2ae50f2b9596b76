"""Grouped matmul: the native and padded paths against a per-group loop, with gradients."""

import pytest
import torch

from mm.ops.grouped_mm import grouped_mm, grouped_mm_padded, grouped_mm_reference


@pytest.mark.parametrize("fn", [grouped_mm, grouped_mm_padded])
@pytest.mark.parametrize("k, n, counts", [(16, 8, [3, 0, 7]), (12, 20, [1]), (7, 5, [2, 5, 0, 1]), (16, 16, [0, 0])])
def test_matches_loop_with_gradients(fn, k, n, counts):
    offsets = torch.tensor(counts).cumsum(0)
    x = torch.randn(sum(counts), k, dtype=torch.float32, requires_grad=True)
    w = torch.randn(len(counts), k, n, requires_grad=True)
    x_ref, w_ref = (t.detach().clone().requires_grad_() for t in (x, w))
    out, ref = fn(x, w, offsets), grouped_mm_reference(x_ref, w_ref, offsets)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(ref)
    (out * grad).sum().backward()
    (ref * grad).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=1e-5)


def test_shape_errors():
    with pytest.raises(ValueError, match="offsets"):
        grouped_mm(torch.randn(4, 8), torch.randn(2, 8, 4), torch.tensor([4]))
    with pytest.raises(ValueError, match="x \\[N, k\\]"):
        grouped_mm(torch.randn(4, 8), torch.randn(2, 6, 4), torch.tensor([2, 4]))

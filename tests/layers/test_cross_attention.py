"""Masked cross-attention (text conditioning) against its definition, written out in float64."""

from __future__ import annotations

import pytest
import torch

from mm.layers.cross_attention import CrossAttention, check_cond_mask
from tests.ops.devices import PRECISIONS, autocast


def reference(layer: CrossAttention, x, cond, mask):
    """y = W_o softmax(q kᵀ / sqrt(d) + M) v per head, M = -inf at padding; float64, one row at a time."""
    h, d = layer.heads, layer.head_dim
    rows = []
    for b in range(x.shape[0]):
        c = cond[b][mask[b]].double()  # real tokens only
        q = (x[b].double() @ layer.q.weight.double().T).view(-1, h, d)
        k, v = (c @ layer.kv.weight.double().T).view(-1, h, 2 * d).split(d, dim=-1)
        w = torch.softmax(torch.einsum("thd,shd->hts", q, k) / d ** 0.5, dim=-1)
        o = torch.einsum("hts,shd->thd", w, v).reshape(x.shape[1], h * d)
        rows.append(o @ layer.out.weight.double().T + layer.out.bias.double())
    return torch.stack(rows)


@pytest.mark.parametrize("device,dtype", PRECISIONS)
def test_matches_the_definition_and_ignores_padding(device, dtype):
    layer = CrossAttention(hidden=10, cond_dim=7, heads=3, head_dim=5).to(device)
    assert not layer(torch.randn(2, 4, 10, device=device), torch.randn(2, 3, 7, device=device),
                     torch.ones(2, 3, dtype=torch.bool, device=device)).any()  # zero-initialised output
    torch.nn.init.normal_(layer.out.weight)
    x, cond = torch.randn(3, 13, 10, device=device), torch.randn(3, 6, 7, device=device)
    mask = torch.tensor([[1, 0, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]], dtype=torch.bool, device=device)
    with autocast(device, dtype):
        y = layer(x, cond, mask)
        y_padded = layer(x, torch.where(mask[..., None], cond, torch.randn_like(cond) * 100), mask)
    tol = 3e-2 if dtype else 1e-5
    torch.testing.assert_close(y.double(), reference(layer, x, cond, mask), rtol=tol, atol=tol)
    torch.testing.assert_close(y_padded, y, rtol=0, atol=0)


def test_mask_checks():
    cond = torch.randn(2, 4, 3)
    assert check_cond_mask(cond, None).all()
    with pytest.raises(ValueError, match=r"rows \[0\] have no real token"):
        check_cond_mask(cond, torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool))
    with pytest.raises(ValueError, match=r"bool \[B, L\] = \(2, 4\)"):
        check_cond_mask(cond, torch.ones(2, 5, dtype=torch.bool))

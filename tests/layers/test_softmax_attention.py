"""Softmax attention over packed documents in each precision: FlashAttention varlen on CUDA under
bf16 autocast, SDPA with the block-diagonal causal mask in float32 and on the CPU."""

import pytest
import torch

from mm.layers import softmax_attention
from mm.layers.packing import document_ids, document_positions
from mm.layers.rotary import rotary_cos_sin
from mm.layers.softmax_attention import SoftmaxAttention
from tests.ops.devices import PRECISIONS, autocast


def rel(x, ref):
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    return ((x - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("device,dtype", PRECISIONS)
def test_packed_documents_equal_each_alone(monkeypatch, device, dtype):
    """Three documents in two rows (one row holds two) give each document's output alone; the path
    taken is varlen exactly when the dtype allows it; a leak across the boundary would move the output
    by O(1), far above the bf16 tolerance."""
    layer = SoftmaxAttention(hidden=64, heads=4, kv_heads=2, head_dim=16).to(device)
    x = torch.randn(2, 13, 64, device=device)
    cu = torch.tensor([0, 6, 13, 26], device=device)
    rope = rotary_cos_sin(document_positions(cu, 2, 13), 8, 1e4)
    calls = []
    varlen = softmax_attention.SoftmaxAttention.varlen_output
    monkeypatch.setattr(softmax_attention.SoftmaxAttention, "varlen_output",
                        lambda *a: calls.append(1) or varlen(*a))
    with torch.no_grad(), autocast(device, dtype):
        packed = layer(x, rope, cu, document_ids(cu, 2, 13))
        pieces = [(0, slice(0, 6)), (0, slice(6, 13)), (1, slice(0, 13))]
        alone = [layer(x[r : r + 1, s], rotary_cos_sin(torch.arange(s.stop - s.start, device=device)[None], 8, 1e4))
                 for r, s in pieces]
        leaked = layer(x[:1], rotary_cos_sin(torch.arange(13, device=device)[None], 8, 1e4))[:, 6:]
    assert bool(calls) == (device == "cuda" and dtype is not None)
    tol = 1e-5 if dtype is None else 2e-2
    for (r, s), want in zip(pieces, alone, strict=True):
        assert rel(packed[r : r + 1, s], want) < tol
    assert rel(leaked, alone[1]) > 10 * tol

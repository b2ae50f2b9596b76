import math

import pytest
import torch

from mm.layers.packing import check_cu_seqlens, document_ids, document_positions
from mm.layers.rotary import apply_rotary, rotary_cos_sin


def test_rotary_matches_pairwise_rotation():
    B, T, H, d, r = 2, 5, 3, 8, 4
    x = torch.randn(B, T, H, d, dtype=torch.float64)
    pos = torch.arange(T).expand(B, T)
    cos, sin = rotary_cos_sin(pos, r, theta=100.0)
    y = apply_rotary(x, cos.double(), sin.double())
    for t in range(T):
        for i in range(r // 2):
            angle = t * 100.0 ** (-2 * i / r)
            x1, x2 = x[:, t, :, i], x[:, t, :, i + r // 2]
            c, s = math.cos(angle), math.sin(angle)
            torch.testing.assert_close(y[:, t, :, i], x1 * c - x2 * s, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(y[:, t, :, i + r // 2], x2 * c + x1 * s, rtol=1e-6, atol=1e-6)
    assert torch.equal(y[..., r:], x[..., r:])  # dims beyond rotary_dim untouched


def test_rotary_scores_depend_on_relative_position_only():
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)

    def score(pq, pk):
        cq, sq = rotary_cos_sin(torch.tensor([[pq]]), 8, 10_000.0)
        ck, sk = rotary_cos_sin(torch.tensor([[pk]]), 8, 10_000.0)
        return (apply_rotary(q, cq.double(), sq.double()) * apply_rotary(k, ck.double(), sk.double())).sum()

    torch.testing.assert_close(score(7, 3), score(14, 10))


def test_document_ids_and_positions():
    cu = torch.tensor([0, 3, 4, 6, 8, 10, 12])  # B=2, T=6: row 0 = docs of 3, 1, 2; row 1 = 2, 2, 2
    check_cu_seqlens(cu, 2, 6)
    assert document_ids(cu, 2, 6).tolist() == [[0, 0, 0, 1, 2, 2], [3, 3, 4, 4, 5, 5]]
    assert document_positions(cu, 2, 6).tolist() == [[0, 1, 2, 0, 0, 1], [0, 1, 0, 1, 0, 1]]


@pytest.mark.parametrize("cu, message", [
    ([0, 3, 6, 11], "from 0 to B\\*T"),
    ([0, 3, 3, 6, 12], "strictly increasing"),
    ([0, 4, 8, 12], "row start"),
])
def test_cu_seqlens_errors(cu, message):
    with pytest.raises(ValueError, match=message):
        check_cu_seqlens(torch.tensor(cu), 2, 6)

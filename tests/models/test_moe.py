"""Mixture of experts against a per-token loop; capacity dropping; auxiliary losses."""

import pytest
import torch

from mm.layers.moe import MoE


def make(experts=4, top_k=2, **kw):
    moe = MoE(hidden=8, ffn=12, experts=experts, top_k=top_k, **kw)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return moe


def reference(moe, x, capacity=None):
    """Each token: Σ over its top-k experts of weight · SwiGLU_e(x); assignments beyond capacity dropped."""
    _, weights, ids = moe.route(x)
    y = torch.zeros_like(x)
    taken = [0] * moe.experts
    for e in range(moe.experts):  # capacity is filled in token order within each expert
        for t in range(x.shape[0]):
            for j in range(moe.top_k):
                if ids[t, j] != e:
                    continue
                taken[e] += 1
                if capacity is not None and taken[e] > capacity:
                    continue
                h = x[t] @ moe.gate_up[e]
                h = torch.nn.functional.silu(h[: moe.ffn]) * h[moe.ffn :]
                y[t] += weights[t, j] * (h @ moe.down[e])
    return y


def run_both(moe, tokens, capacity=None):
    """The layer and the loop on one random input; outputs compared. Returns (x, y, x_ref, ref, stats)."""
    x = torch.randn(tokens, 8, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, stats = moe(x)
    ref = reference(moe, x_ref, capacity)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    return x, y, x_ref, ref, stats


def assert_same_gradients(moe, x, y, x_ref, ref):
    """Gradients of <y, g> and <ref, g> for one random g, w.r.t. the input and every parameter."""
    grad = torch.randn_like(y)
    params = list(moe.parameters())
    got = torch.autograd.grad((y * grad).sum(), [x, *params])
    want = torch.autograd.grad((ref * grad).sum(), [x_ref, *params], allow_unused=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, torch.zeros_like(g) if w is None else w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("experts, top_k, tokens", [(4, 2, 13), (3, 1, 1), (5, 3, 7), (8, 2, 31), (300, 2, 9)])
def test_matches_per_token_loop_with_gradients(experts, top_k, tokens):
    moe = make(experts, top_k)
    x, y, x_ref, ref, stats = run_both(moe, tokens)
    assert int(stats.tokens_per_expert.sum()) == tokens * top_k and int(stats.dropped) == 0
    assert_same_gradients(moe, x, y, x_ref, ref)


def test_expert_without_tokens():
    """An expert no token picks: an empty group in the grouped matmuls, zero gradient for its weights."""
    moe = make(4, 2)
    with torch.no_grad():
        moe.gate.weight[2] = -moe.gate.weight.abs().sum(0) * 10  # expert 2 scores lowest for any x >= 0
    x = torch.rand(11, 8)
    y, stats = moe(x)
    assert int(stats.tokens_per_expert[2]) == 0
    torch.testing.assert_close(y, reference(moe, x), rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y)
    gate_up, down = torch.autograd.grad((y * grad).sum(), [moe.gate_up, moe.down])
    assert gate_up[2].abs().max() == 0 and down[2].abs().max() == 0 and gate_up.abs().sum() > 0


@pytest.mark.parametrize("tokens", [16, 13])
def test_capacity_drops_counts_and_gradients(tokens):
    moe = make(4, 2, capacity_factor=0.5)
    capacity = -(-tokens // 4)  # ceil(0.5 · N · 2 / 4)
    x, y, x_ref, ref, stats = run_both(moe, tokens, capacity)
    expected = int((stats.tokens_per_expert - capacity).clamp(min=0).sum())
    assert int(stats.dropped) == expected > 0
    assert_same_gradients(moe, x, y, x_ref, ref)


def test_router_in_float32_under_autocast():
    """The router's logits are float32 products even when autocast would run a Linear in bf16."""
    moe = make(4, 2)
    x = torch.randn(6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _, _ = moe.route(x)
        y, _ = moe(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(logits, x @ moe.gate.weight.T, rtol=1e-6, atol=1e-6)


def test_router_weights_renormalised_and_aux_loss_even_routing():
    moe = make(4, 2)
    _, weights, _ = moe.route(torch.randn(9, 8))
    torch.testing.assert_close(weights.sum(-1), torch.ones(9))
    with torch.no_grad():
        moe.gate.weight.zero_()  # uniform probabilities: aux = E · Σ (c_e / N)(1/E) = k
    _, stats = moe(torch.randn(32, 8))
    torch.testing.assert_close(stats.aux_loss, torch.tensor(2.0))
    torch.testing.assert_close(stats.z_loss, torch.log(torch.tensor(4.0)) ** 2)


def test_shared_expert_adds_dense_path():
    moe = make(4, 2, shared_ffn=6)
    x = torch.randn(5, 8)
    y, _ = moe(x)
    torch.testing.assert_close(y, reference(moe, x) + moe.shared(x), rtol=1e-5, atol=1e-5)

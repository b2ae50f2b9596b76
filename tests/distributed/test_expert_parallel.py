"""Expert parallelism on 2 gloo processes equals the single-process MoE on each rank's tokens:
outputs, router statistics, every gradient (experts, router, shared expert, input), gathered load."""

import copy

import pytest
import torch
import torch.distributed as dist

from mm.distributed.expert_parallel import apply_expert_parallel, gathered_expert_load
from mm.layers.moe import MoE
from tests.distributed.spawn import spawn

TOKENS = (9, 5)  # uneven: ranks send and receive different row counts


def _moe(capacity_factor):
    torch.manual_seed(5)
    moe = MoE(hidden=8, ffn=12, experts=4, top_k=2, shared_ffn=6, capacity_factor=capacity_factor).double()
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return moe


def _check(rank, world, capacity_factor):
    gen = torch.Generator().manual_seed(17)
    xs = [torch.randn(n, 8, generator=gen, dtype=torch.float64) for n in TOKENS]
    ws = [torch.randn(n, 8, generator=gen, dtype=torch.float64) for n in TOKENS]
    ref = _moe(capacity_factor)
    ref_x = [x.clone().requires_grad_() for x in xs]
    ref_out = [ref(x) for x in ref_x]
    sum((y * w).sum() for (y, _), w in zip(ref_out, ws, strict=True)).backward()

    moe = apply_expert_parallel(copy.deepcopy(_moe(capacity_factor)))
    x = xs[rank].clone().requires_grad_()
    y, stats = moe(x)
    (y * ws[rank]).sum().backward()

    tol = dict(rtol=1e-10, atol=1e-12)
    y_ref, stats_ref = ref_out[rank]
    torch.testing.assert_close(y, y_ref.detach(), **tol)
    torch.testing.assert_close(x.grad, ref_x[rank].grad, **tol)
    assert torch.equal(stats.tokens_per_expert, stats_ref.tokens_per_expert)
    assert int(stats.dropped) == int(stats_ref.dropped)
    torch.testing.assert_close(stats.aux_loss, stats_ref.aux_loss)
    lo, hi = 2 * rank, 2 * rank + 2  # this rank's experts
    torch.testing.assert_close(moe.gate_up.grad, ref.gate_up.grad[lo:hi], **tol)
    torch.testing.assert_close(moe.down.grad, ref.down.grad[lo:hi], **tol)
    for name in ("gate.weight", "shared.w1.weight"):  # replicated: per-rank shares sum to the whole
        grad = dict(moe.named_parameters())[name].grad.clone()
        dist.all_reduce(grad)
        torch.testing.assert_close(grad, dict(ref.named_parameters())[name].grad, **tol)
    load = gathered_expert_load(moe)
    assert torch.equal(load[0], sum(s.tokens_per_expert for _, s in ref_out))
    return int(stats_ref.dropped)


def _worker(rank, world):
    assert _check(rank, world, capacity_factor=0.0) == 0
    dropped = torch.tensor(_check(rank, world, capacity_factor=0.6))
    dist.all_reduce(dropped)
    assert dropped > 0  # the capacity case really drops


def test_expert_parallel_matches_single_process(tmp_path):
    spawn(_worker, 2, tmp_path)


def test_rejects_models_without_moe():
    with pytest.raises(ValueError, match="no MoE"):
        apply_expert_parallel(torch.nn.Linear(2, 2))

"""LASP ring and all-gather on 4 gloo processes equal the single-process op: outputs, states, every gradient."""

import pytest
import torch
import torch.distributed as dist

from mm.distributed.lasp import lasp_attn
from mm.ops.lightning_attn import lightning_attn
from tests.distributed.spawn import spawn

B, H, D, E = 2, 3, 5, 4


def _check(group, lens, mode):
    """One sequence split into ``lens`` over ``group``; float64, fresh inputs shared by all ranks."""
    gen = torch.Generator().manual_seed(sum(lens) * 7 + len(mode))
    T = sum(lens)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    q, k, v, w_o = rnd(B, T, H, D), rnd(B, T, H, D), rnd(B, T, H, E), rnd(B, T, H, E)
    h0, w_f = rnd(B, H, D, E), rnd(B, H, D, E)
    slopes = torch.rand(H, generator=gen, dtype=torch.float64) * 0.8 + 0.05
    leaves = [t.clone().requires_grad_() for t in (q, k, v, h0)]
    o_ref, f_ref = lightning_attn(*leaves[:3], slopes, initial_state=leaves[3], output_final_state=True,
                                  backend="reference")
    ((o_ref * w_o).sum() + (f_ref * w_f).sum()).backward()

    r, P = dist.get_rank(group), dist.get_world_size(group)
    assert P == len(lens)
    sl = slice(sum(lens[:r]), sum(lens[: r + 1]))
    mine = [t[:, sl].clone().requires_grad_() for t in (q, k, v)] + [h0.clone().requires_grad_()]
    o, f = lasp_attn(*mine[:3], slopes, group=group, mode=mode, initial_state=mine[3], output_final_state=True)
    loss = (o * w_o[:, sl]).sum() + ((f * w_f).sum() if r == P - 1 else 0.0)
    loss.backward()

    tol = dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(o, o_ref[:, sl].detach(), **tol)
    _, f_prefix = lightning_attn(q[:, : sl.stop], k[:, : sl.stop], v[:, : sl.stop], slopes, initial_state=h0,
                                 output_final_state=True, backend="reference")
    torch.testing.assert_close(f, f_prefix, **tol)  # the state after this rank's chunk
    for got, ref in zip(mine[:3], leaves[:3], strict=True):
        torch.testing.assert_close(got.grad, ref.grad[:, sl], **tol)
    d_h0 = mine[3].grad.clone()
    assert r == 0 or d_h0.abs().max() == 0  # read on rank 0 only
    dist.all_reduce(d_h0, group=group)
    torch.testing.assert_close(d_h0, leaves[3].grad, **tol)


def _check_bf16(mode):
    """bf16 chunks (fp32 states on the wire) against the float32 op on the whole sequence."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 4 * 8, 2, 16, generator=gen) * 0.5 for _ in range(3))
    slopes = torch.tensor([0.3, 0.05])
    o_ref, f_ref = lightning_attn(q, k, v, slopes, output_final_state=True, backend="reference")
    r = dist.get_rank()
    sl = slice(8 * r, 8 * r + 8)
    o, f = lasp_attn(*(t[:, sl].bfloat16() for t in (q, k, v)), slopes, mode=mode, output_final_state=True)
    assert o.dtype == torch.bfloat16 and f.dtype == torch.float32
    torch.testing.assert_close(o.float(), o_ref[:, sl], rtol=2e-2, atol=2e-2)
    if r == 3:
        torch.testing.assert_close(f, f_ref, rtol=2e-2, atol=2e-2)


def _worker(rank, world):
    world_group = dist.group.WORLD
    # Non-contiguous subgroups {0, 2} and {1, 3} (a DP x SP layout); every rank builds every group.
    pairs = [dist.new_group([0, 2]), dist.new_group([1, 3])]
    pair = pairs[rank % 2]
    for mode in ("ring", "allgather"):
        _check(world_group, [5, 3, 1, 7], mode)  # uneven chunks
        _check(world_group, [4, 0, 6, 2], mode)  # an empty chunk passes the state through
        _check(pair, [9, 4] if rank % 2 else [6, 6], mode)
        _check_bf16(mode)


def test_lasp_matches_single_process(tmp_path):
    spawn(_worker, 4, tmp_path)


def test_lasp_rejects_unknown_mode():
    q = torch.zeros(1, 2, 1, 4)
    with pytest.raises(ValueError, match="'tree'"):
        lasp_attn(q, q, q, torch.ones(1), mode="tree")

"""Checkpoint and clipping pieces of expert parallelism (:class:`mm.distributed.expert_state.ExpertShards`,
``Layout.clip_grad_norm_``) on 2 gloo processes against one process holding every expert. The
training run that uses them is tests/distributed/test_ep_train.py; its tiny LM's expert gradients
are too small next to the embeddings' to show in the global norm, hence the check here."""

import re

import pytest
import torch

from mm.config import ConfigError
from mm.distributed.mesh import ParallelConfig, parallelize_lm
from mm.train.recipe import load_recipe_config
from mm.train.recipes.lm import LMRecipe
from tests.distributed.spawn import spawn
from tests.distributed.test_lm_parallel import B, _assert_grads, _layout_batch, _loss, _model, _reference
from tests.train.test_lm_recipe import TINY


def _check_expert_state(rank, world):
    """dp = ep = 2 on the hybrid MoE LM of test_lm_parallel (4 experts, float64, weights far from the
    init): the clipped gradients, one AdamW step, the gathered weights and moments, and the way back."""
    ids, labels = _layout_batch()
    ref, _ = _reference()  # after backward on all B rows
    model, layout = parallelize_lm(_model(), ParallelConfig(ep=2), device_type="cpu")
    rows, mine = slice(rank * B // world, (rank + 1) * B // world), slice(rank * 2, rank * 2 + 2)
    _, loss, _ = _loss(model, ids[rows], labels[rows])
    (loss / labels.numel()).backward()
    layout.reduce_gradients(model)
    own = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    norm, norm_ref = layout.clip_grad_norm_(model, 0.5), torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
    torch.testing.assert_close(norm, norm_ref, rtol=1e-6, atol=0)
    assert norm_ref > 0.5 and abs(own - norm_ref) > 1e-3 * norm_ref  # clips; one rank's experts alone miss
    _assert_grads(model, ref, expert_rows=mine)

    opt, opt_ref = torch.optim.AdamW(model.parameters(), lr=0.1), torch.optim.AdamW(ref.parameters(), lr=0.1)
    opt.step()
    opt_ref.step()
    shards = layout.experts
    whole_opt = shards.whole_optimizer_state(opt)
    with shards.gathered():
        whole = {k: v.clone() for k, v in model.state_dict().items()}
    ema = shards.whole_named({n: p.detach() for n, p in model.named_parameters()})
    if rank == 0:  # the single-process layout, every expert
        for name, value in ref.state_dict().items():
            torch.testing.assert_close(whole[name], value, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
            torch.testing.assert_close(ema[name], value, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
        for i, moments in opt_ref.state_dict()["state"].items():
            for key, value in moments.items():
                torch.testing.assert_close(whole_opt["state"][i][key], value, rtol=1e-4, atol=1e-9)
    assert whole["layers.0.mlp.gate_up"].shape[0] == (4 if rank == 0 else 2)

    # back: a single-process state loads into the EP model, each rank taking its rows
    gate_up = model.layers[0].mlp.gate_up
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    with shards.loading():
        model.load_state_dict(ref.state_dict())
    assert model.layers[0].mlp.gate_up is gate_up  # the optimizer's parameters, refilled
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    shards.load_optimizer_state(fresh, opt_ref.state_dict())
    experts = {id(p) for n, p in model.named_parameters() if n.endswith(("gate_up", "down"))}
    for (name, p), p_ref in zip(model.named_parameters(), ref.parameters(), strict=True):
        cut = mine if id(p) in experts else slice(None)
        assert torch.equal(p.detach(), p_ref.detach()[cut]), name
        assert torch.equal(fresh.state[p]["exp_avg_sq"], opt_ref.state[p_ref]["exp_avg_sq"][cut]), name
        assert torch.equal(shards.local_named({name: p_ref.detach()})[name], p_ref.detach()[cut]), name
    with pytest.raises(ValueError, match="3 experts do not split over 2"):
        shards.local(torch.zeros(3, 2), "layers.0.mlp.down")


def test_expert_shards_and_clipping_match_one_process(tmp_path):
    spawn(_check_expert_state, 2, tmp_path)


@pytest.mark.parametrize("override, message", [
    ("model.experts=0", "parallel.ep=2 needs an MoE model whose model.experts is a multiple of it"),
    ("model.experts=3", "got model.experts=3"),
    ("compile=true", "compile: true is not supported with parallel.sp=1, parallel.ep=2"),
])
def test_lm_recipe_refuses_expert_parallelism_it_cannot_apply(override, message):
    """Before any process group is needed: a ConfigError (exit 2) naming the keys."""
    recipe = LMRecipe(load_recipe_config("configs/lm_tiny.yaml", [*TINY, override]))
    with pytest.raises(ConfigError, match=re.escape(message)):
        recipe.parallelize(torch.nn.Identity(), ParallelConfig(ep=2), torch.device("cpu"))

"""`mm train` with expert parallelism under torchrun on CPU (gloo, 2 processes, ``parallel.ep=2``):
each rank keeps 2 of the 4 experts of every MoE layer and trains on its own rows (dp = 2), and the
run equals one process on the same global batch (issue 20, "Expert parallelism").

The single-process reference reads the same samples as the two ranks (see
tests/distributed/test_train_torchrun.py: 2 loader workers and ``grad_accum=2`` in one process =
micro-batch k of global workers 0 and 1 at step k). Checkpoints written under EP hold every expert
in the single-process layout (weights, AdamW moments, moving average), so they load strictly into a
one-process model and resume there; the EP run resumes its own checkpoint exactly. ``grad_clip``
is on (lm_tiny: 1.0) and clips here; the logged norm (both ranks' experts, the rest once) equals the
one of the single process. This LM's expert gradients are too small next to the embeddings' to show
in that norm: tests/distributed/test_expert_state.py checks the sum over the experts on its own.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mm.train.checkpoint import load_train_state, load_weights
from mm.train.recipe import load_recipe_config
from mm.train.recipes.lm import LMRecipe
from mm.train.run_log import read_metrics
from tests.distributed.test_train_torchrun import ONE_RANK_READS_BOTH, STEPS, _args, _losses, _torchrun, write_shards
from tools.cli import main

EMA = "train.ema=0.9"  # the moving average of the experts is gathered too


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("text"))


def _step_dir(run_dir, step):
    return run_dir / "checkpoints" / f"step_{step:08d}"


def _assert_same_checkpoint(ours, theirs):
    """Weights and moving average equal to 1e-5 (float32 sums in another order); every AdamW moment
    to 1e-4 of itself or 1e-5 of its tensor's largest entry (second moments are ~1e-8)."""
    for file in ("model.safetensors", "ema.safetensors"):
        got, want = load_file(ours / file), load_file(theirs / file)
        assert sorted(got) == sorted(want), file
        for key, tensor in want.items():
            torch.testing.assert_close(got[key], tensor, atol=1e-5, rtol=1e-4,
                                       msg=lambda m, k=f"{file} {key}": f"{k}: {m}")
    got, want = load_train_state(ours)["optimizer"]["state"], load_train_state(theirs)["optimizer"]["state"]
    assert sorted(got) == sorted(want) and want  # moments of every parameter
    for i, moments in want.items():
        for key, value in moments.items():
            atol = 1e-5 * value.abs().max().item()
            torch.testing.assert_close(got[i][key], value, atol=atol, rtol=1e-4,
                                       msg=lambda m, k=f"{i} {key}": f"{k}: {m}")


def _grad_norms(run_dir):
    return [r["grad_norm"] for r in read_metrics(run_dir) if r["split"] == "train"]


def _assert_losses(run_dir, reference, steps):
    ref, got = _losses(reference), _losses(run_dir)
    assert sorted(got) == list(steps)
    for step in steps:
        assert abs(got[step] - ref[step]) < 1e-5, (step, got[step], ref[step])


@pytest.mark.slow
def test_expert_parallel_matches_one_process_and_checkpoints_hold_every_expert(shards, tmp_path):
    reference = tmp_path / "single"
    assert main(["train", *_args(shards, reference, *ONE_RANK_READS_BOTH, EMA)]) == 0

    run_dir, log = tmp_path / "ep", tmp_path / "torchrun.log"
    ep = ("data.stream.num_workers=0", "parallel.ep=2", EMA)
    assert _torchrun(2, _args(shards, run_dir, *ep), log) == 0, log.read_text()[-3000:]
    _assert_losses(run_dir, reference, range(1, STEPS + 1))
    assert abs(_losses(run_dir, "eval")[STEPS] - _losses(reference, "eval")[STEPS]) < 1e-5
    norms, norms_ref = _grad_norms(run_dir), _grad_norms(reference)  # both ranks' experts, shared ones once
    assert norms == pytest.approx(norms_ref, rel=1e-5) and max(norms_ref) > 1.0  # grad_clip = 1.0 clipped
    for step in (2, STEPS):
        _assert_same_checkpoint(_step_dir(run_dir, step), _step_dir(reference, step))

    # the checkpoint loads strictly into a single-process model (all 4 experts of every layer)
    final = _step_dir(run_dir, STEPS)
    model = LMRecipe(load_recipe_config(str(final / "config.yaml"), [])).build_model()
    load_weights(final, model)
    assert model.layers[0].mlp.gate_up.shape[0] == 4

    # one process resumes it, the two ranks' data streams read in turn (one micro-batch each): its
    # last step is the global batch of the EP run's; the EP run resumes it exactly
    resumed = tmp_path / "resumed1"
    assert main(["train", *_args(shards, resumed, "data.stream.num_workers=0", "train.grad_accum=2", EMA),
                 "--resume", str(_step_dir(run_dir, 2))]) == 0
    _assert_losses(resumed, reference, [STEPS])
    again = tmp_path / "ep_resumed"
    code = _torchrun(2, [*_args(shards, again, *ep), "--resume", str(_step_dir(run_dir, 2))], log)
    assert code == 0, log.read_text()[-3000:]
    _assert_losses(again, reference, [STEPS])
    _assert_same_checkpoint(_step_dir(again, STEPS), _step_dir(reference, STEPS))

"""The `vl` recipe under torchrun on CPU (gloo, DDP): two processes train the same steps as one process
with the same global batch, through the adapter-only warm-up and the switch to adapter + LM (DDP
rebuilt by ``follow_trainable``) with the vision tower frozen throughout and (in the two-process run
only) activation checkpointing on, and the checkpoint of the two-process run is what
`mm eval caption` loads (issue 16, "Training"). The losses agree to float32 rounding (1e-5).

The single-process reference reads the same samples: one process with 2 loader workers and
``grad_accum=2`` consumes, at step k, micro-batch k of global workers 0 and 1, which two DDP ranks of
one (in-process) worker each consume at step k (see tests/distributed/test_train_torchrun.py). One
VQA source: a mix of sources draws a source per micro-batch, so one process with ``grad_accum=2``
draws two sources per step where two ranks draw one for both; the global batches then differ (by
design: every rank of a step reads the same source).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from mm.demo import CONFIGS
from mm.demo_vl import write_vl_data
from mm.train.run_log import read_metrics
from tests.distributed.test_train_torchrun import _losses, _torchrun
from tools.cli import main

STEPS = 4  # 2 adapter-only steps, then 2 of adapter + LM


def _args(train, heldout, run_dir, workers: int, *extra: str) -> list[str]:
    source = (f"{{name: vqa, kind: vqa, weight: 1.0, image: {{size: 48}}, stream: {{shards: [{train}], "
              f"batch_size: 4, shuffle_buffer: 8, num_workers: {workers}, samples_per_epoch: 1000}}}}")
    return [str(CONFIGS / "vl_tiny.yaml"), f"data.sources=[{source}]", f"eval.caption_shards=[{heldout}]",
            f"eval.vqa_shards=[{heldout}]", "eval.batches=1",
            "stages=[{steps: 2, train: [adapter]}, {steps: 0, train: [adapter, lm]}]",
            "model.lm.hidden=32", "model.lm.heads=2", "model.lm.kv_heads=2", "model.lm.head_dim=16",
            "model.lm.rotary_dim=8", "model.lm.ffn=32", "model.lm.experts=2", "model.vision.options.embed_dim=16",
            "schedule.warmup_steps=0", "optim.lr_scale={adapter: 3.0}", "train.progress=false",
            "train.log_every=1", f"train.steps={STEPS}", "run.device=cpu", f"run.dir={run_dir}", *extra]


@pytest.fixture(scope="module")
def vl_shards(tmp_path_factory):
    return write_vl_data(tmp_path_factory.mktemp("vl"), train=60, heldout=4)


@pytest.mark.slow  # ~30 s on 2 cores: two trainings, torchrun's start-up and Java's for the caption scores
def test_vl_ddp_two_processes_match_one_process_and_mm_eval_loads_it(vl_shards, tmp_path):
    train, heldout = vl_shards
    reference = tmp_path / "single"
    assert main(["train", *_args(train, heldout, reference, 2, "train.grad_accum=2")]) == 0
    run_dir, log = tmp_path / "ddp", tmp_path / "torchrun.log"
    checkpointed = "train.activation_checkpointing=true"  # under DDP too: the same gradients
    assert _torchrun(2, _args(train, heldout, run_dir, 0, checkpointed), log) == 0, log.read_text()[-3000:]

    ref, got = _losses(reference), _losses(run_dir)
    assert sorted(got) == sorted(ref) == list(range(1, STEPS + 1))
    for step in ref:
        assert abs(got[step] - ref[step]) < 1e-5, (step, got[step], ref[step])
    ref_eval, got_eval = (next(r for r in read_metrics(d) if r["split"] == "eval") for d in (reference, run_dir))
    for key in ("vqa/loss", "vqa/blind_loss", "caption/loss"):
        assert abs(got_eval[key] - ref_eval[key]) < 1e-5, (key, got_eval[key], ref_eval[key])
    final = f"checkpoints/step_{STEPS:08d}/model.safetensors"
    ours, theirs = load_file(run_dir / final), load_file(reference / final)
    start = _initial_weights(_args(train, heldout, reference, 0))
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, atol=1e-5, rtol=1e-4, msg=name)
        # the frozen tower stays as it was; image_newline takes no part without any-res tiles
        unused = name.startswith("vision.") or name == "image_newline"
        assert torch.equal(ours[name], start[name]) == unused, name

    ckpt = run_dir / "checkpoints" / f"step_{STEPS:08d}"
    # Caption metrics run on Java (the COCO toolkit); where there is none (the GPU image) VQA scores it.
    task, metric = ("caption", "CIDEr-D") if shutil.which("java") else ("vqa", "accuracy")
    out = tmp_path / f"{task}.json"
    assert main(["eval", task, str(ckpt), "--shards", str(heldout), "--batch-size", "4",
                 "--max-new-tokens", "4", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["items"] >= 4 and metric in report["scores"] and metric in report["blind"]


def _initial_weights(args: list[str]) -> dict[str, torch.Tensor]:
    """The weights both runs start from (the trainer seeds with ``run.seed``, then builds the model)."""
    from mm.train.recipe import load_recipe_config
    from mm.train.recipes.vl import VLRecipe
    from mm.train.seed import seed_everything

    cfg = load_recipe_config(args[0], args[1:])
    seed_everything(cfg.run.seed)
    return VLRecipe(cfg).build_model().state_dict()

"""The `vl` recipe under torchrun on CPU (gloo, DDP and FSDP2): two processes train the same steps as
one process with the same global batch, through the adapter-only warm-up and the switch to adapter +
LM (DDP rebuilt by ``follow_trainable``; FSDP2 follows ``requires_grad`` at each unshard) with the
vision tower frozen throughout and (in the two-process runs only) activation checkpointing on; the
checkpoint of the DDP run is what `mm eval caption` loads, the DCP checkpoint of the FSDP run
resumes in one process, data position included (issue 16, "Training"). The losses agree to float32
rounding (1e-5).

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
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

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


@pytest.fixture(scope="module")
def reference(vl_shards, tmp_path_factory):
    """One process, global batch = 2 micro-batches of 4 samples from 2 loader workers."""
    train, heldout = vl_shards
    run_dir = tmp_path_factory.mktemp("vl_single") / "run"
    assert main(["train", *_args(train, heldout, run_dir, 2, "train.grad_accum=2")]) == 0
    return run_dir


def _assert_same_losses(run_dir, reference, steps=range(1, STEPS + 1)):
    ref, got = _losses(reference), _losses(run_dir)
    assert sorted(got) == list(steps)
    for step in steps:
        assert abs(got[step] - ref[step]) < 1e-5, (step, got[step], ref[step])
    ref_eval, got_eval = (next(r for r in read_metrics(d) if r["split"] == "eval") for d in (reference, run_dir))
    for key in ("vqa/loss", "vqa/blind_loss", "caption/loss"):
        assert abs(got_eval[key] - ref_eval[key]) < 1e-5, (key, got_eval[key], ref_eval[key])


def _assert_same_weights(ours: dict, reference, start: dict) -> None:
    theirs = load_file(reference / f"checkpoints/step_{STEPS:08d}/model.safetensors")
    assert sorted(ours) == sorted(theirs)
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, atol=1e-5, rtol=1e-4, msg=name)
        # the frozen tower stays as it was; image_newline takes no part without any-res tiles
        unused = name.startswith("vision.") or name == "image_newline"
        assert torch.equal(ours[name], start[name]) == unused, name


@pytest.mark.slow  # ~30 s on 2 cores: two trainings, torchrun's start-up and Java's for the caption scores
def test_vl_ddp_two_processes_match_one_process_and_mm_eval_loads_it(vl_shards, reference, tmp_path):
    train, heldout = vl_shards
    run_dir, log = tmp_path / "ddp", tmp_path / "torchrun.log"
    checkpointed = "train.activation_checkpointing=true"  # under DDP too: the same gradients
    assert _torchrun(2, _args(train, heldout, run_dir, 0, checkpointed), log) == 0, log.read_text()[-3000:]

    _assert_same_losses(run_dir, reference)
    ours = load_file(run_dir / f"checkpoints/step_{STEPS:08d}/model.safetensors")
    _assert_same_weights(ours, reference, _initial_weights(_args(train, heldout, reference, 0)))

    ckpt = run_dir / "checkpoints" / f"step_{STEPS:08d}"
    # Caption metrics run on Java (the COCO toolkit); where there is none (the GPU image) VQA scores it.
    task, metric = ("caption", "CIDEr-D") if shutil.which("java") else ("vqa", "accuracy")
    out = tmp_path / f"{task}.json"
    assert main(["eval", task, str(ckpt), "--shards", str(heldout), "--batch-size", "4",
                 "--max-new-tokens", "4", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["items"] >= 4 and metric in report["scores"] and metric in report["blind"]


@pytest.mark.slow  # ~20 s on 2 cores: torchrun's start-up, a two-process and a one-process training
def test_vl_fsdp_two_processes_match_one_process_and_dcp_resumes_in_one(vl_shards, reference, tmp_path):
    """FSDP2 shards every block and the root (tower, adapter and ``image_newline`` in the root's
    group). Every training batch runs the tower (each sample has an image), so all ranks all-gather
    the same groups in the same order; frozen and unused parameters get no gradient on any rank
    and are left out of the reduce-scatter alike."""
    train, heldout = vl_shards
    run_dir, log = tmp_path / "fsdp", tmp_path / "torchrun.log"
    sharded = ("parallel.fsdp=true", "train.activation_checkpointing=true", "checkpoint.every=2")
    assert _torchrun(2, _args(train, heldout, run_dir, 0, *sharded), log) == 0, log.read_text()[-3000:]

    _assert_same_losses(run_dir, reference)
    final = run_dir / "checkpoints" / f"step_{STEPS:08d}"
    assert (final / "dcp" / ".metadata").is_file() and not (final / "model.safetensors").exists()
    dcp_to_torch_save(final / "dcp", tmp_path / "whole.pt")  # the shards of both ranks as whole tensors
    ours = torch.load(tmp_path / "whole.pt", weights_only=True)["model"]
    _assert_same_weights(ours, reference, _initial_weights(_args(train, heldout, reference, 0)))

    # one process resumes the DCP checkpoint of step 2 (the end of the adapter-only stage): weights,
    # optimizer and both ranks' data streams continue exactly (read in turn, one micro-batch each)
    resumed = tmp_path / "resumed"
    assert main(["train", *_args(train, heldout, resumed, 0, "train.grad_accum=2"),
                 "--resume", str(run_dir / "checkpoints" / "step_00000002")]) == 0
    _assert_same_losses(resumed, reference, steps=range(3, STEPS + 1))
    _assert_same_weights(load_file(resumed / f"checkpoints/step_{STEPS:08d}/model.safetensors"), reference,
                         _initial_weights(_args(train, heldout, reference, 0)))


def _initial_weights(args: list[str]) -> dict[str, torch.Tensor]:
    """The weights both runs start from (the trainer seeds with ``run.seed``, then builds the model)."""
    from mm.train.recipe import load_recipe_config
    from mm.train.recipes.vl import VLRecipe
    from mm.train.seed import seed_everything

    cfg = load_recipe_config(args[0], args[1:])
    seed_everything(cfg.run.seed)
    return VLRecipe(cfg).build_model().state_dict()

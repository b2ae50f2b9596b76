"""The training loop: exact resume, seeds, non-finite steps, signals, run outputs."""

import json
import signal

import pytest
import torch

from mm.train.checkpoint import load_weights
from mm.train.recipe import load_recipe_config
from mm.train.run_log import read_metrics
from mm.train.trainer import Trainer, TrainingDiverged
from tests.train.toy_recipe import ToyRecipe


def make(tmp_path, run, *overrides):
    path = tmp_path / "toy.yaml"
    path.write_text("recipe: toy\ntrain:\n  log_every: 1\n  progress: false\n  grad_accum: 2\n"
                    "  eval_every: 2\nschedule:\n  warmup_steps: 2\noptim:\n  lr: 0.02\n")
    cfg = load_recipe_config(path, [f"run.dir={tmp_path / run}", *overrides])
    return Trainer(ToyRecipe(cfg))


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"}


def test_resume_gives_identical_losses(tmp_path):
    full = make(tmp_path, "full", "train.steps=8").fit()
    # Same run, stopped by SIGTERM during step 6 after a periodic checkpoint at step 4.
    part = make(tmp_path, "part", "train.steps=8", "checkpoint.every=4",
                "checkpoint.keep_last=3", "model.signal_at_step=6").fit()
    assert part.interrupted_by == signal.SIGTERM and part.step == 6
    assert part.checkpoint.name == "step_00000006"
    ref = losses(full.run_dir)
    assert losses(part.run_dir) == {s: ref[s] for s in range(1, 7)}

    resumed = make(tmp_path, "part", "train.steps=8", "checkpoint.keep_last=3").fit(resume="latest")
    assert resumed.step == 8 and resumed.interrupted_by is None
    assert losses(resumed.run_dir) == ref  # steps 7-8 replayed exactly; no duplicate records
    assert resumed.eval_metrics == full.eval_metrics

    step4 = tmp_path / "part" / "checkpoints"
    make(tmp_path, "from4", "train.steps=8").fit(resume=str(step4 / "step_00000004"))
    got = losses(tmp_path / "from4")
    assert got == {s: ref[s] for s in range(5, 9)}


def test_same_seed_repeats_and_other_seed_differs(tmp_path):
    a = losses(make(tmp_path, "a", "train.steps=3").fit().run_dir)
    b = losses(make(tmp_path, "b", "train.steps=3").fit().run_dir)
    c = losses(make(tmp_path, "c", "train.steps=3", "run.seed=1").fit().run_dir)
    assert a == b and a != c


def test_nonfinite_step_is_skipped_and_counted(tmp_path):
    clean = make(tmp_path, "clean", "train.steps=3", "checkpoint.every=1").fit()
    bad = make(tmp_path, "bad", "train.steps=3", "model.nan_at_steps=[3]").fit()
    records = [r for r in read_metrics(bad.run_dir) if r["split"] == "train"]
    assert records[-1]["loss"] is None and records[-1]["nonfinite_steps"] == 1
    # step 3 made no update: the weights equal those after step 2 of the clean run
    after2 = make(tmp_path, "x", "train.steps=3").recipe.build_model()
    load_weights(clean.run_dir / "checkpoints" / "step_00000002", after2)
    final = make(tmp_path, "y", "train.steps=3").recipe.build_model()
    load_weights(bad.checkpoint, final)
    assert all(torch.equal(p, q) for p, q in zip(after2.parameters(), final.parameters(), strict=True))


def test_consecutive_nonfinite_steps_stop_the_run(tmp_path):
    trainer = make(tmp_path, "div", "train.steps=10", "checkpoint.every=1", "train.max_nonfinite=3",
                   "model.nan_at_steps=[3,4,5]")
    with pytest.raises(TrainingDiverged, match=r"step 5: 3 consecutive.*step_00000002"):
        trainer.fit()


def test_run_directory_outputs(tmp_path):
    result = make(tmp_path, "out", "train.steps=12").fit()
    run = result.run_dir
    assert "recipe: toy" in (run / "config.yaml").read_text()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "eval"}
    assert {"loss", "lr", "grad_norm", "samples_per_s", "nonfinite_steps"} <= set(records[0])
    assert list((run / "tb").iterdir()), "TensorBoard event files expected"
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curve = losses(run)
    assert sum(curve[s] for s in (10, 11, 12)) < sum(curve[s] for s in (1, 2, 3)), "the toy regression should learn"


def test_deterministic_switch_sets_torch_flags(tmp_path):
    trainer = make(tmp_path, "det", "train.steps=1", "run.deterministic=true")
    try:
        trainer.fit()
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        from mm.train.seed import set_deterministic

        set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()

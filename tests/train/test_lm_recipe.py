"""The `lm` recipe through the real command: synthetic shards, train, resume, evaluate."""

import shutil

import pytest

from data_pipelines.shards.writer import ShardWriterConfig
from data_pipelines.synthetic.text import TextSynthConfig
from data_pipelines.synthetic.write import write_synthetic
from mm.train.run_log import read_metrics
from tools.cli import main

TINY = ["model.hidden=32", "model.heads=2", "model.kv_heads=1", "model.head_dim=16", "model.rotary_dim=8",
        "model.ffn=24", "data.seq_len=64", "data.stream.batch_size=4", "data.stream.num_workers=1",
        "train.log_every=1", "train.progress=false", "eval.batches=2", "schedule.warmup_steps=2"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    for split, n, seed in (("train", 300, 0), ("heldout", 40, 1)):
        write_synthetic("text", TextSynthConfig(num_samples=n, seed=seed),
                        ShardWriterConfig(out_dir=str(root / split), maxcount=100))
    return [f"data.stream.shards=[{root / 'train'}]", f"eval.shards=[{root / 'heldout'}]"]


def train_losses(run):
    return {r["step"]: r["loss"] for r in read_metrics(run) if r["split"] == "train"}


def test_train_resume_equals_uninterrupted_run(tmp_path, shards, capsys):
    base = ["train", "configs/lm_tiny.yaml", *TINY, *shards, "train.steps=6", "train.eval_every=3",
            "checkpoint.every=3"]
    assert main([*base, f"run.dir={tmp_path / 'full'}"]) == 0
    ref = train_losses(tmp_path / "full")
    out = capsys.readouterr().out
    assert "eval loss" in out and "checkpoint:" in out
    # Drop the last checkpoint: resuming from step 3 replays steps 4-6 (a data loader worker included).
    shutil.rmtree(tmp_path / "full" / "checkpoints" / "step_00000006")
    assert main([*base, f"run.dir={tmp_path / 'full'}", "--resume", "latest"]) == 0
    assert train_losses(tmp_path / "full") == ref
    records = read_metrics(tmp_path / "full")
    assert {"router/max_load", "router/aux_loss", "data/samples_ok"} <= set(records[0])
    assert {"loss", "unigram_loss", "perplexity"} <= set(next(r for r in records if r["split"] == "eval"))

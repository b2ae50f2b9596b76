"""The `lm` recipe through the real command: synthetic shards, train, resume, evaluate."""

import shutil

import pytest
import torch

from mm.train.run_log import read_metrics
from tools.cli import main

TINY = ["model.hidden=32", "model.heads=2", "model.kv_heads=1", "model.head_dim=16", "model.rotary_dim=8",
        "model.ffn=24", "data.seq_len=64", "data.stream.batch_size=4", "data.stream.num_workers=1",
        "train.log_every=1", "train.progress=false", "eval.batches=2", "schedule.warmup_steps=2"]


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
    assert {"router/max_load", "router/dropped_frac", "router/expert_share/3", "router/aux_loss",
            "data/samples_ok"} <= set(records[0])
    assert {"loss", "unigram_loss", "perplexity"} <= set(next(r for r in records if r["split"] == "eval"))


def test_document_masking_switch():
    from mm.train.recipe import load_recipe_config
    from mm.train.recipes.lm import LMRecipe

    recipes = {m: LMRecipe(load_recipe_config("configs/lm_tiny.yaml", [*TINY, f"document_masking={m}"]))
               for m in (True, False)}
    model = recipes[True].build_model()
    ids = torch.randint(0, 256, (2, 64))
    batch = {"input_ids": ids, "labels": ids, "cu_seqlens": torch.tensor([0, 20, 64, 100, 128])}
    plain = model(ids, labels=ids).loss.item()
    # Off: one causal stream per row, whatever the boundaries say; on: the documents are separate.
    def loss(masking: bool) -> float:
        recipe = recipes[masking]
        return recipe.loss(model, recipe.device_batch(batch)).loss.item()

    assert loss(False) == pytest.approx(plain, rel=1e-6)
    assert loss(True) != pytest.approx(plain, rel=1e-6)


def test_router_metrics_report_each_experts_share():
    from types import SimpleNamespace

    from mm.train.recipes.lm import router_metrics

    zero = torch.zeros(())
    out = SimpleNamespace(tokens_per_expert=torch.tensor([[6, 2, 0, 0], [2, 2, 2, 2]]), dropped=torch.tensor(3),
                          lm_loss=zero, aux_loss=zero, z_loss=zero)
    metrics = router_metrics(out)
    assert [metrics[f"router/expert_share/{e}"].item() for e in range(4)] == [0.5, 0.25, 0.125, 0.125]
    assert metrics["router/max_load"].item() == 2.0  # layer 0: 6 / 2, layer 1: 2 / 2
    assert metrics["router/dropped_frac"].item() == 3 / 16

"""benchmarks/expert_parallel.py runs under torchrun (2 gloo ranks, --tiny) and writes every row: replicated
experts (DDP and all-reduce after backward) and EP=2, with the same first-step loss; its GPU shape builds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.expert_parallel import SHAPES
from mm.distributed.expert_state import expert_parameters
from mm.models.lm import LM, LMConfig

REPO = Path(__file__).resolve().parents[2]


def test_tiny_run_writes_every_row(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "benchmarks/expert_parallel.py", "--tiny", "--steps", "3", "--warmup", "1", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "expert_parallel.json").read_text())
    assert results["command"].startswith("python ") and "--tiny" in results["command"]
    assert results["device"] == "cpu" and results["date"]
    rows = {r["method"]: r for r in results["sections"]["training step"]}
    assert list(rows) == ["replicated (DDP)", "replicated (all-reduce after backward)", "EP=2"]
    for row in rows.values():
        assert row["tokens_per_s"] > 0 and row["ms_per_step"] > 0 and row["peak_mem_gib"] is None, row
        assert row["same_first_loss"] and row["first_loss_rel_diff"] <= 1e-4, row  # float32 on CPU
        assert 0 < row["last_loss"] < row["first_loss"] < 10, row  # it trains
    ddp, replicated, ep = rows.values()
    assert ddp["speedup_vs_ddp"] == 1 and ddp["a2a_share"] == 0 == replicated["a2a_share"]
    assert 0 < ep["a2a_share"] < 1  # the exchanges were timed
    for row in (replicated, ep):  # the same updates: the same loss after the last step
        assert abs(row["last_loss"] - ddp["last_loss"]) <= 1e-3 * ddp["last_loss"], (row, ddp)
    # tiny shape: 2 MoE layers of 4 experts, each expert [w1 | w3] 2·64×32 and w2 32×64
    assert round(ddp["expert_params_per_rank_M"] * 1e6) == 2 * 4 * 3 * 64 * 32
    assert ep["expert_params_per_rank_M"] == ddp["expert_params_per_rank_M"] / 2
    rest = [round((r["params_per_rank_M"] - r["expert_params_per_rank_M"]) * 1e6) for r in (ddp, ep)]
    assert rest[0] == rest[1] > 0  # everything else stays replicated
    text = (tmp_path / "expert_parallel.md").read_text()
    assert "## training step" in text and "| EP=2 |" in text and "2 rank(s) (gloo, float32)" in text


def test_gpu_shape_is_large_and_splits():
    """The default model (built on the meta device: no memory, no GPU) spends most of its parameters in
    experts that split over 2, 4 and 8 GPUs, and replicating them costs real memory."""
    kwargs, rows, seq = SHAPES["gpu"]
    with torch.device("meta"):
        model = LM(LMConfig(**kwargs))
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for p in expert_parameters(model).values())
    assert experts == kwargs["layers"] * kwargs["experts"] * 3 * kwargs["hidden"] * kwargs["ffn"]
    assert experts / total > 0.8 and 16 * experts / 2**30 > 15  # fp32 weights + grads + AdamW moments, GiB
    assert all(kwargs["experts"] % gpus == 0 for gpus in (2, 4, 8))
    assert 1024 <= kwargs["hidden"] <= 2048 and rows * seq >= 8192

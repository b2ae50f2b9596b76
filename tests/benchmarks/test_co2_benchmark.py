"""benchmarks/co2.py runs under torchrun (2 gloo ranks, --tiny) and writes every row: local, DDP and
CO2 at each tau, with throughput, communication share and loss curves."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_tiny_run_writes_every_row(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "benchmarks/co2.py",
           "--tiny", "--steps", "4", "--warmup", "1", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "co2.json").read_text())
    assert results["command"].startswith("python ") and results["device"] and results["date"]
    rows = {r["method"]: r for r in results["sections"]["throughput"]}
    assert list(rows) == ["local", "ddp", "co2 τ=1", "co2 τ=4", "co2 τ=12"]
    for row in rows.values():
        assert row["tokens_per_s"] > 0 and row["ms_per_step"] > 0 and 0 <= row["comm_share"] < 1, row
        assert 0 < row["heldout_loss"] < 10, row
    assert rows["local"]["comm_share"] == 0 and rows["ddp"]["speedup_vs_ddp"] == 1
    curves = results["sections"]["training loss (mean over ranks)"]
    assert [c["step"] for c in curves] == [1, 2, 3, 4, 5]  # warm-up + timed steps
    first = {v for k, v in curves[0].items() if k != "step"}
    assert len(first) == 1  # every method starts from the same model on the same batch
    text = (tmp_path / "co2.md").read_text()
    assert "## throughput" in text and "co2 τ=12" in text and "2 rank(s) (gloo)" in text

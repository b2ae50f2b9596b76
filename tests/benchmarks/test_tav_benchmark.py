"""The TAVDiffusion benchmark runs end to end at tiny size on the CPU and writes every row."""

import json
import math
import time

import pytest
import torch

from benchmarks import tav_diffusion
from mm.threads import one_thread


def test_tiny_run_writes_every_row(tmp_path):
    with one_thread():
        text = tav_diffusion.main(["--tiny", "--out", str(tmp_path), "--row-budget", "5", "--no-compile"])
    results = json.loads((tmp_path / "tav_diffusion.json").read_text())
    assert (tmp_path / "tav_diffusion.md").read_text() == text
    assert results["command"].startswith("python ")
    rows = {r["row"]: r for r in results["sections"]["sampling and training"]}
    models = [*tav_diffusion.PEERS, tav_diffusion.VAE, *tav_diffusion.OURS]
    assert set(rows) == {*models, "peers: two streams that never meet"}
    for name in models:
        assert rows[name]["params (M)"] > 0 and rows[name]["eager s/clip"] > 0, rows[name]
    for name in [*tav_diffusion.PEERS, *tav_diffusion.OURS]:  # CUDA graphs: on CUDA only
        assert rows[name].get("CUDA graph s/clip", 0) > 0 if torch.cuda.is_available() else \
            "CUDA graph s/clip" not in rows[name]
    peers = rows["peers: two streams that never meet"]
    assert math.isclose(peers["eager s/clip"], sum(rows[n]["eager s/clip"] for n in tav_diffusion.PEERS))
    vae = rows[tav_diffusion.VAE]["eager s/clip"]
    for name in ("peers: two streams that never meet", *tav_diffusion.OURS):
        best = min(rows[name]["eager s/clip"], rows[name].get("CUDA graph s/clip", math.inf))
        assert math.isclose(rows[name]["best s/clip + VAE decode"], best + vae)
    for name in ("ours UNet, couple all", "ours LightNet", "peers: two streams that never meet"):
        assert rows[name]["train samples/s"] > 0, rows[name]
    assert "failed" not in json.dumps(results) and "skipped" not in json.dumps(results)
    assert "goal <= 2 s" in text and "LightNet faster" in text


def test_long_runs_are_timed_short_and_scaled():
    """A run that cannot be timed whole within the budget is timed over fewer steps, scaled to all."""
    calls = []

    def run(steps):
        calls.append(steps)
        time.sleep(0.004 * steps)

    seconds, how = tav_diffusion.time_sampling(run, steps=400, budget_s=0.3)
    assert 400 not in calls and calls[:2] == [2, 5]
    assert 1.2 <= seconds < 2.4 and "steps ×" in how
    seconds, how = tav_diffusion.time_sampling(run, steps=10, budget_s=1.0)
    assert calls[-2:] == [10, 10] and how == "2× 10 steps" and 0.03 <= seconds < 0.08


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graphed_replays_the_function_on_new_inputs():
    lin = torch.nn.Linear(8, 8).cuda()
    graphed = tav_diffusion.Graphed(lambda x: (lin(x).relu(),))
    for _ in range(3):
        x = torch.randn(4, 8, device="cuda")
        torch.testing.assert_close(graphed(x)[0], lin(x).relu())

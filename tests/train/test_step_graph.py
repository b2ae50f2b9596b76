"""A training step recorded as a CUDA graph: input checks and set-up errors on CPU; on a GPU the
replayed run equals the eager one, skips a non-finite step on the device, and resumes exactly."""

import copy

import pytest
import torch

from mm.config import ConfigError
from mm.cuda_graph import StepGraph, copy_into
from mm.train.checkpoint import load_weights
from mm.train.recipe import load_recipe_config
from mm.train.run_log import read_metrics
from tests.train.test_lm_recipe import TINY, train_losses
from tests.train.test_trainer import losses, make
from tools.cli import main

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def test_copy_into_fills_the_recorded_buffers():
    recorded = [{"x": torch.zeros(2, 3), "n": None, "pair": (torch.zeros(1), 4)}]
    new = [{"x": torch.randn(2, 3), "n": None, "pair": (torch.ones(1), 4)}]
    copy_into(recorded, new)
    assert torch.equal(recorded[0]["x"], new[0]["x"]) and recorded[0]["pair"][0].item() == 1.0


@pytest.mark.parametrize("new, named", [
    ([{"x": torch.zeros(3, 3), "n": None}], r"batch\[0\]\.x was \[2, 3\] torch.float32 .* now \[3, 3\]"),
    ([{"x": torch.zeros(2, 3, dtype=torch.int64), "n": None}], r"batch\[0\]\.x .* now \[2, 3\] torch.int64"),
    ([{"x": torch.zeros(2, 3)}], r"batch\[0\] had keys \['n', 'x'\] when recorded, now \['x'\]"),
    ([{"x": torch.zeros(2, 3), "n": 5}], r"batch\[0\]\.n was None when recorded, now 5"),
    ([], r"batch held 1 items when recorded"),
])
def test_copy_into_names_what_changed(new, named):
    with pytest.raises(ValueError, match=named):
        copy_into([{"x": torch.zeros(2, 3), "n": None}], new, "batch")


def test_cuda_graph_needs_a_gpu(tmp_path):
    with pytest.raises(ValueError, match=r"train.cuda_graph needs a CUDA device, got run.device='cpu'"):
        make(tmp_path, "g", "train.cuda_graph=true", "run.device=cpu").fit()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="need a CUDA device"):
            StepGraph(lambda batches: None)


def test_lm_recipe_refuses_graphs_with_document_masking(tmp_path):
    with pytest.raises((ValueError, ConfigError), match="train.cuda_graph needs document_masking: false"):
        load_recipe_config("configs/lm_tiny.yaml", ["train.cuda_graph=true"])
    cfg = load_recipe_config("configs/lm_tiny.yaml", ["train.cuda_graph=true", "document_masking=false"])
    assert cfg.train.cuda_graph and not cfg.document_masking


@cuda
def test_graphed_toy_run_equals_eager_and_skips_nonfinite_on_device(tmp_path):
    args = ["train.steps=6", "run.device=cuda", "model.dropout=0", "data.nan_at_batches=[6,7]"]  # step 4 NaN
    eager = make(tmp_path, "eager", *args).fit()
    graphed = make(tmp_path, "graphed", *args, "train.cuda_graph=true").fit()
    ref, got = losses(eager.run_dir), losses(graphed.run_dir)
    assert ref[4] is None and got[4] is None and ref.keys() == got.keys()
    assert all(got[s] == pytest.approx(ref[s], rel=1e-5) for s in ref if s != 4)
    assert read_metrics(graphed.run_dir)[-2]["nonfinite_steps"] == 1
    a, b = (make(tmp_path, "m", *args).recipe.build_model() for _ in range(2))
    load_weights(eager.checkpoint, a)
    load_weights(graphed.checkpoint, b)
    assert all(torch.allclose(p, q, rtol=1e-5, atol=1e-6) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@cuda
def test_graphed_lm_run_equals_eager_and_resumes(tmp_path, shards):
    base = ["train", "configs/lm_tiny.yaml", *TINY, *shards, "train.steps=6", "checkpoint.every=3",
            "run.device=cuda", "document_masking=false"]
    assert main([*base, f"run.dir={tmp_path / 'eager'}"]) == 0
    assert main([*base, f"run.dir={tmp_path / 'graph'}", "train.cuda_graph=true"]) == 0
    ref, got = train_losses(tmp_path / "eager"), train_losses(tmp_path / "graph")
    assert got == pytest.approx(ref, rel=1e-4)
    # Resume from step 3: step 4 runs eagerly, 5 is recorded, 6 replays, as steps 1-3 did before.
    (tmp_path / "graph" / "checkpoints" / "step_00000006").rename(tmp_path / "dropped")
    assert main([*base, f"run.dir={tmp_path / 'graph'}", "train.cuda_graph=true", "--resume", "latest"]) == 0
    assert train_losses(tmp_path / "graph") == pytest.approx(got, rel=1e-4)


def test_update_mode_after_loading_another_runs_optimizer_state():
    """A checkpoint from an unfused optimizer (older runs) resumes as the fused one, updates equal."""
    from mm.train.config import OptimConfig
    from mm.train.optim import build_optimizer, set_update_mode

    ref_model = torch.nn.Linear(5, 3)
    model = torch.nn.Linear(5, 3)
    model.load_state_dict(ref_model.state_dict())
    plain = torch.optim.AdamW([{"params": [ref_model.weight], "weight_decay": 0.1},
                               {"params": [ref_model.bias], "weight_decay": 0.0}], lr=0.01, betas=(0.9, 0.95))
    x = torch.randn(7, 5)
    ref_model(x).square().mean().backward()
    plain.step()
    model.load_state_dict(ref_model.state_dict())
    fused = build_optimizer(model, OptimConfig(lr=0.01))
    fused.load_state_dict(copy.deepcopy(plain.state_dict()))  # the loaded tensors would alias plain's
    set_update_mode(fused, capturable=False)
    assert all(g["fused"] and isinstance(g["lr"], float) for g in fused.param_groups)
    fused.found_inf = torch.zeros(())  # as the trainer sets it: only the fused kernel takes it
    for m, opt in ((ref_model, plain), (model, fused)):
        opt.zero_grad()
        m(x).sin().mean().backward()
        opt.step()
    assert torch.allclose(model.weight, ref_model.weight, atol=1e-7)
    assert torch.allclose(model.bias, ref_model.bias, atol=1e-7)

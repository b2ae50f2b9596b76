"""train.ema: the moving average of the weights, saved with checkpoints, resumed, used for evaluation."""

import pytest
import torch
from torch import nn

from mm.train.checkpoint import load_ema, load_weights, load_weights_for_inference
from mm.train.ema import EMA
from tests.train.test_trainer import make


def test_average_follows_the_formula_with_warmup():
    model = nn.Linear(3, 2)
    frozen = nn.Parameter(torch.ones(1), requires_grad=False)
    model.register_parameter("frozen", frozen)
    ema = EMA(model, decay=0.9)
    assert ema.names == ["weight", "bias"]  # trainable only
    expected = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for n in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        beta = min(0.9, (1 + n) / (10 + n))
        for name, p in model.named_parameters():
            if p.requires_grad:
                expected[name] = beta * expected[name] + (1 - beta) * p.detach()
        ema.update(model)
    state = ema.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(state[name], value)
    own = model.weight.detach().clone()
    with ema.applied(model):
        torch.testing.assert_close(model.weight, expected["weight"])
    assert torch.equal(model.weight, own)  # restored


def test_bad_decay_and_foreign_state_are_refused():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="train.ema"):
        EMA(model, decay=1.0)
    with pytest.raises(ValueError, match="missing"):
        EMA(model, 0.5).load_state_dict({"weight": torch.zeros(2, 2)}, source="x")


def test_trainer_saves_resumes_and_evaluates_with_the_average(tmp_path):
    # on the CPU everywhere: the evaluation figure is recomputed below in float32 (a GPU run evaluates in bf16)
    cpu = "run.device=cpu"
    full = make(tmp_path, "full", "train.steps=6", "train.ema=0.8", cpu).fit()
    part = make(tmp_path, "part", "train.steps=6", "train.ema=0.8", "checkpoint.every=3",
                "model.signal_at_step=4", cpu).fit()
    assert part.step == 4
    resumed = make(tmp_path, "part", "train.steps=6", "train.ema=0.8", cpu).fit(resume="latest")
    a, b = load_ema(full.checkpoint), load_ema(resumed.checkpoint)
    assert a.keys() == b.keys() and int(a["__updates__"]) == 6
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    # evaluation ran on the averaged weights: the recipe's figure equals the averaged model's
    trainer = make(tmp_path, "x", "train.steps=6")
    averaged, raw = trainer.recipe.build_model(), trainer.recipe.build_model()
    assert load_weights_for_inference(full.checkpoint, averaged)
    load_weights(full.checkpoint, raw)
    averaged.eval()
    raw.eval()
    mse = trainer.recipe.evaluate(averaged, torch.device("cpu"))["mse"]
    assert full.eval_metrics["mse"] == pytest.approx(mse, rel=1e-6)
    assert mse != pytest.approx(trainer.recipe.evaluate(raw, torch.device("cpu"))["mse"], rel=1e-6)
    # a checkpoint without the average: inference loads the raw weights and says so
    plain = make(tmp_path, "plain", "train.steps=2", cpu).fit()
    assert load_ema(plain.checkpoint) is None
    assert not load_weights_for_inference(plain.checkpoint, trainer.recipe.build_model())

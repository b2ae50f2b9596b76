"""A tiny regression recipe for testing the training loop itself (not a product recipe).

Dropout draws from the global RNG and the data stream has its own position, so resume
equality exercises every piece of state the loop must restore.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from mm.train.config import RecipeConfig
from mm.train.recipe import Recipe, StepOutput, register_recipe


def target(x):
    return torch.tanh(x @ torch.tensor([[0.5], [-1.0], [0.25], [0.75]]))


@dataclass
class ToyModelConfig:
    width: int = 16
    dropout: float = 0.1
    nan_at_steps: list[int] = field(default_factory=list)  # 1-based steps whose loss is made NaN
    signal_at_step: int = 0  # send SIGTERM to ourselves during this 1-based step (0: never)


@dataclass
class ToyDataConfig:
    batch_size: int = 8
    seed: int = 1234
    nan_at_batches: list[int] = field(default_factory=list)  # 0-based batches whose targets are NaN


@dataclass
class ToyConfig(RecipeConfig):
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    data: ToyDataConfig = field(default_factory=ToyDataConfig)


class ToyStream:
    """Batch i is a pure function of (seed, i): the position is just i."""

    def __init__(self, cfg: ToyDataConfig):
        self.cfg, self.position = cfg, 0

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.position)
            x = torch.randn(self.cfg.batch_size, 4, generator=g)
            y = target(x) * (float("nan") if self.position in self.cfg.nan_at_batches else 1.0)
            self.position += 1
            yield {"x": x, "y": y}

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = int(state["position"])


class ToyRecipe(Recipe):
    config_cls = ToyConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        self.calls = 0

    def build_model(self):
        m = self.cfg.model
        return nn.Sequential(nn.Linear(4, m.width), nn.GELU(), nn.Dropout(m.dropout), nn.Linear(m.width, 1))

    def build_train_data(self):
        return ToyStream(self.cfg.data)

    def loss(self, model, batch):
        self.calls += 1
        step = math.ceil(self.calls / self.cfg.train.grad_accum)
        if step == self.cfg.model.signal_at_step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)
        loss = nn.functional.mse_loss(model(batch["x"]), batch["y"])
        if step in self.cfg.model.nan_at_steps:
            loss = loss * float("nan")
        return StepOutput(loss, batch["x"].shape[0])

    def evaluate(self, model, device):
        g = torch.Generator().manual_seed(99)
        x = torch.randn(64, 4, generator=g)
        y = target(x)
        return {"mse": nn.functional.mse_loss(model(x.to(device)), y.to(device)).item()}


register_recipe("toy", "tests.train.toy_recipe:ToyRecipe")

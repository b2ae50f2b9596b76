"""Recipes: what to train (model, data, loss, evaluation) for the generic training loop.

A recipe is named in its YAML (``recipe: lm``); its config class is a :class:`RecipeConfig`
extended with the ``model`` and ``data`` sections, so the whole file is checked against one
schema before any work starts.
"""

from __future__ import annotations

import abc
import importlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from mm.config import ConfigError, load_config, parse_overrides, read_yaml
from mm.train.config import RecipeConfig


class BatchSource(Protocol):
    """An iterable of batches whose position can be saved and restored exactly.

    It may also offer ``metrics() -> dict[str, float]`` (e.g. skipped samples by reason), which the
    training loop adds to its logged metrics.
    """

    def __iter__(self) -> Iterator[dict]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar, the mean over the `count` units of the micro-batch
    count: int | torch.Tensor  # units (tokens, samples) in the micro-batch, for throughput
    # extra figures to log (aux losses, ...); device scalars are read once the whole step is queued
    metrics: dict[str, float | torch.Tensor] = field(default_factory=dict)


class Recipe(abc.ABC):
    config_cls: type[RecipeConfig] = RecipeConfig
    unit: str = "samples"  # what `StepOutput.count` counts, shown in the progress bar as <unit>/s
    # dotted config keys of the shard specs the recipe reads ("*": every item of a list), e.g.
    # ("data.stream.shards", "eval.shards"): `mm train` checks them before any work starts and
    # refuses a missing path or a folder without shards as a config error (mm.config.check_shard_keys)
    shard_keys: tuple[str, ...] = ()

    def __init__(self, cfg: RecipeConfig):
        self.cfg = cfg

    @abc.abstractmethod
    def build_model(self) -> nn.Module: ...

    @abc.abstractmethod
    def build_train_data(self) -> BatchSource: ...

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: dict) -> StepOutput: ...

    def start_step(self, model: nn.Module, step: int) -> None:  # noqa: B027 - optional hook, no-op by default
        """Called before optimizer step ``step`` (0-based; also after a resume): a recipe with
        training stages freezes or unfreezes parts of the model here (``requires_grad``)."""

    def parallelize(self, model: nn.Module, parallel, device: torch.device):
        """Under torchrun, before the optimizer and the data are built: apply ``parallel`` (a
        :class:`mm.distributed.mesh.ParallelConfig`) to ``model`` from outside and return ``(model,
        layout)``; ``layout`` has ``loss_scale``, ``reduce_gradients(model)``, ``clip_grad_norm_(model,
        max_norm)`` and ``experts`` (None, or the :class:`mm.distributed.expert_state.ExpertShards`
        that checkpoints gather and cut expert slices with), as :class:`mm.distributed.mesh.Layout`.
        Default: DDP, or FSDP2 with ``parallel.fsdp``."""
        from mm.train.parallel import data_parallel

        return data_parallel(model, parallel, device)

    def device_batch(self, batch: dict) -> dict:
        """The part of a loaded batch that ``loss`` reads: what the loop moves to the device (and what
        ``train.cuda_graph`` records, so it must keep its shapes from batch to batch)."""
        return batch

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Held-out figures, computed under ``torch.no_grad`` with the model in eval mode."""
        return {}


def nothing_to_evaluate(shards: list[str], why: str = "no held-out sample") -> dict[str, float]:
    """What ``evaluate`` returns when the held-out shards gave nothing to measure: no figure at all (a
    mean over nothing is not 0), and a warning that says so."""
    logging.getLogger("mm.train").warning("eval.shards %s: nothing to evaluate (%s); no eval figures recorded",
                                          shards, why)
    return {}


# name -> "module:Class"; imported only when used, so `mm --help` stays fast.
RECIPES: dict[str, str] = {
    "lm": "mm.train.recipes.lm:LMRecipe",
    "vl": "mm.train.recipes.vl:VLRecipe",
    "lightnet_cls": "mm.train.recipes.lightnet_cls:LightNetClsRecipe",
    "av_encoder": "mm.train.recipes.av_encoder:AVEncoderRecipe",
    "tav": "mm.train.recipes.tav:TAVRecipe",
}


def register_recipe(name: str, target: str) -> None:
    RECIPES[name] = target


def get_recipe(name: str) -> type[Recipe]:
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES)) or 'none'}")
    module, _, cls = RECIPES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def load_recipe_config(path: str | Path, overrides: list[str] = ()) -> RecipeConfig:
    """Read ``recipe:`` from the file (or an override), then load the file against that recipe's schema."""
    name = parse_overrides(list(overrides)).get("recipe") or read_yaml(path).get("recipe")
    if not name:
        raise ConfigError(f"{path}: key 'recipe' is required (one of: {', '.join(sorted(RECIPES))})")
    return load_config(get_recipe(str(name)).config_cls, path, overrides)

"""Config schema of the training loop: one small dataclass per component.

A recipe's config (see :mod:`mm.train.recipe`) is a :class:`RecipeConfig` extended with the
``model`` and ``data`` sections of that recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mm.config import MISSING
from mm.distributed.mesh import ParallelConfig


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class RunConfig:
    dir: str = "runs/default"  # run directory: resolved config, metrics, TensorBoard, checkpoints
    seed: int = 0  # one seed makes a CPU run repeat exactly (model init, data order, dropout)
    deterministic: bool = False  # torch determinism flags for GPU runs (slower kernels)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16

    def __post_init__(self):
        _check(self.precision in ("auto", "fp32", "bf16"),
               f"run.precision must be auto|fp32|bf16, got {self.precision!r}")


@dataclass
class LoopConfig:
    steps: int = 100  # optimizer steps (skipped non-finite steps count as steps)
    grad_accum: int = 1  # micro-batches per optimizer step
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end
    max_nonfinite: int = 5  # stop after this many consecutive non-finite steps
    progress: bool = True  # tqdm progress bar
    # CUDA only: record the step as one CUDA graph after the first step and replay it (mm.cuda_graph);
    # every batch must keep its shapes, and recipe metrics must be device tensors
    cuda_graph: bool = False
    # decay of an exponential moving average of the trainable weights (mm.train.ema), used for evaluation
    # and saved in checkpoints (ema.safetensors) for sampling; 0: none
    ema: float = 0.0
    # recompute each transformer block in the backward pass instead of keeping its activations
    # (mm.train.activation_checkpointing): less activation memory for about one more forward
    activation_checkpointing: bool = False

    def __post_init__(self):
        _check(self.steps >= 1, f"train.steps must be >= 1, got {self.steps}")
        _check(self.grad_accum >= 1, f"train.grad_accum must be >= 1, got {self.grad_accum}")
        _check(self.log_every >= 1, f"train.log_every must be >= 1, got {self.log_every}")
        _check(self.eval_every >= 0, f"train.eval_every must be >= 0, got {self.eval_every}")
        _check(self.ema == 0 or 0 < self.ema < 1, f"train.ema must be 0 (off) or in (0, 1), got {self.ema}")
        _check(self.max_nonfinite >= 1, f"train.max_nonfinite must be >= 1, got {self.max_nonfinite}")
        _check(not (self.cuda_graph and self.activation_checkpointing),  # never tried inside a graph capture
               "train.cuda_graph and train.activation_checkpointing are not supported together; set one to false")


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.1  # applied to matrices only (not norms, biases, embeddings' gains)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping (the norm is still logged)
    # per-group learning rates: parameter-name prefix -> multiplier of lr (the longest matching prefix
    # wins; unmatched parameters keep lr), e.g. {adapter: 10, vision: 0.1}
    lr_scale: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        for prefix, scale in self.lr_scale.items():
            _check(scale > 0, f"optim.lr_scale.{prefix} must be > 0, got {scale}")
        _check(len(self.betas) == 2, f"optim.betas must have two values, got {self.betas}")
        _check(self.grad_clip >= 0, f"optim.grad_clip must be >= 0, got {self.grad_clip}")


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine: warmup then cosine to min_lr_ratio; wsd: warmup-stable-decay; constant
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # final lr / peak lr
    decay_fraction: float = 0.2  # wsd: the last fraction of steps decays linearly to min_lr_ratio

    def __post_init__(self):
        names = ("cosine", "wsd", "constant")
        _check(self.name in names, f"schedule.name must be one of {names}, got {self.name!r}")
        _check(self.warmup_steps >= 0, f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(0 <= self.min_lr_ratio <= 1, f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _check(0 < self.decay_fraction <= 1, f"schedule.decay_fraction must be in (0, 1], got {self.decay_fraction}")


@dataclass
class CheckpointConfig:
    every: int = 0  # save every N steps; 0: only at the end (and on SIGTERM/SIGINT)
    keep_last: int = 2  # complete checkpoints kept; >= 2 so a latest always survives a bad write

    def __post_init__(self):
        _check(self.every >= 0, f"checkpoint.every must be >= 0, got {self.every}")
        _check(self.keep_last >= 2, f"checkpoint.keep_last must be >= 2, got {self.keep_last}")


@dataclass
class RecipeConfig:
    """What every recipe shares; a recipe subclasses it and adds ``model`` and ``data``."""

    recipe: str = MISSING  # which recipe (mm.train.recipe.RECIPES)
    run: RunConfig = field(default_factory=RunConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # under torchrun: dp × sp ranks (ep experts blocks); fsdp: FSDP2 instead of DDP (mm.train.parallel)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

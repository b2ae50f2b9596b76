"""AdamW with decoupled weight decay on matrices only, and learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from mm.train.config import OptimConfig, ScheduleConfig


def lr_scale_of(name: str, lr_scale: dict[str, float]) -> float:
    """The multiplier of the longest prefix in ``lr_scale`` that names ``name`` or a module above it."""
    matches = [p for p in lr_scale if name == p or name.startswith(p + ".")]
    return float(lr_scale[max(matches, key=len)]) if matches else 1.0


def build_optimizer(model: nn.Module, cfg: OptimConfig, capturable: bool = False) -> torch.optim.AdamW:
    """AdamW; weight decay on parameters with ≥ 2 dims (matrices, embeddings), none on gains/biases;
    a learning rate per group of ``cfg.lr_scale`` (the schedule scales every group alike).

    Fused (one kernel per parameter list, on CPU and CUDA), which also lets the device skip a step
    itself (``found_inf``); ``capturable``: see :func:`set_update_mode`."""
    for prefix in cfg.lr_scale:
        if not any(n == prefix or n.startswith(prefix + ".") for n, _ in model.named_parameters()):
            raise ValueError(f"optim.lr_scale: {prefix!r} names no parameter of the model")
    buckets: dict[tuple[float, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            buckets.setdefault((lr_scale_of(name, cfg.lr_scale), param.ndim >= 2), []).append(param)
    if not cfg.lr_scale:  # the two groups every run had before per-group rates (old checkpoints resume)
        buckets = {(1.0, True): buckets.get((1.0, True), []), (1.0, False): buckets.get((1.0, False), [])}
    groups = [{"params": params, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": cfg.lr * scale}
              for (scale, decay), params in buckets.items()]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True)
    set_update_mode(optimizer, capturable)
    return optimizer


def set_update_mode(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """Fused updates, and with ``capturable`` the learning rate as a device tensor (the schedule fills
    it in place) so that a CUDA graph can hold the update. Also needed after ``load_state_dict``,
    which brings back the saved run's flags, plain-float rates and step counts on the CPU."""
    for group in optimizer.param_groups:
        group["fused"], group["capturable"] = True, capturable
        lr = float(group["lr"])
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if "step" in state:  # the fused kernel reads the step count where the parameter lives
                state["step"] = state["step"].to(device=param.device, dtype=torch.float32)
        if group["params"]:
            group["lr"] = torch.tensor(lr, device=group["params"][0].device) if capturable else lr


def lr_factor(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based) of ``total_steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.name == "constant":
        return 1.0
    floor = cfg.min_lr_ratio
    if cfg.name == "cosine":
        span = max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    # wsd: stable at the peak, then linear decay over the last decay_fraction of the steps
    decay_steps = max(1, round(cfg.decay_fraction * total_steps))
    decay_start = max(cfg.warmup_steps, total_steps - decay_steps)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / decay_steps)
    return 1.0 - (1 - floor) * progress


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int):
    """A LambdaLR over :func:`lr_factor`; its state (the step) travels in the checkpoint."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))

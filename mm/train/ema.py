"""Exponential moving average of the trainable weights (``train.ema``).

After every optimizer step that was taken (finite loss and gradient norm):
    θ̄ ← θ̄ + (1 − β_n)(θ − θ̄),   β_n = min(β, (1 + n) / (10 + n)),
n = updates so far (the warm-up keeps the average from remembering the random initialisation for
~1/(1−β) steps). The average is kept in float32 whatever the weights' dtype, saved beside the
weights in each checkpoint (``ema.safetensors``) and swapped in for evaluation and sampling.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema must be in (0, 1) (0 turns it off), got {decay}")
        self.decay = decay
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow = [params[n].detach().float().clone() for n in self.names]
        self.updates = 0

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        params = dict(model.named_parameters())
        return [params[n] for n in self.names]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        beta = min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = [p.detach().float() for p in self._params(model)]
        torch._foreach_lerp_(self.shadow, current, 1.0 - beta)
        self.updates += 1

    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self, model: nn.Module):
        """Within the block ``model`` holds the averaged weights; its own come back afterwards."""
        params = self._params(model)
        saved = [p.detach().clone() for p in params]
        for p, s in zip(params, self.shadow, strict=True):
            p.copy_(s)
        try:
            yield model
        finally:
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors by parameter name, plus the update count (for ``ema.safetensors``)."""
        return {**dict(zip(self.names, self.shadow, strict=True)), "__updates__": torch.tensor(self.updates)}

    def load_state_dict(self, state: dict[str, torch.Tensor], source: str = "ema state") -> None:
        missing = sorted(set(self.names) - set(state))
        unexpected = sorted(set(state) - set(self.names) - {"__updates__"})
        if missing or unexpected:
            raise ValueError(f"{source}: keys differ from the trainable parameters: missing {missing}, "
                             f"unexpected {unexpected}")
        for s, name in zip(self.shadow, self.names, strict=True):
            if state[name].shape != s.shape:
                raise ValueError(f"{source}: {name} has shape {tuple(state[name].shape)}, the model {tuple(s.shape)}")
            s.copy_(state[name])
        self.updates = int(state.get("__updates__", torch.tensor(0)))

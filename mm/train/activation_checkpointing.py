"""Activation checkpointing (``train.activation_checkpointing``): each transformer block of any
model keeps only its inputs in the forward pass and recomputes its activations in the backward pass
(``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``).

Peak activation memory then holds the inputs of every block plus the activations of one block,
instead of the activations of all blocks, for about one extra forward of compute. The gradients are
those of the plain model: the recomputation replays the same operations (with the same RNG state).

The model needs no change and knows nothing of it; the blocks are found from outside, as FSDP2
finds them in :mod:`mm.train.parallel`:

- a module with ``set_grad_checkpointing`` (timm's and open_clip's ViTs: the VLM's vision tower) is
  asked to checkpoint its own blocks, and nothing inside it is wrapped again;
- otherwise every element of an outermost ``nn.ModuleList`` is a block (the LM's ``layers``,
  LightNet's ``blocks``, ...): its ``forward`` becomes the checkpointed one. Parameter names and the
  state dict stay as they are; a block nested in a checkpointed block is not wrapped twice.

Checkpointing applies to training forwards only (grad enabled and the block in training mode), so
evaluation and generation run the plain forward.
"""

from __future__ import annotations

import types

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["apply_activation_checkpointing", "checkpointed_blocks"]


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    """The block's class ``forward``, under non-reentrant checkpointing while training."""
    forward = type(self).forward.__get__(self)
    if not (torch.is_grad_enabled() and self.training):
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def _walk(module: nn.Module, towers: list[nn.Module], blocks: list[nn.Module]) -> None:
    if callable(getattr(module, "set_grad_checkpointing", None)):
        towers.append(module)
        return
    for child in module.children():
        if isinstance(child, nn.ModuleList):
            blocks.extend(child)  # an outermost list: its elements are blocks, not searched further
        else:
            _walk(child, towers, blocks)


def checkpointed_blocks(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """``(towers, blocks)``: the modules that checkpoint themselves (``set_grad_checkpointing``) and
    the blocks whose forward is wrapped (elements of outermost ``nn.ModuleList``s outside the towers)."""
    towers, blocks = [], []
    _walk(model, towers, blocks)
    return towers, blocks


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Checkpoint every block of ``model`` in place (before DDP/FSDP wrap it); returns the number of
    modules changed. Applying it twice changes nothing more. A model with no block raises, so the
    switch never silently does nothing."""
    towers, blocks = checkpointed_blocks(model)
    if not towers and not blocks:
        raise ValueError(f"train.activation_checkpointing: {type(model).__name__} has no blocks to checkpoint "
                         "(no nn.ModuleList of blocks and no set_grad_checkpointing)")
    for tower in towers:
        tower.set_grad_checkpointing(True)
    for block in blocks:
        if "forward" not in vars(block):  # a bound method: deepcopy gives the copy its own
            block.forward = types.MethodType(_checkpointed_forward, block)
    return len(towers) + len(blocks)

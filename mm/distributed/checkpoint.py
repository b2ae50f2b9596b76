"""Checkpoints under any layout: torch.distributed.checkpoint (DCP) directories.

Model and optimizer state go through ``torch.distributed.checkpoint.state_dict`` (fully qualified
parameter names, FSDP2 shards as DTensors), so a directory written by dp × sp ranks loads back on a
different world size, down to one process without a process group: DCP reshards on load. Expert
slices of an expert-parallel model are plain per-rank tensors and do not reshard (not supported yet).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

__all__ = ["load_dcp", "save_dcp"]


def _single() -> bool:
    """One process without a process group (DCP's ``no_dist``)."""
    return not (dist.is_available() and dist.is_initialized())


def save_dcp(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write ``model`` and ``optimizer`` to the DCP directory ``path`` (a collective: every rank calls it)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(path), no_dist=_single())


def load_dcp(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load a DCP directory written by :func:`save_dcp` under any world size into this layout."""
    if not (Path(path) / ".metadata").is_file():
        raise FileNotFoundError(f"{path}: not a DCP checkpoint directory (no .metadata)")
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    with warnings.catch_warnings():  # DCP warns on every single-process load, which is the case meant here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.load(state, checkpoint_id=str(path), no_dist=_single())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])

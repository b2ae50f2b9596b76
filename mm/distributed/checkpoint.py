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
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

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
    model_state, optim_state = get_state_dict(model, optimizer)  # a fresh optimizer gets state for every parameter
    # Parameters that had no gradient before the save (frozen in an earlier stage, unused) have no
    # optimizer state there, and must have none after the load either (AdamW's step count starts
    # with their first gradient), so only the entries the checkpoint holds are asked for.
    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    optim_state["state"] = {name: entry for name, entry in optim_state["state"].items()
                            if all(f"optimizer.state.{name}.{key}" in saved for key in entry)}
    state = {"model": model_state, "optimizer": optim_state}
    with warnings.catch_warnings():  # DCP warns on every single-process load, which is the case meant here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.load(state, checkpoint_id=str(path), no_dist=_single())
    # strict=False lets those parameters stay without state; dcp.load above already required every model key
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(strict=False))

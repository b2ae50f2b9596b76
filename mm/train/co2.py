"""CO2 in the training loop (``parallel.co2.enabled=true`` under torchrun; :mod:`mm.distributed.co2`).

Every rank is a replica that steps its own inner optimizer on its own batches: no DDP wrapper, no
gradient all-reduce. A rank's gradient is the mean over its own units, ∇ Σ_i ℓ_ri / N_r (the
trainer's normalisation with the local count N_r, :class:`LocalUpdates`), and every ``tau`` steps
the :class:`~mm.distributed.co2.CO2` outer step averages the parameters over all ranks through a
process group of its own.

Checkpoints: ranks hold different parameters and optimizer moments inside a round, so besides the
usual files (rank 0's weights and optimizer) every rank writes ``co2/rank_<r>.pt``: its local
parameters, its inner optimizer, the outer point and momentum and the round in flight (waited for
before saving). A resume under the same world size loads each rank's file and continues exactly;
under another world size the weights of rank 0 are taken and the outer loop starts afresh.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from mm.distributed.co2 import CO2, CO2Config
from mm.train.parallel import DataParallel

__all__ = ["LocalUpdates", "build_co2", "load_rank_state", "local_updates", "rank_file", "save_rank_state"]

FOLDER = "co2"


class LocalUpdates(DataParallel):
    """Gradients stay local; each rank normalises by its own unit count (``own_units``)."""

    own_units = True

    def __init__(self):
        super().__init__(world_size=1)


def local_updates(model: nn.Module) -> tuple[nn.Module, LocalUpdates]:
    """The model unwrapped, its parameters and buffers broadcast from rank 0 (CO2 needs equal starts)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor, src=0)
    return model, LocalUpdates()


def build_co2(module: nn.Module, optimizer: torch.optim.Optimizer, cfg: CO2Config) -> CO2:
    """The outer loop over every parameter of ``module``, on a process group of its own so that the
    step's other collectives (loss statistics) do not queue behind the in-flight snapshot."""
    return CO2(list(module.parameters()), optimizer, cfg, group=dist.new_group())


def rank_file(checkpoint: str | Path, rank: int) -> Path:
    return Path(checkpoint) / FOLDER / f"rank_{rank:05d}.pt"


def save_rank_state(co2: CO2, checkpoint_tmp: Path, rank: int) -> None:
    """Write this rank's CO2 state into the checkpoint's temporary directory (fsynced)."""
    file = rank_file(checkpoint_tmp, rank)
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(co2.state_dict(), file)
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_rank_state(co2: CO2, checkpoint: Path, rank: int, world: int) -> bool:
    """Restore this rank's CO2 state from ``checkpoint``; False (with a warning) when the checkpoint
    has none for this world size (written without CO2 or by another number of ranks)."""
    files = sorted((Path(checkpoint) / FOLDER).glob("rank_*.pt"))
    if len(files) != world:
        warnings.warn(f"--resume {checkpoint}: {len(files)} CO2 rank state(s) for {world} rank(s): starting the "
                      "CO2 outer loop afresh from the checkpoint's weights", stacklevel=2)
        return False
    from mm.train.checkpoint import CheckpointError

    file = rank_file(checkpoint, rank)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        raise CheckpointError(f"{file}: cannot be loaded safely (weights_only=True): {err}") from None
    device = co2.anchor.device
    state = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    if "in_flight" in state:
        state["in_flight"] = {k: v.to(device) for k, v in state["in_flight"].items()}
    try:
        co2.load_state_dict(state)
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{file}: does not fit this run's CO2 state: {err}") from None
    return True

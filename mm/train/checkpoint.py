"""Atomic, safe-to-load checkpoints: one directory per step, the last K kept.

Layout of ``<run>/checkpoints/step_00000100/``::

    model.safetensors   weights (safetensors; tied tensors stored once)
    ema.safetensors     with ``train.ema``: the moving average of the trainable weights (mm.train.ema)
    config.yaml         the resolved config of the run
    train_state.pt      optimizer, scheduler, step, RNG states, data position: tensors and plain
                        values only, so ``torch.load(weights_only=True)`` reads it; under torchrun
                        also each rank's data position and RNG state (``ranks``)
    dcp/                instead of model.safetensors and the optimizer, under torchrun with FSDP:
                        a torch.distributed.checkpoint directory (mm.distributed.checkpoint) that
                        loads back on any world size, one process included
    COMPLETE            written last; a directory without it is never picked

A checkpoint is written into a hidden temporary directory, every file and the directory are
fsynced, the directory is renamed into place and only then is ``COMPLETE`` written. A crash at any
point leaves either the previous checkpoints untouched or a directory without ``COMPLETE``; old
checkpoints are pruned only after the new one is complete, so a latest one always survives.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

MARKER = "COMPLETE"
WEIGHTS = "model.safetensors"
EMA_WEIGHTS = "ema.safetensors"
CONFIG = "config.yaml"
STATE = "train_state.pt"
DCP = "dcp"  # torch.distributed.checkpoint directory (FSDP runs)
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found or loaded safely; the message names the path."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_complete(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


class CheckpointManager:
    """Writes, lists, prunes and resolves the checkpoints under ``root``."""

    def __init__(self, root: str | Path, keep_last: int = 2):
        if keep_last < 2:
            raise ValueError(f"keep_last must be >= 2 so a complete checkpoint always survives, got {keep_last}")
        self.root = Path(root)
        self.keep_last = keep_last

    def complete(self) -> list[Checkpoint]:
        """Complete checkpoints, oldest first."""
        found = []
        if self.root.is_dir():
            for child in self.root.iterdir():
                match = _STEP_DIR.match(child.name)
                if match and child.is_dir() and is_complete(child):
                    found.append(Checkpoint(child, int(match.group(1))))
        return sorted(found, key=lambda c: c.step)

    def latest(self) -> Checkpoint | None:
        done = self.complete()
        return done[-1] if done else None

    def resolve(self, spec: str) -> Path:
        """``latest`` or a checkpoint directory -> that complete checkpoint's path."""
        if spec == "latest":
            latest = self.latest()
            if latest is None:
                raise CheckpointError(f"--resume latest: no complete checkpoint under {self.root}")
            return latest.path
        path = Path(spec)
        if not path.is_dir():
            raise CheckpointError(f"--resume {spec}: not a checkpoint directory")
        if not is_complete(path):
            raise CheckpointError(f"--resume {spec}: incomplete checkpoint (no {MARKER} marker): not fully written")
        return path

    def path(self, step: int) -> Path:
        return self.root / f"step_{step:08d}"

    def tmp_path(self, step: int, tag: str | None = None) -> Path:
        """The hidden temporary directory of ``step`` (``tag``: a name every rank agrees on)."""
        return self.root / f".tmp-{self.path(step).name}-{tag or os.getpid()}"

    def begin(self, step: int, tag: str | None = None) -> Path:
        """Create :meth:`tmp_path` afresh."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp_path(step, tag)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        return tmp

    def save(self, step: int, model: nn.Module | None, train_state: dict, config_yaml: str,
             tmp: Path | None = None, ema: dict[str, torch.Tensor] | None = None) -> Path:
        """Write and commit the checkpoint of ``step``. ``model`` None with ``tmp``: the weights and
        optimizer are already in ``tmp`` (a DCP directory ``dcp/`` written by every rank). ``ema``: the
        moving-average weights (:meth:`mm.train.ema.EMA.state_dict`)."""
        final = self.path(step)
        if is_complete(final):
            return final  # this step is already saved (e.g. a periodic save right before a signal)
        tmp = tmp or self.begin(step)
        names = [STATE, CONFIG]
        if model is not None:
            save_model(model, str(tmp / WEIGHTS))
            names.append(WEIGHTS)
        if ema is not None:
            save_file({k: v.contiguous() for k, v in ema.items()}, str(tmp / EMA_WEIGHTS))
            names.append(EMA_WEIGHTS)
        torch.save(train_state, tmp / STATE)
        (tmp / CONFIG).write_text(config_yaml)
        for name in names:
            _fsync(tmp / name)
        _fsync(tmp)
        if final.exists():  # an earlier, incomplete attempt at this step
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(self.root)
        (final / MARKER).write_text(f"{step}\n")
        _fsync(final / MARKER)
        _fsync(final)
        self._prune(keep=final)
        return final

    def _prune(self, keep: Path) -> None:
        """Drop complete checkpoints beyond the last K, then leftovers of interrupted writes."""
        for old in self.complete()[: -self.keep_last]:
            shutil.rmtree(old.path, ignore_errors=True)
        for child in self.root.iterdir():
            stale_tmp = child.name.startswith(".tmp-")
            incomplete = _STEP_DIR.match(child.name) and not is_complete(child)
            if child != keep and child.is_dir() and (stale_tmp or incomplete):
                shutil.rmtree(child, ignore_errors=True)


def load_weights(path: str | Path, model: nn.Module) -> None:
    """Load ``model.safetensors`` of a checkpoint directory into ``model`` (strict: every key, every shape)."""
    file = Path(path) / WEIGHTS
    if not file.is_file():
        raise CheckpointError(f"{file}: missing")
    try:
        missing, unexpected = load_model(model, str(file), strict=False)
    except SafetensorError as err:  # not a safetensors file: truncated, overwritten
        raise CheckpointError(f"{file}: unreadable: {err}") from None
    except RuntimeError as err:  # shape mismatch
        raise CheckpointError(f"{file}: does not fit the model: {err}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{file}: keys differ from the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )


def load_ema(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The moving-average weights of a checkpoint directory, or None when it has none."""
    file = Path(path) / EMA_WEIGHTS
    if not file.is_file():
        return None
    try:
        return load_file(str(file))
    except SafetensorError as err:
        raise CheckpointError(f"{file}: unreadable: {err}") from None


def load_weights_for_inference(path: str | Path, model: nn.Module) -> bool:
    """:func:`load_weights`, then the moving average over the trainable weights when the checkpoint has
    one (what sampling and evaluation use; layout of :meth:`mm.train.ema.EMA.state_dict`). Returns
    whether EMA weights were applied."""
    load_weights(path, model)
    state = load_ema(path)
    if state is None:
        return False
    params = dict(model.named_parameters())
    missing = sorted(k for k in state if k != "__updates__" and k not in params)
    if missing:
        raise CheckpointError(f"{Path(path) / EMA_WEIGHTS}: keys the model does not have: {missing[:5]}")
    with torch.no_grad():
        for name, value in state.items():
            if name != "__updates__":
                params[name].copy_(value)
    return True


def load_train_state(path: str | Path) -> dict:
    """Read ``train_state.pt`` with ``weights_only=True``; never falls back to unrestricted unpickling."""
    file = Path(path) / STATE
    if not file.is_file():
        raise CheckpointError(f"{file}: missing")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{file}: cannot be loaded safely (weights_only=True): {first_line}") from None

"""Checkpoints: atomic write, pruning, resolution, and loading that never unpickles code."""

import os

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import mm.train.checkpoint as ckpt
from mm.train.checkpoint import CheckpointError, CheckpointManager, load_train_state, load_weights


def model():
    return nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2))


def save(manager, step, m=None):
    return manager.save(step, m or model(), {"step": step, "blob": torch.arange(step + 1)}, f"step: {step}\n")


def test_layout_and_roundtrip(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    m = model()
    path = save(manager, 7, m)
    assert path.name == "step_00000007"
    assert sorted(p.name for p in path.iterdir()) == ["COMPLETE", "config.yaml", "model.safetensors", "train_state.pt"]
    assert (path / "config.yaml").read_text() == "step: 7\n"
    # weights are plain safetensors, readable without our code
    assert torch.equal(load_file(path / "model.safetensors")["0.weight"], m[0].weight)
    fresh = model()
    load_weights(path, fresh)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), m.state_dict().values(), strict=True))
    state = load_train_state(path)
    assert state["step"] == 7 and torch.equal(state["blob"], torch.arange(8))


def test_keeps_last_k(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    for step in range(1, 7):
        save(manager, step)
    assert [c.step for c in manager.complete()] == [4, 5, 6]
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=1)


def test_crash_between_write_and_rename_keeps_previous_latest(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep_last=2)
    save(manager, 1)
    save(manager, 2)

    def crash(*args):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save(manager, 3)
    monkeypatch.undo()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers, "the half-written checkpoint should still be in its temporary directory"
    assert manager.resolve("latest").name == "step_00000002"
    assert [c.step for c in manager.complete()] == [1, 2]  # nothing was pruned by the failed save
    save(manager, 4)  # the next good save cleans the leftover
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_crash_between_rename_and_marker_is_not_picked(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep_last=2)
    save(manager, 1)
    real_fsync = ckpt._fsync

    def crash_on_marker(path):
        if path.name == ckpt.MARKER:
            raise OSError("simulated crash while writing the marker")
        real_fsync(path)

    monkeypatch.setattr(ckpt, "_fsync", crash_on_marker)
    with pytest.raises(OSError):
        save(manager, 2)
    monkeypatch.undo()
    (tmp_path / "step_00000002" / ckpt.MARKER).unlink()  # the marker's content never reached disk
    assert manager.resolve("latest").name == "step_00000001"
    with pytest.raises(CheckpointError, match="incomplete"):
        manager.resolve(str(tmp_path / "step_00000002"))
    assert save(manager, 2).name == "step_00000002"  # a retry replaces the incomplete directory
    assert manager.resolve("latest").name == "step_00000002"


def test_resolve_errors(tmp_path):
    manager = CheckpointManager(tmp_path / "none", keep_last=2)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        manager.resolve("latest")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        manager.resolve(str(tmp_path / "missing"))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_loading_never_unpickles_code(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    path = save(manager, 1)
    torch.save({"step": 1, "evil": Evil()}, path / "train_state.pt")
    with pytest.raises(CheckpointError, match=r"train_state\.pt.*weights_only"):
        load_train_state(path)


def test_weights_that_do_not_fit(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    path = save(manager, 1)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_weights(path, nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 3)))
    with pytest.raises(CheckpointError, match="missing"):
        load_weights(path, nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2), nn.Linear(2, 2)))


def test_unreadable_weights_name_the_file(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    path = save(manager, 1)
    (path / "model.safetensors").write_bytes(b"overwritten")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable"):
        load_weights(path, nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2)))

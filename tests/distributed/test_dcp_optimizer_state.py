"""DCP checkpoints (mm/distributed/checkpoint.py) of an optimizer that has state for only some
parameters (the rest frozen in an earlier stage, as the `vl` recipe's adapter-only warm-up leaves
the LM): they load into a fresh optimizer, which then has state for exactly the same parameters."""

import warnings

import torch

from mm.distributed.checkpoint import load_dcp, save_dcp


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.GELU(), torch.nn.Linear(5, 2))


def test_parameters_without_optimizer_state_stay_without(tmp_path):
    torch.manual_seed(0)
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model[2].weight.requires_grad_(False)  # no gradient before the save: no AdamW state
    for _ in range(2):
        model(torch.randn(4, 3)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        save_dcp(tmp_path / "dcp", model, optimizer)

    fresh = _model()
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    load_dcp(tmp_path / "dcp", fresh, fresh_optimizer)
    for (name, p), q in zip(model.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q), name
        assert (q in fresh_optimizer.state) == (p in optimizer.state), name
        for key, value in optimizer.state.get(p, {}).items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(fresh_optimizer.state[q][key])), (name, key)
    assert model[2].weight not in optimizer.state and len(fresh_optimizer.state) == 3

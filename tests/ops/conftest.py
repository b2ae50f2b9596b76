"""Fixtures for op tests."""

import pytest
import torch


@pytest.fixture
def nan_poison(monkeypatch):
    """Fresh floating tensors from torch.empty / empty_like are filled with NaN for the test's duration.

    Kernels allocate their outputs with these; an element a kernel forgets to write stays NaN and
    fails the comparison instead of passing by luck with zeros.
    """
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(empty_like(*a, **kw)))
    yield

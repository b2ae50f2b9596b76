"""Test-wide settings: CPU only, Triton kernels under the interpreter, seeded RNG."""

import os
import sys

import pytest
import torch

# Must happen before anything imports triton: without a GPU, kernels run under the interpreter.
assert "triton" not in sys.modules, "triton was imported before tests/conftest.py could configure it"
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seeded():
    """Each test starts from a known RNG state; tests draw their fresh random inputs from it."""
    torch.manual_seed(0)
    yield

"""Where an op test's case runs: parameters marked to skip on machines that lack their device.

A Triton kernel on CPU tensors runs only under TRITON_INTERPRET=1, which tests/conftest.py sets when
there is no GPU; on a GPU machine those cases skip and the CUDA cases run the compiled kernel."""

import pytest
import torch

from mm.ops.triton_interpreter import INTERPRET

NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
NEEDS_INTERPRETER = pytest.mark.skipif(
    not INTERPRET, reason="a Triton kernel on CPU tensors needs TRITON_INTERPRET=1 (the suite sets it without a GPU)")


def on(device: str, *values, kernel: bool = False, id: str | None = None):
    """pytest.param(device, *values) marked for ``device``; ``kernel``: the case calls a Triton kernel."""
    marks = [NEEDS_CUDA] if device == "cuda" else [NEEDS_INTERPRETER] if kernel else []
    return pytest.param(device, *values, marks=marks, id=id)

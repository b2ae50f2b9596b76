"""Where a test case runs: op tests' kernel cases, and the precisions model tests run in.

A Triton kernel on CPU tensors runs only under TRITON_INTERPRET=1, which tests/conftest.py sets when
there is no GPU. A kernel case therefore runs on ``KERNEL_DEVICE``: the compiled kernel on CUDA where
a GPU is present, the interpreter on CPU elsewhere, with the same inputs and tolerances. Cases written
for CUDA alone (sizes the interpreter would take minutes over) are marked to skip without a GPU.
"""

import pytest
import torch

from mm.ops.triton_interpreter import INTERPRET

KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
NEEDS_KERNEL_DEVICE = pytest.mark.skipif(
    KERNEL_DEVICE == "cpu" and not INTERPRET,
    reason="a Triton kernel on CPU tensors needs TRITON_INTERPRET=1 (the suite sets it without a GPU)")


def on(device: str, *values, id: str | None = None):
    """pytest.param(device, *values) marked for ``device``: "cpu", "cuda" (skips without a GPU), or
    "kernel" (a Triton kernel case: given as ``KERNEL_DEVICE``)."""
    if device == "kernel":
        return pytest.param(KERNEL_DEVICE, *values, marks=NEEDS_KERNEL_DEVICE, id=id)
    return pytest.param(device, *values, marks=[NEEDS_CUDA] if device == "cuda" else [], id=id)


# (device, autocast dtype or None) of a model test: float32 on the CPU, and on CUDA float32 (a model
# run without autocast) and bf16 autocast (what training uses there): the paths differ per precision.
PRECISIONS = [
    pytest.param("cpu", None, id="cpu-fp32"),
    pytest.param("cuda", None, id="cuda-fp32", marks=NEEDS_CUDA),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=NEEDS_CUDA),
]


def autocast(device: str, dtype: torch.dtype | None):
    """The autocast context of a PRECISIONS case (disabled for float32)."""
    return torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

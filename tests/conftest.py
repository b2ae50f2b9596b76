"""Test-wide settings: CPU only, Triton kernels under the interpreter, seeded RNG."""

import os
import sys

import pytest


def _share_cores_among_workers():
    """Under pytest-xdist each worker gets its share of the cores. Otherwise every worker runs torch
    and Inductor's compile pool at the machine's full width: 14 workers on 16 cores made CPU-bound
    tests and Triton compiles 5-10x slower on the GPU machine (several past 150 s)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCHINDUCTOR_COMPILE_THREADS"):
            os.environ[name] = str(threads)
        return threads
    return None


_WORKER_THREADS = _share_cores_among_workers()

import torch  # noqa: E402  (after the thread settings above)

if _WORKER_THREADS:
    torch.set_num_threads(_WORKER_THREADS)

# Must happen before anything imports triton: without a GPU, kernels run under the interpreter.
assert "triton" not in sys.modules, "triton was imported before tests/conftest.py could configure it"
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seeded():
    """Each test starts from a known RNG state; tests draw their fresh random inputs from it."""
    torch.manual_seed(0)
    yield

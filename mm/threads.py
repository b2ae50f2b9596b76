"""Torch on one CPU thread for a block of work, restored after."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def one_thread():
    """Tiny models' ops are launch-sized: on a 2-core machine a second thread costs more in
    synchronisation than it gains (3-4x slower steps measured, worse while other work runs)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

"""Run a test body on N gloo processes (one spawn per call; rendezvous through a file)."""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, world: int, folder: str, fn, args) -> None:
    torch.set_num_threads(1)  # N processes share the CI machine's two cores
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def spawn(fn, world: int, folder, *args) -> None:
    """Call ``fn(rank, world, *args)`` on ``world`` processes; an assertion on any rank fails the test."""
    mp.spawn(_entry, args=(world, str(folder), fn, args), nprocs=world, join=True)

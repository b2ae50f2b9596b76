"""Benchmark LASP sequence parallelism (issue 20): ring vs all-gather vs gathering the full sequence.

    torchrun --nproc_per_node=N benchmarks/distributed_lasp.py --out benchmarks/results

The GPU count comes from torchrun (NCCL on CUDA, gloo on CPU). For each total length T in
--seqlens every rank holds T / N tokens (B = 1, H heads, d = e = --dim, bf16 on CUDA, float32 on
CPU) and runs forward + backward of the lightning op over the whole sequence three ways, in this
one run:
- "ring": `lasp_attn(mode="ring")` (one [B, H, d, e] fp32 state per hop and direction);
- "allgather": `lasp_attn(mode="allgather")` (LASP-2; one gather of chunk states each way);
- "gather all": the naive baseline: all-gather q, k, v, run the op on the full sequence on every
  rank and keep the own chunk (N-fold compute, traffic growing with T).
Reports the slowest rank's median milliseconds and tokens/s per GPU; writes
distributed_lasp.md/.json to --out from rank 0.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.common import time_ms, write_results  # noqa: E402
from mm.distributed.lasp import lasp_attn  # noqa: E402
from mm.distributed.sequence_parallel import gather_sequence  # noqa: E402
from mm.ops.lightning_attn import build_slopes, lightning_attn  # noqa: E402


def _gather_all(q, k, v, slopes):
    """The naive baseline: the whole sequence on every rank, own chunk kept."""
    rank, C = dist.get_rank(), q.shape[1]
    full = [gather_sequence(t, dim=1) for t in (q, k, v)]
    o, _ = lightning_attn(*full, slopes)
    return o[:, rank * C : (rank + 1) * C]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlens", type=int, nargs="+", default=[16384, 65536, 262144])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--out", default=None, help="folder for distributed_lasp.md/.json (rank 0 writes)")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    slopes = build_slopes(args.heads, 0, 8).to(device)
    methods = {
        "ring": lambda q, k, v: lasp_attn(q, k, v, slopes, mode="ring")[0],
        "allgather": lambda q, k, v: lasp_attn(q, k, v, slopes, mode="allgather")[0],
        "gather all": lambda q, k, v: _gather_all(q, k, v, slopes),
    }
    rows = []
    for T in args.seqlens:
        if T % world:
            raise ValueError(f"--seqlens: {T} is not a multiple of the world size {world}")
        C = T // world
        q, k, v = (torch.randn(1, C, args.heads, args.dim, device=device, dtype=dtype, requires_grad=True)
                   for _ in range(3))
        grad = torch.randn(1, C, args.heads, args.dim, device=device, dtype=dtype)
        row = {"T": T, "GPUs": world}
        for name, fn in methods.items():
            def step(fn=fn, inputs=(q, k, v), grad=grad):
                fn(*inputs).backward(grad)

            try:
                ms = torch.tensor(time_ms(step, warmup=2, repeat=args.repeat), device=device)
            except torch.OutOfMemoryError:
                ms = torch.tensor(float("inf"), device=device)
            dist.all_reduce(ms, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
            row[f"{name} ms"] = float(ms)
            row[f"{name} Mtok/s/GPU"] = T / world / float(ms) / 1e3
        rows.append(row)
        if rank == 0:
            print(row, flush=True)
    if rank == 0 and args.out:
        columns = ["T", "GPUs"] + [f"{m} {u}" for m in methods for u in ("ms", "Mtok/s/GPU")]
        print(write_results(args.out, "distributed_lasp", "LASP: ring vs all-gather vs gathering the sequence",
                            {"forward + backward of one lightning op": (rows, columns)},
                            notes=f"H = {args.heads}, d = e = {args.dim}, B = 1, {dtype}; slowest rank's median"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

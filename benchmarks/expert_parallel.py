"""Benchmark expert parallelism against replicated experts (issue 20): tokens/s, memory, all-to-all share.

    torchrun --nproc_per_node=N benchmarks/expert_parallel.py --out benchmarks/results      # GPUs (NCCL)
    torchrun --nproc_per_node=2 benchmarks/expert_parallel.py --tiny --out /tmp/ep         # CPU (gloo), seconds

The GPU count comes from torchrun. Every method trains a fresh copy of the same MoE LM (same seed;
bf16 autocast on CUDA, float32 on CPU; dropless routing) with AdamW on the same synthetic batches
(each rank its own rows, ``benchmarks.co2.batch``), in this one run, the way ``mm train`` runs it:
- "replicated (DDP)": every rank holds every expert; DistributedDataParallel averages all gradients
  in backward (bucketed, overlapped): what ``mm train`` does with ``parallel.ep=1``;
- "replicated (all-reduce after backward)": every rank holds every expert; the gradients are summed
  after backward by :meth:`mm.distributed.mesh.Layout.reduce_gradients` (one all-reduce per
  parameter), the reduction the EP path uses: the row that separates the effect of EP from DDP's;
- "EP=N": :func:`mm.distributed.mesh.parallelize_lm` with ``parallel.ep`` = world size: rank p keeps
  experts p·E/N … (p+1)·E/N − 1 of every MoE layer, tokens go out and back with
  ``all_to_all_single``; non-expert gradients are summed over the world by ``Layout.reduce_gradients``
  (each rank's loss is divided by N before backward so that the sums are DDP's averages).
Step time (forward + backward + optimizer step) is the slowest rank's wall time over --steps steps
after --warmup (waiting for the device at both ends only); tokens/s counts every rank's tokens. Peak
memory is the largest rank's ``torch.cuda.max_memory_allocated`` over the timed steps (weights, gradients, AdamW
moments and activations; GPU only). Parameters are those the rank holds. The all-to-all share is
the time spent inside ``all_to_all_single`` (the count exchange, dispatch and combine, forward and
backward; CUDA events on the current stream around each call, so it includes waiting for the
slower peer; perf_counter on CPU), mean over ranks, over the step time. Every method must give the
replicated loss on the first step on every rank (``same_first_loss``: relative difference ≤
--rtol; float32 on CPU is 1e-4). Writes expert_parallel.md/.json to --out from rank 0.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.co2 import batch  # noqa: E402
from benchmarks.common import write_results  # noqa: E402
from mm.distributed.expert_state import expert_parameters  # noqa: E402
from mm.distributed.mesh import ParallelConfig, parallelize_lm  # noqa: E402
from mm.models.lm import LM, LMConfig  # noqa: E402

SHAPES = {  # name -> (LMConfig kwargs, batch rows per rank, sequence length)
    # init_std 0.2: at the default 0.02 the experts barely move the first loss (swapping two experts
    # changed it by 3e-6, under the 1e-4 tolerance); at 0.2 by 5e-3
    "tiny": (dict(vocab_size=64, hidden=32, layers=2, heads=2, kv_heads=2, head_dim=16, rotary_dim=8, ffn=64,
                  experts=4, top_k=2, attn_type_list=["lightning", "softmax"], init_std=0.2), 4, 32),
    # ~1.2B parameters, 1.1B of them in 8 × 16 experts: replicated, their fp32 weights, gradients and
    # AdamW moments take ~18 GB on every GPU. 16 experts split over 2, 4 or 8 GPUs.
    "gpu": (dict(vocab_size=32000, hidden=1024, layers=8, heads=16, kv_heads=8, head_dim=64, rotary_dim=32,
                 ffn=2816, experts=16, top_k=2, attn_type_list=(["lightning"] * 3 + ["softmax"]) * 2), 8, 2048),
}
METHODS = ("replicated (DDP)", "replicated (all-reduce after backward)", "EP")


class AllToAllTimer:
    """Time spent in ``torch.distributed.all_to_all_single`` while :meth:`active` (EP's exchanges look
    the function up on the module at call time). CUDA events are read once, in :meth:`seconds`."""

    def __init__(self, cuda: bool):
        self.cuda, self.spans, self.host_seconds = cuda, [], 0.0

    @contextlib.contextmanager
    def active(self):
        original = dist.all_to_all_single

        def timed(*args, **kwargs):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                work = original(*args, **kwargs)
                end.record()
                self.spans.append((start, end))
                return work
            t0 = time.perf_counter()
            work = original(*args, **kwargs)
            self.host_seconds += time.perf_counter() - t0
            return work

        dist.all_to_all_single = timed
        try:
            yield
        finally:
            dist.all_to_all_single = original

    def seconds(self) -> float:
        """Total seconds measured (call after the device finished the work)."""
        return self.host_seconds + sum(s.elapsed_time(e) for s, e in self.spans) / 1e3


def build(method: str, kwargs: dict, device: torch.device):
    """The model as ``method`` runs it: (module to call, optimizer, layout or None, loss divisor)."""
    world = dist.get_world_size()
    torch.manual_seed(0)
    with device:
        model = LM(LMConfig(**kwargs))
    if method == "replicated (DDP)":
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
        return net, model, None, 1
    model, layout = parallelize_lm(model, ParallelConfig(ep=world if method == "EP" else 1), device_type=device.type)
    return model, model, layout, world


def run_method(method: str, args, shape, device: torch.device) -> dict:
    """Train a fresh model with one method; returns timing, memory, parameter counts and losses."""
    kwargs, rows, seq = shape
    world, rank = dist.get_world_size(), dist.get_rank()
    cuda = device.type == "cuda"
    gc.collect()  # the previous method's model: DDP's reducer holds reference cycles
    if cuda:
        torch.cuda.empty_cache()
    net, model, layout, divisor = build(method, kwargs, device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    data = [batch(kwargs["vocab_size"], rows, seq, seed=10_000 * i + rank, device=device)  # made before timing
            for i in range(args.warmup + args.steps)]
    losses = []

    def step(i: int) -> None:
        ids, labels = data[i]
        with autocast:
            loss = net(ids, labels=labels, return_logits=False).loss
        (loss / divisor).backward()
        if layout is not None:
            layout.reduce_gradients(model)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach().float())

    for i in range(args.warmup):
        step(i)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()  # now holds weights, optimizer state, the batches
    timer = AllToAllTimer(cuda)
    dist.barrier()
    start = time.perf_counter()
    with timer.active():
        for i in range(args.warmup, args.warmup + args.steps):
            step(i)
    sync()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    slowest = torch.tensor([elapsed, peak], dtype=torch.float64, device=device)  # seconds, GiB: the largest rank's
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    a2a = torch.tensor([timer.seconds()], dtype=torch.float64, device=device)
    dist.all_reduce(a2a)  # summed over ranks
    first = torch.stack(losses[:1] + losses[-1:])  # this rank's first and last loss
    every = torch.empty(world * 2, dtype=first.dtype, device=device)
    dist.all_gather_into_tensor(every, first)
    every = every.view(world, 2)
    experts = {id(p) for p in expert_parameters(model).values()}
    (seconds, peak), a2a = slowest.tolist(), float(a2a)
    result = {
        "method": f"EP={world}" if method == "EP" else method,
        "ms_per_step": 1e3 * seconds / args.steps,
        "tokens_per_s": world * rows * seq * args.steps / seconds,
        "peak_mem_gib": peak if cuda else None,
        "params_per_rank_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "expert_params_per_rank_M": sum(p.numel() for p in model.parameters() if id(p) in experts) / 1e6,
        "a2a_share": a2a / world / seconds,
        "first_losses": every[:, 0].tolist(),  # per rank
        "first_loss": float(every[:, 0].mean()),
        "last_loss": float(every[:, 1].mean()),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model and few steps (CPU/gloo check)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20; --tiny 6)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 5; --tiny 1)")
    parser.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 3e-4; --tiny 1e-2)")
    parser.add_argument("--rtol", type=float, default=None,
                        help="first-step loss tolerance, relative (default 1e-4 in float32 on CPU, 2e-2 in bf16)")
    parser.add_argument("--out", default=None, help="folder for expert_parallel.md/.json (rank 0 writes)")
    args = parser.parse_args()
    args.steps = args.steps or (6 if args.tiny else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 5)
    args.lr = args.lr or (1e-2 if args.tiny else 3e-4)
    if args.warmup < 1 or args.steps < 1:
        raise ValueError(f"--warmup and --steps must be >= 1, got {args.warmup} and {args.steps}")

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    else:
        torch.set_num_threads(1)
    args.rtol = args.rtol or (2e-2 if cuda else 1e-4)
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    world, rank = dist.get_world_size(), dist.get_rank()
    shape = SHAPES["tiny" if args.tiny else "gpu"]
    kwargs, rows_per_rank, seq = shape
    if kwargs["experts"] % world:
        raise ValueError(f"{kwargs['experts']} experts do not split over {world} ranks (torchrun --nproc_per_node)")
    results = [run_method(m, args, shape, device) for m in METHODS]
    reference = torch.tensor(results[0]["first_losses"])
    for r in results:
        diff = ((torch.tensor(r.pop("first_losses")) - reference).abs() / reference.abs()).max()
        r["first_loss_rel_diff"] = float(diff)
        r["same_first_loss"] = bool(diff <= args.rtol)
        r["speedup_vs_ddp"] = results[0]["ms_per_step"] / r["ms_per_step"]
    if rank == 0:
        notes = (f"{world} rank(s) ({'NCCL, bf16 autocast' if cuda else 'gloo, float32'}); MoE LM {kwargs['hidden']} "
                 f"wide, {kwargs['layers']} layers, {kwargs['experts']} experts of width {kwargs['ffn']}, top-"
                 f"{kwargs['top_k']}, dropless, vocab {kwargs['vocab_size']}; {rows_per_rank} × {seq} tokens per "
                 f"rank and step; {args.warmup} warm-up + {args.steps} timed steps of forward + backward + AdamW "
                 f"(lr {args.lr}). a2a_share: time inside all_to_all_single over step time (mean over ranks). "
                 f"same_first_loss: every rank's first-step loss within {args.rtol:g} (relative) of DDP's. "
                 "peak_mem_gib: the largest rank's, GPU only (None on CPU).")
        columns = ["method", "ms_per_step", "tokens_per_s", "speedup_vs_ddp", "peak_mem_gib", "params_per_rank_M",
                   "expert_params_per_rank_M", "a2a_share", "first_loss", "first_loss_rel_diff", "same_first_loss",
                   "last_loss"]
        text = write_results(args.out, "expert_parallel", f"Expert parallelism (EP={world}) vs replicated experts",
                             {"training step": (results, columns)}, notes=notes) if args.out else None
        print(text or "\n".join(str(r) for r in results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""Benchmark CO2 against DDP (issue 20): tokens/s, the share of step time spent on communication, loss.

    torchrun --nproc_per_node=N benchmarks/co2.py --out benchmarks/results          # GPUs (NCCL)
    torchrun --nproc_per_node=2 benchmarks/co2.py --tiny --out /tmp/co2             # CPU (gloo), seconds

The GPU count comes from torchrun. Every method trains a fresh copy of the same hybrid LM (same
seed; bf16 autocast on CUDA, float32 on CPU) with AdamW on the same synthetic batches (rank- and
step-seeded: next token = (3·t + 1) mod V, one token in five random), in this one run:
- "local": each rank steps alone, no communication at all (the compute-only baseline);
- "ddp": DistributedDataParallel (gradient all-reduce in backward, every step);
- "co2 τ=k", k in --taus: :class:`mm.distributed.co2.CO2` over the same AdamW, overlap on, on a
  process group of its own (outer momentum 0.2, penalty on, clip 10).
Step time is the slowest rank's wall time over --steps steps after --warmup (waiting for the device
at both ends only); tokens/s counts every rank's tokens. The communication share of a method is
(t − t_local) / t: the part of its step time that the compute-only run does not need (all-reduce
wait, snapshot copies, the outer step). The loss of each step (mean over ranks) is kept on the device
and reduced once at the end; the held-out loss is taken after CO2's last round is applied
(``finish``). Writes co2.md/.json to --out from rank 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.common import write_results  # noqa: E402
from mm.distributed.co2 import CO2, CO2Config  # noqa: E402
from mm.models.lm import LM, LMConfig  # noqa: E402

SHAPES = {  # name -> (LMConfig kwargs, batch rows per rank, sequence length)
    "tiny": (dict(vocab_size=64, hidden=32, layers=2, heads=2, kv_heads=2, head_dim=16, rotary_dim=8, ffn=64,
                  attn_type_list=["lightning", "softmax"]), 4, 32),
    "gpu": (dict(vocab_size=32000, hidden=1024, layers=12, heads=16, kv_heads=8, head_dim=64, rotary_dim=32,
                 ffn=2816, attn_type_list=(["lightning"] * 5 + ["softmax"]) * 2), 8, 2048),
}


def batch(vocab: int, rows: int, seq: int, seed: int, device: torch.device):
    """Learnable synthetic tokens: next = (3 t + 1) mod V, one token in five replaced at random."""
    gen = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, vocab, (rows, 1), generator=gen)]
    for _ in range(seq):
        ids.append((3 * ids[-1] + 1) % vocab)
    ids = torch.cat(ids, 1)
    noise = torch.rand(ids.shape, generator=gen) < 0.2
    ids = torch.where(noise, torch.randint(0, vocab, ids.shape, generator=gen), ids).to(device)
    return ids[:, :-1], ids[:, 1:]


def run_method(name: str, tau: int | None, args, shape, device: torch.device) -> dict:
    """Train a fresh model with one method; returns timing, per-step losses and the held-out loss."""
    kwargs, rows, seq = shape
    world, rank = dist.get_world_size(), dist.get_rank()
    torch.manual_seed(0)
    model = LM(LMConfig(**kwargs)).to(device)
    net = model
    if name == "ddp":
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    co2 = None
    if tau is not None:
        cfg = CO2Config(enabled=True, tau=tau, outer_momentum=0.2, penalty=True, clip=10.0, overlap=True)
        co2 = CO2(list(model.parameters()), opt, cfg, group=dist.new_group())
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)
    losses = []
    data = [batch(kwargs["vocab_size"], rows, seq, seed=10_000 * i + rank, device=device)  # made before timing
            for i in range(args.warmup + args.steps)]

    def step(i: int) -> None:
        ids, labels = data[i]
        with autocast:
            loss = net(ids, labels=labels, return_logits=False).loss
        loss.backward()
        (co2 or opt).step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach().float())

    for i in range(args.warmup):
        step(i)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    dist.barrier()
    start = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        step(i)
    sync()
    elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
    if device.type == "cuda":
        elapsed = elapsed.to(device)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slowest rank
    if co2 is not None:
        co2.finish()
    curve = torch.stack(losses)
    dist.all_reduce(curve)
    with torch.no_grad(), autocast:
        ids, labels = batch(kwargs["vocab_size"], rows, seq, seed=7, device=device)  # the same on every rank
        heldout = net(ids, labels=labels, return_logits=False).loss.detach().float().reshape(1)
    dist.all_reduce(heldout)
    seconds = float(elapsed)
    return {"method": name, "seconds": seconds, "ms_per_step": 1e3 * seconds / args.steps,
            "tokens_per_s": world * rows * seq * args.steps / seconds,
            "curve": (curve / world).tolist(), "heldout_loss": float(heldout) / world}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model and few steps (CPU/gloo check)")
    parser.add_argument("--taus", type=int, nargs="+", default=[1, 4, 12])
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 48; --tiny 12)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 12; --tiny 2)")
    parser.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 3e-4; --tiny 1e-2)")
    parser.add_argument("--out", default=None, help="folder for co2.md/.json (rank 0 writes)")
    args = parser.parse_args()
    args.steps = args.steps or (12 if args.tiny else 48)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.tiny else 12)
    args.lr = args.lr or (1e-2 if args.tiny else 3e-4)

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    else:
        torch.set_num_threads(1)
    dist.init_process_group("nccl" if cuda else "gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    shape = SHAPES["tiny" if args.tiny else "gpu"]
    results = [run_method("local", None, args, shape, device), run_method("ddp", None, args, shape, device)]
    results += [run_method(f"co2 τ={tau}", tau, args, shape, device) for tau in args.taus]
    local = results[0]["seconds"]
    for r in results:
        r["comm_share"] = max(0.0, (r["seconds"] - local) / r["seconds"])
        r["speedup_vs_ddp"] = results[1]["seconds"] / r["seconds"]
    if rank == 0:
        rows = [{k: v for k, v in r.items() if k != "curve"} for r in results]
        every = max(1, len(results[0]["curve"]) // 12)
        curves = [{"step": i + 1, **{r["method"]: r["curve"][i] for r in results}}
                  for i in range(0, len(results[0]["curve"]), every)]
        kwargs, rows_per_rank, seq = shape
        notes = (f"{world} rank(s) ({'NCCL' if cuda else 'gloo'}); LM {kwargs['hidden']} wide, {kwargs['layers']} "
                 f"layers, vocab {kwargs['vocab_size']}; {rows_per_rank} × {seq} tokens per rank and step; "
                 f"{args.warmup} warm-up + {args.steps} timed steps; AdamW lr {args.lr}. comm_share = "
                 "(t − t_local) / t with t_local the same steps without any communication.")
        columns = ["method", "ms_per_step", "tokens_per_s", "comm_share", "speedup_vs_ddp", "heldout_loss"]
        text = write_results(args.out, "co2", "CO2 vs DDP: throughput, communication share, loss",
                             {"throughput": (rows, columns),
                              "training loss (mean over ranks)": (curves, ["step", *[r["method"] for r in results]])},
                             notes=notes) if args.out else None
        print(text or "\n".join(str(r) for r in rows))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

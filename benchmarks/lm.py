"""Benchmark the hybrid lightning-attention MoE LM (issue 4) on one GPU.

    python benchmarks/lm.py --out benchmarks/results            # all sections
    python benchmarks/lm.py --only moe --tiny                   # a CPU smoke run of one section

Sections, each measured against its peer in the same run:
- train: tokens/s, MFU and peak memory of a ~0.5B-total-parameter MoE LM (E = 8, top-2; MiniMax
  pattern: seven lightning layers then one softmax layer; --shape picks one of SHAPES) at sequence
  length 2K / 8K / 32K, against the same shape with every layer softmax (SDPA flash).
  B·T = --tokens per step; AdamW; bf16 autocast.
  With --compile each model also runs with its decoder layers under torch.compile (compile time
  is spent in the warm-up steps, outside the timing), and on CUDA also compiled with the whole step
  replayed as one CUDA graph (mm.cuda_graph, what `train.cuda_graph: true` does).
  MFU = model FLOPs · tokens/s / 989 TFLOP/s (H200 dense bf16 datasheet); model FLOPs per token are
  6 · active parameters (the LM head included, the embedding lookup not, experts top_k / E) plus
  attention's (see model_flops_per_token). Each step waits for the previous one, as `mm train` does.
- shapes: every shape of SHAPES in the fastest mode: the hybrid's tokens/s and MFU at each length, the
  longest against the shortest and against the all-softmax model (the two long-context goals pull
  against each other; benchmarks/results/lm.md shows why).
- moe: the MoE layer alone (router + permute + grouped SwiGLU experts + unpermute, forward+backward,
  bf16) in TFLOP/s against a dense SwiGLU of the same active FLOPs and a Python loop over experts,
  with even and skewed routing; with --compile also the layer under torch.compile. Calls run back to
  back (the host ahead of the device, as inside a model); the last two columns wait for each call,
  which adds the host's launch lead to every call.
- decode: ms per generated token after a prompt of 1K / 16K / 128K tokens, hybrid vs all-softmax,
  eager and (CUDA) with the step replayed as a CUDA graph (GenerationConfig.cuda_graph).
- check: packed softmax attention through FlashAttention varlen (CUDA) against the masked path.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks import plot_results  # noqa: E402
from benchmarks.common import back_to_back_ms, time_ms, write_results  # noqa: E402
from mm.cuda_graph import StepGraph  # noqa: E402
from mm.layers.moe import MoE  # noqa: E402
from mm.layers.swiglu import SwiGLU  # noqa: E402
from mm.models.lm import LM, LMConfig, compile_layers  # noqa: E402
from mm.models.lm_generate import Decoder, prefill  # noqa: E402
from mm.train.optim import set_update_mode  # noqa: E402

PEAK_FLOPS = 989e12


_BENCH = dict(vocab_size=32000, kv_heads=2, head_dim=128, rotary_dim=64, experts=8, top_k=2)
# Model shapes, each about 0.55B parameters in all with E = 8, top-2 (LMConfig fields; "tiny" is the
# CPU smoke shape). The first is the train and decode sections' default; the shapes section runs them all.
SHAPES = {
    "2048x8": {**_BENCH, "hidden": 2048, "layers": 8, "heads": 16, "ffn": 640},  # attention width = hidden
    "1024x16": {**_BENCH, "hidden": 1024, "layers": 16, "heads": 8, "ffn": 1024},  # narrow and deep
    "2048x8, attention 1024": {**_BENCH, "hidden": 2048, "layers": 8, "heads": 8, "ffn": 1024, "tie_embeddings": True},
    "tiny": dict(vocab_size=256, hidden=64, layers=4, heads=4, kv_heads=2, head_dim=16, rotary_dim=8, ffn=64,
                 experts=4, top_k=2),
}


def model_config(variant: str, shape: str) -> LMConfig:
    """The shape as the hybrid (MiniMax pattern: seven lightning layers then one softmax layer, three
    then one in the 4-layer tiny shape) or with every layer softmax."""
    fields = SHAPES[shape]
    layers = fields["layers"]
    group = min(8, layers)
    pattern = (["lightning"] * (group - 1) + ["softmax"]) * (layers // group)
    return LMConfig(**fields, attn_type_list=pattern if variant == "hybrid" else ["softmax"] * layers)


def active_params(model: LM) -> int:
    """Parameters one token meets in a matmul: everything but the input embedding (a lookup), experts
    counted top_k / E, the LM head counted once (also when tied to the embedding)."""
    cfg = model.cfg
    total = cfg.vocab_size * cfg.hidden  # the LM head
    for name, p in model.named_parameters():
        if name.startswith(("embed_tokens", "lm_head")):
            continue
        total += p.numel() * cfg.top_k // cfg.experts if name.endswith((".gate_up", ".down")) else p.numel()
    return total


def model_flops_per_token(model: LM, seq: int) -> float:
    """Training FLOPs per token, forward + backward (3 × forward): 6 · active parameters, plus the
    token mixing: causal softmax attention 6·T·H·d per layer (PaLM's 12·T·H·d, halved for causality),
    lightning attention 12·H·d² per layer (state update kᵀv and readout q·S, 2·d² each, per head)."""
    cfg = model.cfg
    kinds = cfg.layer_types
    mixing = kinds.count("softmax") * 6 * seq * cfg.heads * cfg.head_dim
    mixing += kinds.count("lightning") * 12 * cfg.heads * cfg.head_dim**2
    return 6 * active_params(model) + mixing


MODES = ("eager", "compiled", "compiled + CUDA graph")


def train_row(variant: str, mode: str, seq: int, args, dev, shape: str) -> dict:
    torch.manual_seed(0)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = LM(model_config(variant, shape)).to(dev)
    if mode != "eager":
        torch._dynamo.reset()  # a fresh compile per row: no row falls back to eager at the recompile limit
        compile_layers(model)
    graphed = mode == "compiled + CUDA graph"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    set_update_mode(opt, capturable=graphed)  # fused; capturable with a device lr, as train.cuda_graph
    batch = max(1, args.tokens // seq)
    ids = torch.randint(0, model.cfg.vocab_size, (batch, seq + 1), device=dev)

    def body(ids):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            out = model(ids[:, :-1], labels=ids[:, 1:], return_logits=False)
        out.loss.backward()
        opt.step()

    step = StepGraph(body) if graphed else body
    ms = time_ms(lambda: step(ids), warmup=3, repeat=args.repeat)
    tok_s = batch * seq / (ms / 1e3)
    flops = model_flops_per_token(model, seq)
    return {
        "seq_len": seq, "model": variant, "mode": mode, "batch": batch,
        "params (M)": sum(p.numel() for p in model.parameters()) / 1e6, "active (M)": active_params(model) / 1e6,
        "GFLOP/token": flops / 1e9, "step ms": ms, "tokens/s": tok_s, "MFU %": 100 * flops * tok_s / PEAK_FLOPS,
        "peak GiB": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else 0.0,
    }  # fmt: skip


def train_modes(args, dev) -> list[str]:
    modes = MODES if args.compile and dev.type == "cuda" else MODES[:2] if args.compile else MODES[:1]
    return [m for m in modes if m in args.modes] if args.modes else list(modes)


def bench_train(args, dev) -> list[dict]:
    modes = train_modes(args, dev)
    rows = []
    for seq in args.seqlens:
        for variant in ("hybrid", "all-softmax"):
            for mode in modes:
                rows.append(train_row(variant, mode, seq, args, dev, args.shape))
                print(rows[-1], flush=True)
    for r in rows:
        same = [p for p in rows if p["mode"] == r["mode"]]
        own = next(p for p in same if p["seq_len"] == args.seqlens[0] and p["model"] == r["model"])
        peer = next(p for p in same if p["seq_len"] == r["seq_len"] and p["model"] == "all-softmax")
        r["vs own shortest"] = r["tokens/s"] / own["tokens/s"]
        r["vs all-softmax"] = r["tokens/s"] / peer["tokens/s"]
    return rows


def bench_shapes(args, dev) -> list[dict]:
    """The hybrid of every shape at each sequence length and the all-softmax model at the longest, in
    the fastest mode selected: how the long-context goals depend on the shape."""
    mode = train_modes(args, dev)[-1]
    shortest, longest = args.seqlens[0], args.seqlens[-1]
    rows = []
    for shape in ["tiny"] if args.tiny else [s for s in SHAPES if s != "tiny"]:
        hybrid = {seq: train_row("hybrid", mode, seq, args, dev, shape) for seq in args.seqlens}
        softmax = train_row("all-softmax", mode, longest, args, dev, shape)
        cfg = model_config("hybrid", shape)
        rows.append({
            "shape": shape, "attention width": cfg.heads * cfg.head_dim, "mode": mode,
            "params (M)": hybrid[shortest]["params (M)"], "active (M)": hybrid[shortest]["active (M)"],
            **{f"tokens/s {seq}": r["tokens/s"] for seq, r in hybrid.items()},
            **{f"MFU % {seq}": r["MFU %"] for seq, r in hybrid.items()},
            f"{longest} vs {shortest}": hybrid[longest]["tokens/s"] / hybrid[shortest]["tokens/s"],
            f"vs all-softmax at {longest}": hybrid[longest]["tokens/s"] / softmax["tokens/s"],
        })  # fmt: skip
        print(rows[-1], flush=True)
    return rows


class LoopMoE(nn.Module):
    """The peer: one Python iteration per expert (what the MoE layer must not do)."""

    def __init__(self, moe: MoE):
        super().__init__()
        self.moe = moe

    def forward(self, x):
        _, weights, ids = self.moe.route(x)
        y = torch.zeros_like(x)
        for e in range(self.moe.experts):
            token, slot = (ids == e).nonzero(as_tuple=True)
            h = x[token] @ self.moe.gate_up[e]
            h = nn.functional.silu(h[:, : self.moe.ffn]) * h[:, self.moe.ffn :]
            y.index_add_(0, token, (h @ self.moe.down[e]) * weights[token, slot, None].to(h.dtype))
        return y


def bench_moe(args, dev) -> list[dict]:
    n, h, f, e, k = (256, 64, 64, 4, 2) if args.tiny else (16384, 2048, 1536, 8, 2)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    flops = 3 * 2 * n * k * 3 * h * f  # (fwd + 2 × bwd) · 2 · assignments · (h·2f + f·h)
    rows = []
    for routing in ("even", "skewed"):
        torch.manual_seed(0)
        moe = MoE(h, f, e, k).to(dev, dtype)
        for p in moe.parameters():
            nn.init.normal_(p, std=0.02)
        if routing == "skewed":  # a long router row: expert 0 is the first choice of about half the tokens
            with torch.no_grad():
                moe.gate.weight[0] *= 20
        dense = SwiGLU(h, k * f).to(dev, dtype)
        x = torch.randn(n, h, device=dev, dtype=dtype, requires_grad=True)
        grad = torch.randn(n, h, device=dev, dtype=dtype)
        counts = torch.bincount(moe.route(x)[2].flatten(), minlength=e)
        peers = {"ours (grouped)": lambda x, moe=moe: moe(x)[0], "python loop": LoopMoE(moe), "dense SwiGLU": dense}
        if args.compile:
            compiled = torch.compile(moe, dynamic=False)
            peers["ours (compiled)"] = lambda x, compiled=compiled: compiled(x)[0]
        times, waited = {}, {}
        for name, fn in peers.items():
            call = lambda fn=fn, x=x, grad=grad: torch.autograd.backward(fn(x), grad)  # noqa: E731
            times[name] = back_to_back_ms(call, repeat=4 * args.repeat)
            waited[name] = time_ms(call, repeat=args.repeat)
        for name, ms in times.items():
            rows.append({"routing": routing, "max/mean load": (counts.max() / counts.float().mean()).item(),
                         "impl": name, "fwd+bwd ms": ms, "TFLOP/s": flops / (ms / 1e3) / 1e12,
                         "vs dense": times["dense SwiGLU"] / ms, "ms, each call waited on": waited[name],
                         "vs dense, waited": waited["dense SwiGLU"] / waited[name]})
        print(rows[-len(peers):], flush=True)
    return rows


def decode_rows(variant: str, graphed: bool, args, dev) -> list[dict]:
    torch.manual_seed(0)
    model = LM(model_config(variant, args.shape)).to(dev).eval()
    if dev.type == "cuda":
        model = model.to(torch.bfloat16)
    rows = []
    for ctx in args.contexts:
        prompt = torch.randint(0, model.cfg.vocab_size, (ctx,)).tolist()
        cache, logits = prefill(model, [prompt], capacity=ctx + args.decode_tokens + 8)
        decode, tokens = Decoder(model, cache, cuda_graph=graphed), logits.argmax(-1)
        ms = time_ms(lambda decode=decode, tokens=tokens: decode(tokens), warmup=3, repeat=args.decode_tokens)
        cache_bytes = sum(t.numel() * t.element_size() for d in (cache.states, cache.keys, cache.values)
                          for t in d.values())
        rows.append({"model": variant, "mode": "CUDA graph" if graphed else "eager", "context": ctx,
                     "ms/token": ms, "cache MiB": cache_bytes / 2**20})
        print(rows[-1], flush=True)
    return rows


def bench_decode(args, dev) -> list[dict]:
    """Batch 1, bf16 on CUDA; eager and, on CUDA, the step replayed as a CUDA graph."""
    rows = [r for variant in ("hybrid", "all-softmax") for graphed in ([False, True] if dev.type == "cuda" else [False])
            for r in decode_rows(variant, graphed, args, dev)]
    for r in rows:
        first = next(p for p in rows if p["model"] == r["model"] and p["mode"] == r["mode"])
        r["vs own 1st context"] = r["ms/token"] / first["ms/token"]
    return rows


def check_varlen(dev) -> list[dict]:
    """Packed documents: FlashAttention varlen (CUDA) against the T×T masked SDPA path."""
    from mm.layers.packing import document_ids, document_positions
    from mm.layers.rotary import rotary_cos_sin
    from mm.layers.softmax_attention import SoftmaxAttention

    torch.manual_seed(0)
    attn = SoftmaxAttention(256, 8, 2, 32).to(dev, torch.bfloat16)
    B, T = 2, 1000
    cu = torch.tensor([0, 300, 301, 1000, 1500, 2000], device=dev)
    x = torch.randn(B, T, 256, device=dev, dtype=torch.bfloat16)
    rope = rotary_cos_sin(document_positions(cu, B, T), 16, 1e4)
    doc = document_ids(cu, B, T)
    fast = attn(x, rope, cu_seqlens=cu, doc_ids=doc)
    masked = attn(x, rope, cu_seqlens=None, doc_ids=doc)
    err = ((fast.float() - masked.float()).norm() / masked.float().norm()).item()
    return [{"check": "softmax varlen vs masked (bf16)", "relative error": err, "ok": err < 1e-2}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--only", choices=["train", "shapes", "moe", "decode"], default=None)
    parser.add_argument("--shape", choices=[s for s in SHAPES if s != "tiny"], default=next(iter(SHAPES)),
                        help="model shape of the train and decode sections")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke run; figures meaningless)")
    parser.add_argument("--seqlens", type=int, nargs="+", default=[2048, 8192, 32768])
    parser.add_argument("--tokens", type=int, default=32768, help="tokens per training step")
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 16384, 131072])
    parser.add_argument("--decode-tokens", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="also time the MoE layer and each model compiled")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=None,
                        help="train section: only these of the modes --compile selects")
    args = parser.parse_args()
    if args.tiny:
        args.seqlens, args.tokens, args.contexts, args.repeat, args.shape = [32, 64], 128, [16, 64], 2, "tiny"
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = "lm" if not args.tiny else "lm_tiny_smoke"
    notes = ("Reference (issue 4): a dense 0.55B Llama-style model with SDPA trains at 133K tok/s at 2K, "
             f"106K at 8K, 59K at 32K on this card (≈ 48 % MFU).\n\n![tokens/s, MFU, decode, MoE layer]({name}.png)")
    plan = [
        ("check", dev.type == "cuda", lambda: check_varlen(dev), ["check", "relative error", "ok"]),
        ("moe layer: forward+backward", args.only in (None, "moe"), lambda: bench_moe(args, dev),
         ["routing", "max/mean load", "impl", "fwd+bwd ms", "TFLOP/s", "vs dense", "ms, each call waited on",
          "vs dense, waited"]),
        ("train: tokens/s and MFU", args.only in (None, "train"), lambda: bench_train(args, dev),
         ["seq_len", "model", "mode", "batch", "params (M)", "active (M)", "GFLOP/token", "step ms", "tokens/s",
          "MFU %", "peak GiB", "vs own shortest", "vs all-softmax"]),
        ("shapes: the long-context goals by model shape", args.only in (None, "shapes"),
         lambda: bench_shapes(args, dev),
         ["shape", "attention width", "mode", "params (M)", "active (M)",
          *(f"tokens/s {seq}" for seq in args.seqlens), *(f"MFU % {seq}" for seq in args.seqlens),
          f"{args.seqlens[-1]} vs {args.seqlens[0]}", f"vs all-softmax at {args.seqlens[-1]}"]),
        ("decode: ms per token", args.only in (None, "decode"), lambda: bench_decode(args, dev),
         ["model", "mode", "context", "ms/token", "cache MiB", "vs own 1st context"]),
    ]  # fmt: skip
    sections = {}
    for heading, wanted, run, columns in plan:
        if wanted:
            sections[heading] = (run(), columns)
            text = write_results(args.out, name, "Hybrid lightning-attention MoE LM", sections, notes)  # after each
    print(text)
    plot_results.plot_beside(os.path.join(args.out, f"{name}.json"))


if __name__ == "__main__":
    main()

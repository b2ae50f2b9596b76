"""Benchmark LightNet attention against its peers on one GPU (issue 17).

    python benchmarks/lightnet_attn.py --out benchmarks/results

bf16, H = 12, d = e = 64, about --tokens tokens per call (B = tokens // N). Shapes: images of
224², 512², 1024², 2048² pixels in 16-pixel patches (N = 196, 1024, 4096, 16384 tokens) and a
16-frame 224² video (N = 16 · 196 = 3136). Forward and forward+backward throughput (million
tokens/s, median of CUDA-event timings) and peak memory over the inputs, all in this one run:

  non-causal (the image/video mixer):
    ours         lightnet_attn(causal=False), Triton backend (one reduction + one token pass)
    torch        the same maths in plain torch (softmax over tokens + two einsums; backend="chunked")
    sdpa         softmax attention, bidirectional (torch SDPA, flash backend)
    two-scan     multiplicative-decay linear attention run forward and on the flipped sequence,
                 summed (fla chunk_simple_gla, g_gamma = -ALiBi slopes, scale 1): what a decay
                 model needs to see the whole image
  causal (language models), at --causal-tokens tokens per call (the torch form is slow: 0.48 M tok/s
  fwd+bwd at 224² on an H200, so fewer tokens keep the run short):
    ours         lightnet_attn(causal=True, backend="triton"): the causal Triton kernels (causal_kernels)
    torch        lightnet_attn(causal=True, backend="chunked"): the chunked pure-torch decay form
    fla          fla.ops.lightnet.chunk_lightnet(scale=1.0) (additive gate + chunk_gla)
At every shape ours is checked against the plain-torch form (non-causal) or fla (causal; the
chunked torch form is checked against fla too).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.common import time_ms, write_results  # noqa: E402
from mm.ops.lightnet_attn import lightnet_attn  # noqa: E402
from mm.ops.lightning_attn import build_slopes  # noqa: E402

SHAPES = [("image 224²", 196), ("image 512²", 1024), ("image 1024²", 4096), ("image 2048²", 16384),
          ("video 16×224²", 3136)]


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.detach().double(), ref.detach().double()
    return float("inf") if not torch.isfinite(x).all() else ((x - ref).norm() / ref.norm()).item()


def noncausal_methods(H: int):
    from fla.ops.simple_gla import chunk_simple_gla
    from torch.nn.attention import SDPBackend, sdpa_kernel

    slopes = -build_slopes(H).cuda()

    def two_scan(q, k, v):
        fwd, _ = chunk_simple_gla(q, k, v, g_gamma=slopes, scale=1.0)
        bwd, _ = chunk_simple_gla(q.flip(1), k.flip(1), v.flip(1), g_gamma=slopes, scale=1.0)
        return fwd + bwd.flip(1)

    def sdpa(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return o.transpose(1, 2)

    return {
        "ours (triton)": lambda q, k, v: lightnet_attn(q, k, v, causal=False, backend="triton"),
        "plain torch": lambda q, k, v: lightnet_attn(q, k, v, causal=False, backend="chunked"),
        "sdpa (softmax)": sdpa,
        "two-scan decay (fla simple_gla x2)": two_scan,
    }


def causal_methods():
    from fla.ops.lightnet import chunk_lightnet

    return {
        "ours (triton)": lambda q, k, v: lightnet_attn(q, k, v, causal=True, backend="triton"),
        "ours (chunked torch)": lambda q, k, v: lightnet_attn(q, k, v, causal=True, backend="chunked"),
        "fla chunk_lightnet": lambda q, k, v: chunk_lightnet(q, k, v, scale=1.0)[0],
    }


def measure(fn, q, k, v, do) -> dict:
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]

    def fwd():
        with torch.no_grad():
            fn(q, k, v)

    def fwd_bwd():
        torch.autograd.backward(fn(*leaves), do)
        for x in leaves:
            x.grad = None

    tokens = q.shape[0] * q.shape[1]
    try:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fwd_bwd()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        t_f, t_fb = time_ms(fwd, warmup=2, repeat=10), time_ms(fwd_bwd, warmup=2, repeat=10)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"fwd Mtok/s": "OOM", "fwd+bwd Mtok/s": "OOM", "peak MiB": "OOM"}
    return {"fwd Mtok/s": tokens / t_f / 1e3, "fwd+bwd Mtok/s": tokens / t_fb / 1e3, "peak MiB": peak}


def inputs(B, N, H, d, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v, do = (torch.randn(B, N, H, d, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(4))
    return q, k, v, do


def check_noncausal(methods, q, k, v) -> dict:
    return {"ours (triton)": rel(methods["ours (triton)"](q, k, v),
                                 lightnet_attn(q.float(), k.float(), v.float(), causal=False, backend="chunked"))}


def check_causal(methods, q, k, v) -> dict:
    fla = methods["fla chunk_lightnet"](q, k, v)
    return {m: rel(methods[m](q, k, v), fla) for m in ("ours (triton)", "ours (chunked torch)")}


def measure_all(methods, shape, tokens, seed, check_name, check) -> list[dict]:
    """One row per method on B = tokens / N sequences of ``shape`` = (name, N, H, d); the methods
    ``check`` returns (method -> accuracy) carry it under ``check_name``."""
    name, N, H, d = shape
    B = max(1, tokens // N)
    q, k, v, do = inputs(B, N, H, d, seed=seed)
    checked = check(methods, q, k, v)
    rows = []
    for method, fn in methods.items():
        row = {"shape": name, "N": N, "B": B, "method": method, **measure(fn, q, k, v, do)}
        if method in checked:
            row[check_name] = checked[method]
        rows.append(row)
        print(row, flush=True)
    del q, k, v, do
    torch.cuda.empty_cache()
    return rows


def speedups(rows: list[dict]) -> list[dict]:
    """Per shape, fwd+bwd throughput of "ours (triton)" over each other method ("-" where one ran OOM)."""
    summary = []
    for name, _ in SHAPES:
        by = {r["method"]: r["fwd+bwd Mtok/s"] for r in rows if r["shape"] == name}
        ours = by["ours (triton)"]
        summary.append({"shape": name, **{
            f"ours / {m}": ours / x if isinstance(x, float) and isinstance(ours, float) else "-"
            for m, x in by.items() if m != "ours (triton)"}})
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tokens", type=int, default=262144)
    ap.add_argument("--causal-tokens", type=int, default=16384)  # the chunked torch form is slow
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--dim", type=int, default=64)
    args = ap.parse_args()
    H, d = args.heads, args.dim
    rows, causal_rows = [], []
    for name, N in SHAPES:
        shape = (name, N, H, d)
        rows += measure_all(noncausal_methods(H), shape, args.tokens, 0, "rel. err vs fp32 torch", check_noncausal)
        causal_rows += measure_all(causal_methods(), shape, args.causal_tokens, 1, "rel. diff vs fla", check_causal)

    summary, causal_summary = speedups(rows), speedups(causal_rows)
    cols = ["shape", "N", "B", "method", "fwd Mtok/s", "fwd+bwd Mtok/s", "peak MiB"]
    text = write_results(
        args.out, "lightnet_attn", "LightNet attention vs softmax, two-scan decay and fla (issue 17)",
        {"non-causal, fwd+bwd speed-up of ours": (summary, list(summary[0])),
         "causal, fwd+bwd speed-up of ours (triton)": (causal_summary, list(causal_summary[0])),
         f"non-causal ({args.tokens} tokens per call, H = {H}, d = e = {d}, bf16)":
             (rows, cols + ["rel. err vs fp32 torch"]),
         f"causal ({args.causal_tokens} tokens per call)": (causal_rows, cols + ["rel. diff vs fla"])},
        notes="Op level: q, k, v given ([B, N, H, d] bf16), no projections. 16-pixel patches. "
              "Peak MiB: the most memory a forward+backward allocated above the inputs.",
    )
    print(text)


if __name__ == "__main__":
    main()

"""Benchmark lightning attention against its peers on one GPU (issue 3).

    python benchmarks/lightning_attn.py --out benchmarks/results

bf16, H = 16, d = e in --dims, B * T = --tokens (B = 1 once T exceeds it), T over --seqlens.
Forward and forward+backward throughput (million tokens/s, median of triton's do_bench) and peak
extra memory (over the inputs) for ours (`lightning_attn`, Triton backend), fla `chunk_simple_gla`
(g_gamma = -slopes, scale = 1: the same maths) and torch SDPA causal with the flash backend
(softmax attention, for scale; up to --sdpa-max tokens per sequence), all in this one run. The
slopes are those of layer 0 of 8 (the fastest decays); ours is measured again at T = 4096 and the
longest T with the slopes of --decay-layers (layer 7 of 8 hardly decays), since the local-state
pass skips tokens beyond a head's decay horizon and so runs faster the faster a head decays. At
every shape ours is checked against fla (o, dq, dk, dv); --full-check adds states, varlen and a
float64 check. Writes lightning_attn.md and lightning_attn.json to --out and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks import plot_results  # noqa: E402
from mm.ops.lightning_attn import build_slopes, lightning_attn  # noqa: E402
from mm.ops.lightning_attn.reference import lightning_attn_quadratic  # noqa: E402


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.detach().double(), ref.detach().double()
    return float("inf") if not torch.isfinite(x).all() else ((x - ref).norm() / ref.norm()).item()


def fla_fn():
    from fla.ops.simple_gla import chunk_simple_gla

    def run(q, k, v, slopes, **kw):
        return chunk_simple_gla(q, k, v, g_gamma=-slopes, scale=1.0, **kw)

    return run


def ours_fn(q, k, v, slopes, **kw):
    return lightning_attn(q, k, v, slopes, backend="triton", **kw)


def sdpa_fn(q, k, v, slopes):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    return o.transpose(1, 2), None


def grads_of(fn, q, k, v, slopes, h0, do, dht, **kw):
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, h0)]
    o, ht = fn(*leaves[:3], slopes, initial_state=leaves[3], output_final_state=True, **kw)
    torch.autograd.backward([o, ht], [do.to(o.dtype), dht.to(ht.dtype)])
    return [o, ht] + [x.grad for x in leaves]


def correctness(dev) -> dict:
    """Ours against fla (bf16, equal lengths and varlen) and against float64 (fp32, split path)."""
    fla = fla_fn()
    out = {}
    torch.manual_seed(0)
    H, d = 16, 128
    slopes = build_slopes(H, layer_idx=1, num_layers=8).to(dev)
    names = ["o", "final_state", "dq", "dk", "dv", "dh0"]
    for label, B, T, cu in (("bf16 B=2 T=3001", 2, 3001, None),
                            ("bf16 varlen 3 seqs", 1, 9000, torch.tensor([0, 1234, 1235, 9000], device=dev))):
        n = B if cu is None else cu.numel() - 1
        q, k, v, do = (torch.randn(B, T, H, d, device=dev, dtype=torch.bfloat16) for _ in range(4))
        h0, dht = torch.randn(n, H, d, d, device=dev), torch.randn(n, H, d, d, device=dev)
        kw = {} if cu is None else {"cu_seqlens": cu}
        a = grads_of(ours_fn, q, k, v, slopes, h0, do, dht, **kw)
        b = grads_of(fla, q, k, v, slopes, h0, do, dht, **kw)
        out[f"ours vs fla, {label}"] = {nm: rel(x, y) for nm, x, y in zip(names, a, b, strict=True)}
    # fp32 against the float64 reference, with a segment length that splits every sequence
    from mm.ops.lightning_attn.triton_function import lightning_attn_triton

    B, T, H, d = 2, 1500, 4, 128
    sl = slopes[:H]
    q, k, v, do = (torch.randn(B, T, H, d, device=dev) for _ in range(4))
    h0, dht = torch.randn(B, H, d, d, device=dev), torch.randn(B, H, d, d, device=dev)
    ref = grads_of(lambda *x, **kw: lightning_attn_quadratic(*x, initial_state=kw["initial_state"]),
                   *(x.double() for x in (q, k, v)), sl, h0.double(), do.double(), dht.double())
    for seg in (None, 256):
        got = grads_of(lambda *x, seg=seg, **kw: lightning_attn_triton(*x, segment_len=seg, **kw),
                       q, k, v, sl, h0, do, dht)
        out[f"ours fp32 vs float64 reference, segment_len={seg}"] = {
            nm: rel(x, y) for nm, x, y in zip(names, got, ref, strict=True)}
    return out


def agreement(ours, fla, B, T, H, d, slopes, dev) -> dict:
    """Relative error of ours against fla on the benchmark shape (bf16, no state): o, dq, dk, dv."""
    q, k, v, do = (torch.randn(B, T, H, d, device=dev, dtype=torch.bfloat16) for _ in range(4))
    res = []
    for fn in (ours, fla):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        o, _ = fn(*leaves, slopes)
        o.backward(do)
        res.append([o] + [x.grad for x in leaves])
    return {n: rel(a, b) for n, a, b in zip(["o", "dq", "dk", "dv"], *res, strict=True)}


def measure(fn, B, T, H, d, slopes, dev, rep_ms) -> dict:
    from triton.testing import do_bench

    q, k, v, do = (torch.randn(B, T, H, d, device=dev, dtype=torch.bfloat16) for _ in range(4))
    for x in (q, k, v):
        x.requires_grad_()

    def fwd():
        with torch.no_grad():
            fn(q, k, v, slopes)

    def fwd_bwd():
        o, _ = fn(q, k, v, slopes)
        o.backward(do)

    res = {}
    for name, step in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        step()  # compile / autotune outside the timing and the memory peak
        for x in (q, k, v):
            x.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        res[f"{name}_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        ms = do_bench(step, warmup=max(25, rep_ms // 4), rep=rep_ms, grad_to_none=[q, k, v], return_mode="median")
        res[f"{name}_ms"] = ms
        res[f"{name}_mtok_s"] = B * T / (ms * 1e-3) / 1e6
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--dims", type=int, nargs="+", default=[128, 64])
    p.add_argument("--seqlens", type=int, nargs="+", default=[1024, 4096, 16384, 65536, 262144, 1048576])
    p.add_argument("--tokens", type=int, default=65536)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--sdpa-max", type=int, default=65536)
    p.add_argument("--rep-ms", type=int, default=200)
    p.add_argument("--decay-layers", type=int, nargs="*", default=[4, 7],
                   help="layers (of 8) whose slopes ours is also measured with, at T = 4096 and the longest T")
    p.add_argument("--append", action="store_true",
                   help="keep the rows of an earlier run in --out (other d/T) and add this run's commands")
    p.add_argument("--full-check", action="store_true",
                   help="also check initial/final state and varlen against fla, and fp32 against float64 "
                        "(slow: fla autotunes its varlen/state kernels, fp32 kernels compile in ieee mode)")
    args = p.parse_args()
    dev = torch.device("cuda")
    t_start = time.time()
    import fla
    import triton

    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(dev),
        "command": "python " + " ".join(sys.argv),
        "versions": {"torch": torch.__version__, "triton": triton.__version__,
                     "fla-core": getattr(fla, "__version__", "?")},
        "setup": {"dtype": "bf16", "heads": args.heads, "tokens_per_call": args.tokens,
                  "peers": ["fla chunk_simple_gla(g_gamma=-slopes, scale=1.0)", "torch SDPA causal (flash)"]},
    }
    if args.full_check:
        meta["correctness"] = correctness(dev)
        for k, v in meta["correctness"].items():
            print(k, {n: f"{x:.1e}" for n, x in v.items()}, flush=True)
    impls = {"ours": ours_fn, "fla": fla_fn(), "sdpa": sdpa_fn}
    rows = []
    if args.append:
        meta, rows = appended(args.out, meta, args.dims, args.seqlens)

    def record(impl: str, fn, d: int, T: int, layer: int, slopes: torch.Tensor) -> None:
        B = max(1, args.tokens // T)
        rows.append({"d": d, "T": T, "B": B, "impl": impl, "layer": layer,
                     **measure(fn, B, T, args.heads, d, slopes, dev, args.rep_ms)})
        torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), flush=True)
        write(args.out, meta, rows, time.time() - t_start)

    for d in args.dims:
        slopes = build_slopes(args.heads, layer_idx=0, num_layers=8).to(dev)
        for T in args.seqlens:
            for name, fn in impls.items():
                if name != "sdpa" or T <= args.sdpa_max:
                    record(name, fn, d, T, 0, slopes)
            # cheap: both kernels are compiled and tuned for this shape already
            err = agreement(impls["ours"], impls["fla"], max(1, args.tokens // T), T, args.heads, d, slopes, dev)
            meta.setdefault("agreement_with_fla", {})[f"d{d}_T{T}"] = err
            print("ours vs fla at the benchmark shape:", {n: f"{x:.1e}" for n, x in err.items()}, flush=True)
            write(args.out, meta, rows, time.time() - t_start)
        for layer in args.decay_layers:
            layer_slopes = build_slopes(args.heads, layer_idx=layer, num_layers=8).to(dev)
            for T in (4096, max(args.seqlens)):
                record("ours", ours_fn, d, T, layer, layer_slopes)
    print(write(args.out, meta, rows, time.time() - t_start))
    plot_results.plot_beside(os.path.join(args.out, "lightning_attn.json"))


def appended(out_dir: str, meta: dict, dims: list[int], seqlens: list[int]) -> tuple[dict, list[dict]]:
    """Rows and metadata of an earlier run in `out_dir`, less the (d, T) this run measures again."""
    with open(os.path.join(out_dir, "lightning_attn.json")) as fh:
        old = json.load(fh)
    if old["device"] != meta["device"] or old["versions"] != meta["versions"]:
        raise SystemExit(f"--append: {out_dir} was measured on {old['device']} {old['versions']}, not here")
    rows = [r for r in old["rows"] if not (r["d"] in dims and r["T"] in seqlens)]
    meta = {**meta, "date": f"{old['date']} and {meta['date']}",
            "command": f"{old['command']}` then `{meta['command']}"}
    for key in ("agreement_with_fla", "correctness"):
        if key in old:
            meta[key] = old[key]
    return meta, rows


def write(out_dir: str, meta: dict, rows: list[dict], seconds: float) -> str:
    """Write the md and json files; return the markdown."""
    os.makedirs(out_dir, exist_ok=True)
    get = {(r["d"], r["T"], r["impl"], r.get("layer", 0)): r for r in rows}
    lines = [
        "# Lightning attention benchmark", "",
        f"- date: {meta['date']}", f"- device: {meta['device']}", f"- command: `{meta['command']}`",
        f"- versions: {meta['versions']}",
        f"- setup: bf16, H = {meta['setup']['heads']}, d = e, B * T = {meta['setup']['tokens_per_call']} "
        "tokens per call (B = 1 beyond), million tokens/s (median), peak = extra memory over the inputs",
        "- slopes: `build_slopes(H, layer_idx=0, num_layers=8)` (2^-0.5 to 2^-8, the fastest decays); the "
        "constant-speed tables add other layers' slopes",
        f"- peers measured in the same run: {', '.join(meta['setup']['peers'])}", "",
    ]
    if "agreement_with_fla" in meta:
        lines += ["Ours against fla on the benchmark shapes (relative L2 error, bf16):", ""]
        lines += [f"- {k}: " + ", ".join(f"{n} {x:.1e}" for n, x in v.items())
                  for k, v in meta["agreement_with_fla"].items()]
        lines.append("")
    if "correctness" in meta:
        lines += ["Correctness on the GPU (relative L2 error):", ""]
        lines += [f"- {k}: " + ", ".join(f"{n} {x:.1e}" for n, x in v.items()) for k, v in meta["correctness"].items()]
        lines.append("")
    lines += ["![throughput against T](lightning_attn.png)", ""]  # drawn at the end of the run (plot_results)
    ratios = {}
    for d in sorted({r["d"] for r in rows}, reverse=True):
        lines += [f"## d = e = {d}", "",
                  "| T | B | ours fwd | fla fwd | ratio | ours fwd+bwd | fla fwd+bwd | ratio | SDPA fwd / fwd+bwd "
                  "| peak MiB fwd+bwd ours / fla |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for T in sorted({r["T"] for r in rows if r["d"] == d}):
            o, f, s = (get.get((d, T, n, 0)) for n in ("ours", "fla", "sdpa"))
            if o is None or f is None:
                continue
            rf, rb = o["fwd_mtok_s"] / f["fwd_mtok_s"], o["fwd_bwd_mtok_s"] / f["fwd_bwd_mtok_s"]
            ratios[f"d{d}_T{T}"] = {"fwd": rf, "fwd_bwd": rb,
                                    "peak_fwd_bwd": o["fwd_bwd_peak_mib"] / f["fwd_bwd_peak_mib"]}
            sd = f"{s['fwd_mtok_s']:.1f} / {s['fwd_bwd_mtok_s']:.1f}" if s else "—"
            lines.append(f"| {T} | {o['B']} | {o['fwd_mtok_s']:.1f} | {f['fwd_mtok_s']:.1f} | {rf:.2f}x "
                         f"| {o['fwd_bwd_mtok_s']:.1f} | {f['fwd_bwd_mtok_s']:.1f} | {rb:.2f}x | {sd} "
                         f"| {o['fwd_bwd_peak_mib']:.0f} / {f['fwd_bwd_peak_mib']:.0f} |")
        ts = sorted(T for T in {r["T"] for r in rows if r["d"] == d and r["impl"] == "ours"})
        if 4096 in ts and ts[-1] > 4096:
            lines += ["", f"Constant speed (ours, T = {ts[-1]} over T = 4096, by the layer whose slopes are used):",
                      "", "| slopes of layer (of 8) | fwd 4K / longest | ratio | fwd+bwd 4K / longest | ratio |",
                      "|---|---|---|---|---|"]
            for layer in sorted({r.get("layer", 0) for r in rows if r["d"] == d}):
                a, b = get.get((d, 4096, "ours", layer)), get.get((d, ts[-1], "ours", layer))
                if a is None or b is None:
                    continue
                keep = {m: b[f"{m}_mtok_s"] / a[f"{m}_mtok_s"] for m in ("fwd", "fwd_bwd")}
                ratios[f"d{d}_constant_speed_T{ts[-1]}_over_T4096" + (f"_layer{layer}" if layer else "")] = keep
                lines.append(f"| {layer} | {a['fwd_mtok_s']:.1f} / {b['fwd_mtok_s']:.1f} | {keep['fwd']:.2f} "
                             f"| {a['fwd_bwd_mtok_s']:.1f} / {b['fwd_bwd_mtok_s']:.1f} | {keep['fwd_bwd']:.2f} |")
        lines.append("")
    lines.append(f"Run time: {seconds:.0f} s.")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "lightning_attn.md"), "w") as fh:
        fh.write(md)
    with open(os.path.join(out_dir, "lightning_attn.json"), "w") as fh:
        json.dump({**meta, "rows": rows, "ratios": ratios, "seconds": seconds}, fh, indent=1)
    return md


if __name__ == "__main__":
    main()

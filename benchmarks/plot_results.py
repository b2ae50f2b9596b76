"""Pictures of the benchmark results, each drawn from a results JSON alone (no GPU, no measuring).

    python benchmarks/plot_results.py                        # every results/*.json with a plotter
    python benchmarks/plot_results.py benchmarks/results/lm.json

The benchmark scripts call the same functions after writing their JSON, so a PNG always lies
beside its table (``<name>.png`` next to ``<name>.md``); this script re-makes them from the
committed JSON, e.g. after a change of the plotting.

- ``lightning_attn``: million tokens/s against the sequence length (log scale), ours against fla
  ``chunk_simple_gla`` and SDPA flash, forward and forward+backward, one row per head dim; every
  point of ours is labelled with its speed-up over fla.
- ``lm``: training tokens/s and MFU against the sequence length by model (hybrid, all-softmax) and
  mode (eager, compiled, compiled + CUDA graph); decoding ms per token against the context; the
  MoE layer's speed relative to a dense SwiGLU of the same active FLOPs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OURS, PEERS = "#c0392b", {"fla": "#2e86c1", "sdpa": "#7f8c8d"}
PEER_NAMES = {"ours": "ours (lightning_attn)", "fla": "fla chunk_simple_gla", "sdpa": "SDPA flash (softmax)"}
MODE_COLOURS = {"eager": "#7f8c8d", "compiled": "#2e86c1", "compiled + CUDA graph": "#c0392b", "CUDA graph": "#c0392b"}
MODEL_STYLES = {"hybrid": "-", "all-softmax": "--"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _length_axis(ax, lengths) -> None:
    """Log-2 sequence-length axis with 1K / 4K / ... / 1M tick labels."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(lengths))
    ax.set_xticklabels([f"{t // 2**20}M" if t >= 2**20 else f"{t // 1024}K" if t >= 1024 else str(t)
                        for t in sorted(lengths)])
    ax.minorticks_off()
    ax.grid(True, which="major", alpha=0.3)


def _plain_log_y(ax) -> None:
    """Log-scaled y axis labelled 0.5, 1, 10, 100 rather than 10^0."""
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))


def _title(fig, title: str, results: dict) -> None:
    fig.suptitle(f"{title}\n{results.get('device', '?')}, {results.get('date', '?')}", fontsize=12)


def plot_lightning_attn(results: dict, path: str | Path) -> Path:
    """Throughput against T for each head dim (rows) and pass (columns); ours labelled with ×fla."""
    plt = _pyplot()
    rows = [r for r in results["rows"] if r.get("layer", 0) == 0]
    dims = sorted({r["d"] for r in rows}, reverse=True)
    passes = (("fwd", "forward"), ("fwd_bwd", "forward + backward"))
    fig, axes = plt.subplots(len(dims), 2, figsize=(12, 4.2 * len(dims)), squeeze=False)
    for i, d in enumerate(dims):
        for j, (key, name) in enumerate(passes):
            ax = axes[i][j]
            series = {impl: sorted((r["T"], r[f"{key}_mtok_s"]) for r in rows if r["d"] == d and r["impl"] == impl)
                      for impl in ("ours", "fla", "sdpa")}
            for impl, points in series.items():
                if points:
                    ts, ys = zip(*points, strict=True)
                    ax.plot(ts, ys, marker="o", lw=2.5 if impl == "ours" else 1.8,
                            color=OURS if impl == "ours" else PEERS[impl], label=PEER_NAMES[impl])
            fla = dict(series["fla"])
            for t, y in series["ours"]:
                if t in fla:
                    ax.annotate(f"{y / fla[t]:.1f}×", (t, y), textcoords="offset points", xytext=(0, 7),
                                ha="center", fontsize=8.5, color=OURS, fontweight="bold")
            _plain_log_y(ax)
            _length_axis(ax, {t for pts in series.values() for t, _ in pts})
            ax.set_title(f"d = {d}, {name}", fontsize=11)
            ax.set_xlabel(f"sequence length T (batch B = max(1, {results['setup']['tokens_per_call']:,} / T))")
            ax.set_ylabel("million tokens / s (log)")
            ax.margins(y=0.15)
    axes[0][0].legend(loc="lower left", fontsize=9)
    _title(fig, f"Lightning attention, bf16, H = {results['setup']['heads']}: throughput (labels: ours / fla)",
           results)
    return _save(fig, path)


def _section(results: dict, prefix: str) -> list[dict]:
    return next((rows for heading, rows in results["sections"].items() if heading.startswith(prefix)), [])


def _by_model_and_mode(ax, rows: list[dict], x: str, y: str) -> None:
    for model, style in MODEL_STYLES.items():
        for mode, colour in MODE_COLOURS.items():
            points = sorted((r[x], r[y]) for r in rows if r["model"] == model and r["mode"] == mode)
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, marker="o", color=colour, lw=2, label=f"{model}, {mode}")
    _length_axis(ax, {r[x] for r in rows})


def plot_lm(results: dict, path: str | Path) -> Path:
    """Training tokens/s and MFU, decode ms/token, MoE layer against dense: the panels whose section exists."""
    plt = _pyplot()
    train, decode, moe = (_section(results, p) for p in ("train", "decode", "moe layer"))
    panels = [p for p, rows in (("tok", train), ("mfu", train), ("decode", decode), ("moe", moe)) if rows]
    cols = min(2, len(panels))
    fig, axes = plt.subplots(-(-len(panels) // cols), cols, figsize=(6.2 * cols, 4.6 * -(-len(panels) // cols)),
                             squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        if panel == "tok":
            _by_model_and_mode(ax, [{**r, "ktok": r["tokens/s"] / 1e3} for r in train], "seq_len", "ktok")
            ax.set(title="training throughput", xlabel="sequence length", ylabel="thousand tokens / s", ylim=(0, None))
            ax.legend(fontsize=8, loc="best")
        elif panel == "mfu":
            _by_model_and_mode(ax, train, "seq_len", "MFU %")
            ax.set(title="training MFU (model FLOPs / 989 TFLOP/s bf16)", xlabel="sequence length",
                   ylabel="MFU %", ylim=(0, 60))
        elif panel == "decode":
            _by_model_and_mode(ax, decode, "context", "ms/token")
            ax.set(title="decoding, batch 1 (lower is better)", xlabel="context (prompt tokens)",
                   ylabel="ms per generated token", ylim=(0, None))
            ax.legend(fontsize=8, loc="best")
        else:
            _moe_bars(ax, moe)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    _title(fig, "Hybrid lightning-attention MoE LM (solid: hybrid, dashed: all-softmax)", results)
    return _save(fig, path)


def _moe_bars(ax, rows: list[dict]) -> None:
    """The MoE layer's forward+backward speed over a dense SwiGLU of the same active FLOPs."""
    routings = sorted({r["routing"] for r in rows})
    impls = sorted({r["impl"] for r in rows} - {"dense SwiGLU"}, key=lambda i: max(
        r["vs dense"] for r in rows if r["impl"] == i))  # slowest first
    colours = ["#7f8c8d", "#2e86c1", "#c0392b", "#8e44ad", "#27ae60"]
    width = 0.8 / len(impls)
    for k, impl in enumerate(impls):
        ys = [next((r["vs dense"] for r in rows if r["routing"] == g and r["impl"] == impl), 0) for g in routings]
        bars = ax.bar([g + (k - (len(impls) - 1) / 2) * width for g in range(len(routings))], ys, width, label=impl,
                      color=colours[k % len(colours)])
        ax.bar_label(bars, fmt="%.2f", fontsize=8.5)
    ax.axhline(1.0, color="black", lw=1, ls=":")
    ax.text(len(routings) - 0.6, 1.01, "dense SwiGLU, same active FLOPs", ha="right", va="bottom", fontsize=8)
    ax.set_xticks(range(len(routings)), [f"{g} routing" for g in routings])
    ax.set(title="MoE layer forward+backward against dense", ylabel="speed, × dense SwiGLU", ylim=(0, 1.35))
    ax.legend(fontsize=8, loc="upper left", ncol=len(impls))


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


PLOTTERS = {"lightning_attn": plot_lightning_attn, "lm": plot_lm, "lm_tiny_smoke": plot_lm}


def plot_file(json_path: str | Path) -> Path:
    """``<dir>/<name>.json`` -> ``<dir>/<name>.png`` with the plotter registered for ``name``."""
    json_path = Path(json_path)
    if json_path.stem not in PLOTTERS:
        raise ValueError(f"{json_path}: no plotter for {json_path.stem!r}; known: {', '.join(sorted(PLOTTERS))}")
    return PLOTTERS[json_path.stem](json.loads(json_path.read_text()), json_path.with_suffix(".png"))


def plot_beside(json_path: str | Path) -> None:
    """What a benchmark calls after its last write: the PNG, or a line saying how to make it later
    (the GPU machine may lack matplotlib; the measurements are in the JSON either way)."""
    try:
        print(f"figure: {plot_file(json_path)}")
    except ModuleNotFoundError as err:
        print(f"no figure ({err}): make it with python benchmarks/plot_results.py {json_path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="results JSON files (default: every one of "
                        "benchmarks/results with a plotter)")
    args = parser.parse_args(argv)
    default = Path(__file__).parent / "results"
    files = args.files or [default / f"{name}.json" for name in PLOTTERS if (default / f"{name}.json").is_file()]
    for file in files:
        try:
            print(plot_file(file))
        except (OSError, ValueError, KeyError) as err:
            print(f"plot_results: error: {file}: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

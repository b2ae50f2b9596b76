"""PNG of the loss and metric curves of one or several runs, overlaid."""

from __future__ import annotations

from pathlib import Path

from mm.train.run_log import read_metrics

# Bookkeeping fields of a record, not curves.
_NOT_CURVES = {"step", "split", "time"}


def _curves(records: list[dict]) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    """(split, metric) -> (steps, values), skipping nulls (non-finite steps)."""
    curves: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    for record in records:
        for key, value in record.items():
            if key in _NOT_CURVES or value is None or not isinstance(value, (int, float)):
                continue
            steps, values = curves.setdefault((record["split"], key), ([], []))
            steps.append(record["step"])
            values.append(value)
    return curves


def _panel_order(name: str) -> tuple[int, str]:
    return (0 if "loss" in name else 1, name)


def plot_runs(run_dirs: list[str | Path], out: str | Path, max_panels: int = 12) -> Path:
    """One panel per metric (losses first), one line per run and split; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {str(Path(d)): _curves(read_metrics(d)) for d in run_dirs}
    metrics = sorted({metric for curves in runs.values() for _, metric in curves}, key=_panel_order)[:max_panels]
    if not metrics:
        raise ValueError(f"no metrics to plot in {', '.join(map(str, run_dirs))}")
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for run, curves in runs.items():
            for (split, name), (steps, values) in sorted(curves.items()):
                if name == metric:
                    label = f"{Path(run).name} ({split})" if len(runs) > 1 else split
                    ax.plot(steps, values, marker="o" if len(steps) < 20 else None, ms=3, label=label)
        ax.set_title(metric)
        ax.set_xlabel("step")
        values = [v for c in runs.values() for (_, name), (_, vs) in c.items() if name == metric for v in vs]
        if "loss" in metric and all(v > 0 for v in values):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

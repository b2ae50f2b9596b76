"""mm plot: loss and metric curves of one or several runs, overlaid in one PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from tools.cli import UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser("plot", help="plot the curves of runs into a PNG",
                              description="Overlay the loss and metric curves of one or more run directories.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (holding metrics.jsonl)")
    p.add_argument("--out", default=None,
                   help="PNG path (default: curves.png in the run for one run, ./curves.png for several)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mm.train.plot import plot_runs

    for run_dir in args.runs:
        if not (Path(run_dir) / "metrics.jsonl").is_file():
            raise UsageError(f"{run_dir}: not a run directory (no metrics.jsonl)")
    out = args.out or (Path(args.runs[0]) / "curves.png" if len(args.runs) == 1 else Path("curves.png"))
    print(plot_runs(args.runs, out))
    return 0

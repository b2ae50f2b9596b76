"""mm demo: the end-to-end tour on synthetic data; prints a summary table of what ran."""

from __future__ import annotations

import argparse
from pathlib import Path

from tools.cli import UsageError


def register(subparsers) -> None:
    from mm.demo import DEFAULT_STAGES, STAGES

    p = subparsers.add_parser("demo", help="run the end-to-end demo on synthetic data",
                              description="Build synthetic data, train and evaluate every stage, print a summary.")
    p.add_argument("--out", default="runs/demo", help="directory for data, runs and the summary (default: runs/demo)")
    p.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                   help=f"comma-separated subset of: {', '.join(STAGES)} (default: {','.join(DEFAULT_STAGES)})")
    p.add_argument("--fast", action="store_true", help="a few steps per stage (smoke test, figures not meaningful)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mm.demo import STAGES, run_demo, summary_table

    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise UsageError(f"--stages: unknown stage(s) {unknown or '(none given)'}; known: {', '.join(STAGES)}")
    out = Path(args.out)
    results = run_demo(out, stages, fast=args.fast)
    table = summary_table(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    print(f"summary: {out / 'summary.md'}")
    return 0 if args.fast or all(r.passed for r in results) else 1

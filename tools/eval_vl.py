"""`mm eval caption` and `mm eval vqa`: score a vision-language model on eval shards, or a predictions file.

Scoring mode (any system): ``--predictions FILE.jsonl`` in the line format of :mod:`evals.records`.
Model mode: ``RUN|CHECKPOINT --shards DIR`` generates with ``evals.vl_predict.predict`` twice —
with the images and blind (images blanked) — writes both predictions as JSONL beside the scores
and reports both, so the image's contribution shows. Under torchrun every rank calls ``predict``
(which splits the work and gathers it) and rank 0 alone scores and writes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from evals.caption import UNAVAILABLE, JavaMissing, caption_scores
from evals.records import RecordError, check_records, read_records, write_records
from evals.vqa import vqa_scores
from tools.cli import UsageError


@dataclass(frozen=True)
class _Task:
    help: str
    line_format: str
    score: Callable[[list[dict]], dict]
    rows: Callable[[dict], list[tuple[str, float]]]  # the scores as (label, value) table rows
    max_new_tokens: int  # generation default
    digits: int  # decimals printed
    unavailable: dict[str, str] = field(default_factory=dict)  # metric -> why it is not reported
    footnote: str = ""


def _vqa_rows(scores: dict) -> list[tuple[str, float]]:
    counts = scores["questions_per_answer_type"]
    return [("accuracy", scores["accuracy"])] + [
        (f"  {kind} ({counts[kind]})", acc) for kind, acc in scores["per_answer_type"].items()]


TASKS = {
    "caption": _Task(
        help="BLEU-1..4, METEOR, ROUGE-L, CIDEr-D as the COCO caption toolkit computes them (needs Java)",
        line_format='{"id": ..., "prediction": "...", "references": ["...", ...]}',
        score=caption_scores, rows=lambda scores: list(scores.items()), max_new_tokens=32, digits=4,
        unavailable=UNAVAILABLE,
        footnote="(COCO toolkit scale: CIDEr-D in [0, 10], the others in [0, 1])"),
    "vqa": _Task(
        help="official VQA accuracy, overall and per answer type",
        line_format='{"id": ..., "prediction": "...", "answers": [ten strings], "answer_type": "..."} '
                    "(answer_type optional)",
        score=vqa_scores, rows=_vqa_rows, max_new_tokens=10, digits=2,
        footnote="(percent; per answer type (questions): the mean of per-question accuracy over that type)"),
}
_MODEL_OPTIONS = ("shards", "batch_size", "max_new_tokens", "num_beams", "device")


def register(actions) -> None:
    for name, task in TASKS.items():
        p = actions.add_parser(
            name, help=task.help,
            description=f"{task.help}. Model mode: mm eval {name} RUN|CHECKPOINT --shards DIR also scores the "
            "blind baseline (the same model, images blanked) and writes both predictions as JSONL beside the "
            f"scores. Scoring mode: mm eval {name} --predictions FILE.jsonl, one JSON object a line: "
            f"{task.line_format}.",
        )
        p.add_argument("model", nargs="?", metavar="RUN|CHECKPOINT", help="model mode: the model to evaluate")
        p.add_argument("--predictions", metavar="FILE.jsonl", help="scoring mode: score this file, no model")
        p.add_argument("--shards", metavar="DIR", help="model mode: the eval shards")
        p.add_argument("--batch-size", type=int, default=None, help="model mode: samples per batch (default 16)")
        p.add_argument("--max-new-tokens", type=int, default=None,
                       help=f"model mode: tokens generated per sample (default {task.max_new_tokens})")
        p.add_argument("--num-beams", type=int, default=None, help="model mode: beam width (default 1: greedy)")
        p.add_argument("--device", default=None, help="model mode: auto | cpu | cuda | cuda:N (default auto)")
        p.add_argument("--out", metavar="FILE.json",
                       help=f"write the scores here (model mode default: RUN|CHECKPOINT/eval/{name}.json)")
        p.set_defaults(func=run, eval_task=name)


def run(args: argparse.Namespace) -> int:
    name = args.eval_task
    if (args.model is None) == (args.predictions is None):
        raise UsageError("give either a model (RUN|CHECKPOINT with --shards DIR) or --predictions FILE.jsonl")
    try:
        report, out = (_score_file if args.predictions is not None else _evaluate_model)(name, args)
    except RecordError as err:
        raise UsageError(str(err)) from None
    except (JavaMissing, _CheckpointError) as err:
        print(f"mm eval {name}: error: {err}", file=sys.stderr)
        return 1
    if report is None:  # a rank other than 0 of a torchrun job
        return 0
    print(_table(TASKS[name], report))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"scores written to {out}")
    return 0


def _score_file(name: str, args) -> tuple[dict, Path | None]:
    given = [f"--{o.replace('_', '-')}" for o in _MODEL_OPTIONS if getattr(args, o) is not None]
    if given:
        raise UsageError(f"{', '.join(given)}: only for model mode (RUN|CHECKPOINT), not with --predictions")
    path = Path(args.predictions)
    if not path.is_file():
        raise UsageError(f"--predictions {path}: no such file")
    task = TASKS[name]
    records = read_records(path, name)
    report = {"task": name, "predictions": str(path), "items": len(records), "scores": task.score(records)}
    return _with_notes(task, report), Path(args.out) if args.out else None


def _evaluate_model(name: str, args) -> tuple[dict | None, Path]:
    task, model = TASKS[name], Path(args.model)
    if not model.exists():
        raise UsageError(f"{model}: no such run or checkpoint")
    if args.shards is None:
        raise UsageError("model mode needs --shards DIR (the eval shards)")
    for key in ("batch_size", "max_new_tokens", "num_beams"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    settings = {"batch_size": args.batch_size or 16, "max_new_tokens": args.max_new_tokens or task.max_new_tokens,
                "num_beams": args.num_beams or 1}
    out = Path(args.out) if args.out else model / "eval" / f"{name}.json"
    predict = importlib.import_module("evals.vl_predict").predict  # imported when needed: torch, the model
    rank0 = int(os.environ.get("RANK", "0")) == 0
    runs = {}
    for kind, blind in (("predictions", False), ("blind_predictions", True)):
        records = _call(predict, str(model), args.shards, name, **settings, blind=blind, device=args.device)
        if rank0:
            check_records(name, records, source=f"{kind.replace('_', ' ')} of {model}")
            path = out.with_name(out.stem + (".blind" if blind else "") + ".predictions.jsonl")
            write_records(path, records)  # before scoring: kept even if scoring fails
            runs[kind] = (records, path)
    if not rank0:
        return None, out
    (records, path), (blind_records, blind_path) = runs["predictions"], runs["blind_predictions"]
    report = {"task": name, "model": str(model), "shards": args.shards, **settings, "items": len(records),
              "scores": task.score(records), "blind": task.score(blind_records),
              "predictions": str(path), "blind_predictions": str(blind_path)}
    return _with_notes(task, report), out


class _CheckpointError(RuntimeError):
    """Weights that cannot be read (exit 1, as `mm generate`)."""


def _call(predict, *args, **kwargs) -> list[dict]:
    """``predict`` with its errors sorted: bad input (shards, options) exits 2, unreadable weights 1."""
    from mm.train.checkpoint import CheckpointError

    try:
        return predict(*args, **kwargs)
    except CheckpointError as err:
        raise _CheckpointError(str(err)) from None
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from None


def _with_notes(task: _Task, report: dict) -> dict:
    return {**report, "unavailable": task.unavailable} if task.unavailable else report


def _table(task: _Task, report: dict) -> str:
    """The scores as an aligned text table, with a "blind" column in model mode."""
    rows = task.rows(report["scores"])
    blind = dict(task.rows(report["blind"])) if "blind" in report else None
    width = max(len(label) for label, _ in rows) + 2
    header = f"{'':<{width}}{'score':>10}" if blind is None else f"{'':<{width}}{'model':>10}{'blind':>10}"
    lines = [f"{report['task']} scores of {report.get('model', report.get('predictions'))} ({report['items']} items)",
             header]
    for label, value in rows:
        line = f"{label:<{width}}{value:>10.{task.digits}f}"
        if blind is not None:
            line += f"{blind[label]:>10.{task.digits}f}" if label in blind else f"{'-':>10}"
        lines.append(line)
    lines += [f"{metric:<{width}}{why}" for metric, why in report.get("unavailable", {}).items()]
    return "\n".join([*lines, task.footnote]).rstrip()

"""`mm eval`: benchmark metrics of a model or of any system's predictions, one action per metric.

Adding a metric: write a module under ``tools/`` whose ``register(actions)`` adds its action(s)
to the ``actions`` subparsers (each with ``set_defaults(func=...)``), and name it in ``FAMILIES``.
A metric that is also a command of its own (``mm avhscore``) can be added the same way, reusing
that command's ``add_arguments`` and ``run``.
"""

from __future__ import annotations

import importlib

# Modules under tools/ that add actions to `mm eval`, in the order `mm eval --help` lists them.
FAMILIES = ("eval_vl", "eval_av")  # caption, vqa; avhscore


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="caption and VQA metrics of a model or of a predictions file; AVHScore of videos",
        description="Score a trained model on eval shards (with a blind baseline: the same model, images "
        "blanked), or score any system's predictions from a JSONL file. Example: "
        "mm eval vqa --predictions preds.jsonl --out scores.json",
    )
    actions = p.add_subparsers(dest="eval_command", metavar="METRIC", parser_class=type(p))
    actions.required = True
    for name in FAMILIES:
        importlib.import_module(f"tools.{name}").register(actions)

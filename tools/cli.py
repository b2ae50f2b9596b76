"""The `mm` command: one argparse parser, one module per subcommand.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func=run`` on it. Subcommands are registered here only when their feature has landed.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Module names under tools/, in the order `mm --help` lists them.
SUBCOMMANDS = ("train", "generate", "sample", "demo", "shards", "tokenizer", "plot", "avhscore", "eval")


class UsageError(Exception):
    """Wrong use of the command line that argparse cannot see (bad override, missing file)."""


class _Parser(argparse.ArgumentParser):
    """argparse parser whose errors are one line plus a hint, exit code 2."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\nTry '{self.prog} --help'.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mm", description=__doc__.splitlines()[0].rstrip("."))
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"tools.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        prog = f"mm {args.command}"
        print(f"{prog}: error: {err}\nTry '{prog} --help'.", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m tools.cli (e.g. under torchrun): run the importable module, whose
    from tools.cli import main as _main  # UsageError is the class the subcommands raise

    sys.exit(_main())

"""`mm eval avhscore`: the `mm avhscore` command as a metric of `mm eval` (same options, same run)."""

from __future__ import annotations

from tools import avhscore


def register(actions) -> None:
    p = actions.add_parser("avhscore", help="AVHScore / JavisScore of videos (alias of `mm avhscore`)",
                           description="The same as `mm avhscore`: see `mm avhscore --help`.")
    avhscore.add_arguments(p)
    p.set_defaults(func=avhscore.run)

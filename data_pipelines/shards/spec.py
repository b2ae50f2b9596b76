"""Which shards a reader streams: expand user specs into URLs, refuse unsafe ones, read sizes.

A spec is a directory (every ``*.tar`` in it, with its ``sizes.json`` if present), a brace
pattern (``data/shard-{000000..000009}.tar``), or a single path. ``pipe:`` URLs run a shell
command for every shard, so they are refused unless the caller opts in; other URL schemes are
refused outright (no network at training time). :func:`check_shard_specs` finds the specs that
lead to no shard at all (a missing path, a folder without shards) before any work starts.
"""

from __future__ import annotations

import json
import os
import re

import braceexpand

SIZES_FILE = "sizes.json"
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")  # what a directory spec picks up
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def expand_shards(specs: list[str], allow_pipe: bool = False) -> list[str]:
    """Expand ``specs`` into a list of shard URLs (sorted per directory, order kept otherwise)."""
    if isinstance(specs, str):
        specs = [specs]
    urls: list[str] = []
    for spec in specs:
        if spec.startswith("pipe:"):
            if not allow_pipe:
                raise ValueError(f"shard {spec!r} is a pipe: URL; set allow_pipe=True to run shell commands")
            urls.extend(braceexpand.braceexpand(spec))
            continue
        if _SCHEME.match(spec) and not spec.startswith("file:"):
            raise ValueError(f"shard {spec!r}: only local paths (and opt-in pipe:) are supported")
        spec = spec.removeprefix("file:")
        if os.path.isdir(spec):
            found = sorted(f for f in os.listdir(spec) if f.endswith(SHARD_SUFFIXES))
            if not found:
                raise ValueError(f"shard directory {spec!r} holds no .tar files")
            urls.extend(os.path.join(spec, f) for f in found)
        else:
            urls.extend(braceexpand.braceexpand(spec))
    if not urls:
        raise ValueError(f"no shards in {specs!r}")
    return urls


def check_shard_specs(specs: list[str]) -> None:
    """ValueError naming the path when a spec leads to no shard: a path that does not exist (for a
    brace pattern, the first of its paths that does not), a folder without ``*.tar``/``*.tar.gz``/
    ``*.tgz`` files, or a URL that is not local. ``pipe:`` specs are commands: they are not run here.

    A shard that goes missing later is still a counted, skipped error of the stream, not a crash.
    """
    for spec in [specs] if isinstance(specs, str) else specs:
        if spec.startswith("pipe:"):
            continue
        if _SCHEME.match(spec) and not spec.startswith("file:"):
            raise ValueError(f"shard {spec!r} is not a local path (only local paths and opt-in pipe: are read)")
        path = spec.removeprefix("file:")
        if os.path.isdir(path):
            if not any(f.endswith(SHARD_SUFFIXES) for f in os.listdir(path)):
                raise ValueError(f"shard folder {path!r} holds no shards ({', '.join(SHARD_SUFFIXES)} files)")
            continue
        paths = list(braceexpand.braceexpand(path))
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            where = f" ({len(missing)} of the {len(paths)} paths of {spec!r} are missing)" if len(paths) > 1 else ""
            raise ValueError(f"shard path {missing[0]!r} does not exist{where}")


def read_sizes(urls: list[str]) -> dict[str, int]:
    """Sample counts per URL from the ``sizes.json`` beside each shard (missing entries omitted)."""
    cache: dict[str, dict] = {}
    out: dict[str, int] = {}
    for url in urls:
        if url.startswith("pipe:"):
            continue
        folder = os.path.dirname(url) or "."
        if folder not in cache:
            path = os.path.join(folder, SIZES_FILE)
            try:
                with open(path) as f:
                    cache[folder] = json.load(f)
            except (OSError, ValueError):
                cache[folder] = {}
        n = cache[folder].get(os.path.basename(url))
        if isinstance(n, int):
            out[url] = n
    return out

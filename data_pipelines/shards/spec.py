"""Which shards a reader streams: expand user specs into URLs, refuse unsafe ones, read sizes.

A spec is a directory (every ``*.tar`` in it, with its ``sizes.json`` if present), a brace
pattern (``data/shard-{000000..000009}.tar``), or a single path. ``pipe:`` URLs run a shell
command for every shard, so they are refused unless the caller opts in; other URL schemes are
refused outright (no network at training time).
"""

from __future__ import annotations

import json
import os
import re

import braceexpand

SIZES_FILE = "sizes.json"
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
            found = sorted(f for f in os.listdir(spec) if f.endswith((".tar", ".tar.gz", ".tgz")))
            if not found:
                raise ValueError(f"shard directory {spec!r} holds no .tar files")
            urls.extend(os.path.join(spec, f) for f in found)
        else:
            urls.extend(braceexpand.braceexpand(spec))
    if not urls:
        raise ValueError(f"no shards in {specs!r}")
    return urls


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

"""Write samples into tar shards split by count and size, and record ``sizes.json``.

A sample is a dict ``{"__key__": str, "<ext>": bytes | str, ...}``; each entry becomes the tar
member ``<key>.<ext>`` (the webdataset layout, readable by any webdataset client). Keys must not
contain a dot in their last path component: readers split the key at the first dot.
Shards are written under a temporary name and renamed when complete, so a crash never leaves a
truncated shard that looks finished; member mtimes are fixed so equal input gives equal bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .spec import SIZES_FILE


@dataclass
class ShardWriterConfig:
    out_dir: str = "shards"
    pattern: str = "shard-%06d.tar"  # printf pattern, filled with the shard index
    maxcount: int = 10000  # samples per shard at most
    maxsize: int = 1 << 30  # bytes per shard at most (a single larger sample still gets written)

    def __post_init__(self):
        if self.maxcount < 1:
            raise ValueError(f"maxcount must be >= 1, got {self.maxcount}")
        if self.maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {self.maxsize}")
        try:
            self.pattern % 0
        except TypeError as err:
            raise ValueError(f"pattern {self.pattern!r} needs one integer placeholder like %06d") from err


class ShardSink:
    """Context manager: ``write(sample)`` many times; on exit the last shard and sizes.json land."""

    def __init__(self, cfg: ShardWriterConfig):
        self.cfg = cfg
        os.makedirs(cfg.out_dir, exist_ok=True)
        self.sizes: dict[str, int] = {}
        self._tar = None
        self._name = None
        self._count = 0
        self._bytes = 0
        self._index = 0
        self.total = 0

    def _open(self) -> None:
        from webdataset import TarWriter

        self._name = self.cfg.pattern % self._index
        self._index += 1
        tmp = os.path.join(self.cfg.out_dir, self._name + ".tmp")
        self._tar = TarWriter(tmp, encoder=False, mtime=0.0, compress=False)
        self._count = 0
        self._bytes = 0

    def _close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        final = os.path.join(self.cfg.out_dir, self._name)
        os.replace(final + ".tmp", final)
        self.sizes[self._name] = self._count
        self._tar = None

    def write(self, sample: dict) -> None:
        key = sample.get("__key__")
        if not isinstance(key, str) or not key or "." in os.path.basename(key):
            raise ValueError(f"sample key {key!r} must be a non-empty string without a dot in its basename")
        payload = {}
        for k, v in sample.items():
            if k.startswith("__"):
                continue
            if isinstance(v, str):
                v = v.encode("utf-8")
            if not isinstance(v, (bytes, bytearray)):
                raise ValueError(f"sample {key}: value of {k!r} must be bytes or str, got {type(v).__name__}")
            payload[k] = bytes(v)
        if not payload:
            raise ValueError(f"sample {key} has no members")
        size = sum(len(v) for v in payload.values())
        full = self._tar is not None and (
            self._count >= self.cfg.maxcount or (self._count > 0 and self._bytes + size > self.cfg.maxsize)
        )
        if self._tar is None or full:
            self._close_shard()
            self._open()
        self._tar.write({"__key__": key, **payload})
        self._count += 1
        self._bytes += size + 512 * (len(payload) + 1)  # data plus tar headers
        self.total += 1

    def close(self) -> dict[str, int]:
        self._close_shard()
        path = os.path.join(self.cfg.out_dir, SIZES_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(self.sizes, f, indent=1, sort_keys=True)
        os.replace(path + ".tmp", path)
        return self.sizes

    def __enter__(self) -> ShardSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._tar is not None:  # leave no half-written shard behind
            self._tar.close()
            os.remove(os.path.join(self.cfg.out_dir, self._name + ".tmp"))
            self._tar = None

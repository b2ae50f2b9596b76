"""Stream samples out of tar shards: members are read into memory one at a time, never extracted.

Only members whose extension the reader asked for are read (a ``.pkl`` member is never even
loaded, let alone unpickled); members larger than ``max_member_bytes`` are refused before they are
read. Shard-level failures are counted by reason instead of raised:

- ``shard_open``: the file cannot be opened;
- ``tar_read``: the tar structure is corrupt;
- ``tar_truncated``: the shard ends early (inside a member, or before the end-of-archive blocks).
  Python's ``tarfile`` treats a shard cut at a header boundary as a normal end; we compare the
  bytes present with the end-of-archive position to tell the two apart.

Samples are grouped like webdataset does: the key is the member path up to the first dot of its
basename, the rest (lower-cased) is the extension.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator

from ..errors import SkipCounter

_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_END_BLOCKS = 2 * tarfile.BLOCKSIZE  # a complete tar ends with two zero blocks


def split_key(name: str) -> tuple[str | None, str | None]:
    """``"a/b.seg.jpg"`` -> ``("a/b", "seg.jpg")``; names without an extension give ``(None, None)``."""
    m = _KEY_EXT.match(name)
    return (m.group(1), m.group(2)) if m else (None, None)


class _CountingReader:
    """File wrapper that counts the bytes handed to tarfile (to detect truncated archives)."""

    def __init__(self, f):
        self.f = f
        self.n = 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.n += len(data)
        return data

    def drain(self) -> int:
        rest = 0
        while True:
            chunk = self.f.read(1 << 20)
            if not chunk:
                return rest
            rest += len(chunk)

    def close(self) -> None:
        self.f.close()


def _open(url: str):
    if url.startswith("pipe:"):
        from webdataset.gopen import gopen  # the caller has opted in (spec.expand_shards checks)

        return gopen(url, "rb")
    return open(url.removeprefix("file:"), "rb")


def iter_shard(
    url: str,
    wanted: set[str] | None,
    counter: SkipCounter,
    max_member_bytes: int = 1 << 30,
) -> Iterator[dict]:
    """Yield ``{"__key__", "__url__", ext: bytes, ...}`` samples of one shard.

    A sample may carry ``"__error__"`` (e.g. ``member_too_large``, ``duplicate_member``): the
    decode stage counts it there, after shuffling, like any other bad sample.
    """
    try:
        raw = _open(url)
    except OSError as err:
        counter.error("shard_open", f"{url}: {err}")
        return
    reader = _CountingReader(raw)
    compressed = url.endswith(("gz", "tgz"))
    current: dict | None = None
    try:
        with tarfile.open(fileobj=reader, mode="r|*" if compressed else "r|") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                key, ext = split_key(info.name)
                if key is None or info.name.startswith("__") and info.name.endswith("__"):
                    continue
                ext = ext.lower()
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                if wanted is not None and ext not in wanted:
                    continue
                if info.size > max_member_bytes:
                    current["__error__"] = f"member_too_large:{info.name} is {info.size} bytes"
                    continue
                if ext in current:
                    current["__error__"] = f"duplicate_member:{info.name}"
                    continue
                current[ext] = tar.extractfile(info).read()
                tar.members = []  # streaming: keep no history
            end = tar.offset
        if not compressed and reader.n + reader.drain() < end + _END_BLOCKS:
            counter.error("tar_truncated", f"{url}: archive ends before its end-of-archive blocks")
            # the last sample may have lost members that were cut away: drop it
            current = None
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        reason = "tar_truncated" if "unexpected end" in str(err) else "tar_read"
        counter.error(reason, f"{url}: {err}")
        current = None  # the sample being read when the shard broke is incomplete
    finally:
        reader.close()
    if current is not None:
        yield current

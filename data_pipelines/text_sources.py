"""Plain text out of the places users keep it: .txt files, folders of them, and text shards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .errors import SkipCounter
from .shards.spec import expand_shards
from .shards.tar_stream import iter_shard


def iter_texts(paths: list[str], text_key: str = "txt", counter: SkipCounter | None = None) -> Iterator[str]:
    """Each .txt file is one text; each ``.tar`` (or folder of shards) yields its ``text_key`` members.

    Undecodable files and members are counted in ``counter`` (reason ``bad_text``) and skipped.
    """
    counter = counter or SkipCounter()
    for spec in paths:
        path = Path(spec)
        if not path.exists():
            raise ValueError(f"text source not found: {spec}")
        txt_files = [path] if path.suffix == ".txt" else sorted(path.rglob("*.txt")) if path.is_dir() else []
        for file in txt_files:
            try:
                yield file.read_text(encoding="utf-8")
                counter.ok()
            except UnicodeDecodeError as err:
                counter.error("bad_text", f"{file}: {err}")
        is_shards = path.suffix == ".tar" or (path.is_dir() and any(path.glob("*.tar")))
        for url in expand_shards([spec]) if is_shards else []:
            for sample in iter_shard(url, {text_key}, counter):
                if text_key not in sample:
                    continue
                try:
                    yield sample[text_key].decode("utf-8")
                    counter.ok()
                except UnicodeDecodeError as err:
                    counter.error("bad_text", f"{sample.get('__key__')} in {url}: {err}")

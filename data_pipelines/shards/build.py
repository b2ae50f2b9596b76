"""Turn user corpora into shards (``mm shards build``): four input kinds, skips reported by reason.

=========== ========================================================= ===========================
kind        input                                                     sample members
=========== ========================================================= ===========================
image-text  folder of images with same-stem ``.txt``/``.json`` captions; ``<key>.<img ext>``, ``.txt``
            CSV (``image``, ``caption`` columns; more ``caption*``    (first caption), ``.json``
            columns allowed); JSONL ``{"image", "caption"|"captions"}`` ``{"captions", "source"}``
vqa         JSONL ``{"image", "question", "answers"[, "answer"]}``    ``<img ext>``, ``.json``
video       JSONL ``{"video", "caption"[, "audio"]}``                 original container bytes
                                                                      (no re-encode), ``.json``
                                                                      (caption, fps, duration,
                                                                      audio_sample_rate, ...),
                                                                      ``.wav``/``.flac`` if given
text        folder of ``.txt`` files (recursive) or one ``.txt``;     ``.txt`` (+ ``.json`` source)
            JSONL ``{"text"}``
=========== ========================================================= ===========================

Relative paths in CSV/JSONL are relative to that file's folder. Images are fully decoded once
to prove they are readable and stored with the extension of their real format. Every input that
cannot be used is reported as (source, reason) and skipped; ``strict`` turns the first one into
a :class:`BuildError`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import SampleError
from .writer import ShardSink, ShardWriterConfig

log = logging.getLogger("data_pipelines")

KINDS = ("image-text", "vqa", "video", "text")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tif"}


class BuildError(RuntimeError):
    """An input could not be used and ``strict`` was set."""


@dataclass
class BuildConfig:
    kind: str = "image-text"
    input: str = ""  # folder, .csv or .jsonl (see the module docstring)
    writer: ShardWriterConfig = field(default_factory=ShardWriterConfig)
    strict: bool = False
    max_pixels: int = 64_000_000  # images larger than this are refused (decompression bombs)
    max_doc_chars: int = 1_000_000  # longer text files are split at paragraph breaks

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not self.input:
            raise ValueError("input is required")


@dataclass
class BuildReport:
    written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason: detail)
    sizes: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        reasons = Counter(r.split(":", 1)[0] for _, r in self.skipped)
        line = f"wrote {self.written} samples into {len(self.sizes)} shards; skipped {len(self.skipped)}"
        return line + (f" ({dict(sorted(reasons.items()))})" if reasons else "")


# -- input records ----------------------------------------------------------------------------
def _read_jsonl(path: str) -> Iterator[tuple[str, dict | str]]:
    """(source, record) per line; a malformed line gives (source, error string)."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            src = f"{path}:{n}"
            try:
                rec = json.loads(line)
            except ValueError as err:
                yield src, f"bad_record: {err}"
                continue
            yield src, rec if isinstance(rec, dict) else "bad_record: not a JSON object"


def _read_csv(path: str) -> Iterator[tuple[str, dict | str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "image" not in reader.fieldnames:
            raise ValueError(f"{path}: CSV needs a header with an 'image' column, got {reader.fieldnames}")
        for n, row in enumerate(reader, 2):
            caps = [row[k] for k in reader.fieldnames if k.startswith("caption") and row.get(k)]
            yield f"{path}:{n}", {"image": row["image"], "captions": caps}


def _image_folder(folder: str) -> Iterator[tuple[str, dict | str]]:
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            path = os.path.join(root, name)
            stem = os.path.splitext(path)[0]
            rec: dict = {"image": path}
            if os.path.exists(stem + ".json"):
                rec["json_path"] = stem + ".json"
            elif os.path.exists(stem + ".txt"):
                rec["txt_path"] = stem + ".txt"
            yield path, rec


def _records(cfg: BuildConfig) -> Iterator[tuple[str, dict | str]]:
    src = cfg.input
    if not os.path.exists(src):
        raise ValueError(f"input {src!r} does not exist")
    if os.path.isdir(src):
        if cfg.kind == "image-text":
            return _image_folder(src)
        if cfg.kind == "text":
            return _text_files(src)
        raise ValueError(f"{cfg.kind} input must be a .jsonl file, got the folder {src!r}")
    if src.endswith(".jsonl"):
        return _read_jsonl(src)
    if src.endswith(".csv") and cfg.kind == "image-text":
        return _read_csv(src)
    if src.endswith(".txt") and cfg.kind == "text":
        return iter([(src, {"text_path": src})])
    raise ValueError(f"cannot read {cfg.kind} input {src!r}: expected {_EXPECTED[cfg.kind]}")


_EXPECTED = {
    "image-text": "a folder, .csv or .jsonl",
    "vqa": "a .jsonl",
    "video": "a .jsonl",
    "text": "a folder, .txt or .jsonl",
}


def _text_files(folder: str) -> Iterator[tuple[str, dict]]:
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".txt"):
                path = os.path.join(root, name)
                yield path, {"text_path": path}


# -- per-kind sample makers (raise SampleError with a reason) ---------------------------------
def _resolve(base: str, path) -> str:
    if not isinstance(path, str) or not path:
        raise SampleError("bad_record", f"path {path!r} is not a string")
    return path if os.path.isabs(path) else os.path.join(base, path)


def _read_bytes(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise SampleError(f"missing_{what}", path) from None
    except OSError as err:
        raise SampleError(f"unreadable_{what}", f"{path}: {err}") from None
    if not data:
        raise SampleError(f"empty_{what}", path)
    return data


def _image(path: str, max_pixels: int) -> tuple[str, bytes]:
    from ..decode.image import open_image

    data = _read_bytes(path, "image")
    try:
        img = open_image(data, max_pixels)
        fmt = img.format
        img.load()  # full decode: truncated or corrupt pixel data fails here, not in training
    except SampleError as err:
        reason = "unreadable_image" if err.reason == "bad_image" else err.reason
        raise SampleError(reason, f"{path}: {err.detail}") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise SampleError("unreadable_image", f"{path}: {err}") from None
    return _FORMAT_EXT.get(fmt, "img"), data


def _captions(rec: dict) -> list[str]:
    caps = rec.get("captions")
    if caps is None and "caption" in rec:
        caps = [rec["caption"]]
    if "json_path" in rec:
        meta = json.loads(_read_bytes(rec["json_path"], "caption"))
        caps = meta.get("captions") or ([meta["caption"]] if "caption" in meta else None)
    elif "txt_path" in rec:
        caps = [_read_bytes(rec["txt_path"], "caption").decode("utf-8").strip()]
    if not caps or not all(isinstance(c, str) and c.strip() for c in caps):
        raise SampleError("missing_caption", f"no caption for {rec.get('image')}")
    return [c.strip() for c in caps]


def _make_image_text(rec: dict, base: str, key: str, cfg: BuildConfig) -> list[dict]:
    caps = _captions(rec)
    path = _resolve(base, rec.get("image"))
    ext, data = _image(path, cfg.max_pixels)
    meta = {"captions": caps, "source": path}
    return [{"__key__": key, ext: data, "txt": caps[0], "json": json.dumps(meta)}]


def _make_vqa(rec: dict, base: str, key: str, cfg: BuildConfig) -> list[dict]:
    q, answers = rec.get("question"), rec.get("answers")
    if answers is None and "answer" in rec:
        answers = [rec["answer"]]
    if not isinstance(q, str) or not q.strip() or not isinstance(answers, list) or not answers:
        raise SampleError("bad_record", "needs 'question' (str) and 'answers' (non-empty list)")
    path = _resolve(base, rec.get("image"))
    ext, data = _image(path, cfg.max_pixels)
    meta = {"question": q, "answers": [str(a) for a in answers], "source": path}
    if "answer" in rec:
        meta["answer"] = str(rec["answer"])
    return [{"__key__": key, ext: data, "json": json.dumps(meta)}]


def _make_video(rec: dict, base: str, key: str, cfg: BuildConfig) -> list[dict]:
    from ..decode.video import probe_video

    caption = rec.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise SampleError("missing_caption", "needs 'caption' (str)")
    path = _resolve(base, rec.get("video"))
    data = _read_bytes(path, "video")
    try:
        info = probe_video(data)
    except SampleError as err:
        raise SampleError("unreadable_video", f"{path}: {err.detail}") from None
    ext = os.path.splitext(path)[1].lstrip(".").lower() or "mp4"
    sample = {"__key__": key, ext: data}
    if rec.get("audio"):
        apath = _resolve(base, rec["audio"])
        aext = os.path.splitext(apath)[1].lstrip(".").lower()
        if aext not in ("wav", "flac"):
            raise SampleError("bad_record", f"audio {apath} must be .wav or .flac")
        sample[aext] = _read_bytes(apath, "audio")
    sample["json"] = json.dumps({"caption": caption.strip(), "source": path, **info})
    return [sample]


def _make_text(rec: dict, base: str, key: str, cfg: BuildConfig) -> list[dict]:
    if "text_path" in rec:
        raw = _read_bytes(rec["text_path"], "text")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SampleError("unreadable_text", f"{rec['text_path']}: {err}") from None
        source = rec["text_path"]
    else:
        text, source = rec.get("text"), None
        if not isinstance(text, str):
            raise SampleError("bad_record", "needs 'text' (str)")
    if not text.strip():
        raise SampleError("empty_text", source or "")
    chunks, cur = [], ""
    for para in text.split("\n\n"):  # keep paragraphs whole while a chunk has room
        if cur and len(cur) + len(para) + 2 > cfg.max_doc_chars:
            chunks.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    chunks.append(cur)
    out = []
    for i, chunk in enumerate(chunks):
        k = key if len(chunks) == 1 else f"{key}_{i:04d}"
        out.append({"__key__": k, "txt": chunk, "json": json.dumps({"source": source, "part": i})})
    return out


_MAKERS = {"image-text": _make_image_text, "vqa": _make_vqa, "video": _make_video, "text": _make_text}


def build_shards(cfg: BuildConfig, progress: bool = False) -> BuildReport:
    """Write the shards of ``cfg.input`` into ``cfg.writer.out_dir``; see the module docstring."""
    records = _records(cfg)
    base = cfg.input if os.path.isdir(cfg.input) else os.path.dirname(os.path.abspath(cfg.input))
    make = _MAKERS[cfg.kind]
    report = BuildReport()
    if progress:
        from tqdm import tqdm

        records = tqdm(records, desc=f"build {cfg.kind}", unit="input")
    with ShardSink(cfg.writer) as sink:
        for index, (source, rec) in enumerate(records):
            try:
                if isinstance(rec, str):
                    reason, _, detail = rec.partition(": ")
                    raise SampleError(reason, detail)
                samples = make(rec, base, f"{index:09d}", cfg)
            except (SampleError, ValueError, UnicodeDecodeError) as err:
                reason = err.reason if isinstance(err, SampleError) else "bad_record"
                detail = err.detail if isinstance(err, SampleError) else str(err)
                if cfg.strict:
                    raise BuildError(f"{source}: {reason}: {detail} (strict mode)") from err
                report.skipped.append((source, f"{reason}: {detail}"))
                log.warning("skipped %s: %s: %s", source, reason, detail)
                continue
            for s in samples:
                sink.write(s)
                report.written += 1
    report.sizes = sink.sizes
    with open(os.path.join(cfg.writer.out_dir, "build_report.json"), "w") as f:
        json.dump({"written": report.written, "skipped": report.skipped, "sizes": report.sizes}, f, indent=1)
    return report

"""Prediction records of the caption and VQA evaluations: their line formats, checks and JSONL files.

One JSON object per line (blank lines are ignored):

- caption: ``{"id": ..., "prediction": "...", "references": ["...", ...]}``
- vqa: ``{"id": ..., "prediction": "...", "answers": [ten strings], "answer_type": "..."}``
  (``answer_type`` optional)

``id`` is a string or an integer, unique within a file. Other keys are allowed and kept (a
question, an image path), so a predictions file written by ``mm eval`` reads back as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

from evals.vqa_answers import NUM_ANSWERS

TASKS = ("caption", "vqa")


class RecordError(ValueError):
    """A record (or a line of a records file) that does not have its task's format."""


def _check_strings(record: dict, key: str, *, exactly: int | None = None) -> None:
    value = record.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
        raise RecordError(f"{key!r} must be a non-empty list of strings, got {value!r}")
    if exactly is not None and len(value) != exactly:
        raise RecordError(f"{key!r} must hold {exactly} strings, got {len(value)}")


def check_record(task: str, record: object) -> None:
    """Raise RecordError naming the key and value when ``record`` is not a ``task`` record."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not isinstance(record, dict):
        raise RecordError(f"want a JSON object, got {type(record).__name__}")
    if "id" not in record:
        raise RecordError("no 'id'")
    if isinstance(record["id"], bool) or not isinstance(record["id"], str | int):
        raise RecordError(f"'id' must be a string or an integer, got {record['id']!r}")
    if not isinstance(record.get("prediction"), str):
        raise RecordError(f"'prediction' must be a string, got {record.get('prediction')!r}")
    if task == "caption":
        _check_strings(record, "references")
    else:
        _check_strings(record, "answers", exactly=NUM_ANSWERS)
        answer_type = record.get("answer_type")
        if answer_type is not None and not isinstance(answer_type, str):
            raise RecordError(f"'answer_type' must be a string when given, got {answer_type!r}")


def check_records(task: str, records: list[dict], *, source: str = "records") -> None:
    """Check every record and that ids are unique; errors name ``source`` and the record's index."""
    seen: dict[object, int] = {}
    for i, record in enumerate(records):
        try:
            check_record(task, record)
        except RecordError as err:
            raise RecordError(f"{source}[{i}]: {err}") from None
        key = str(record["id"])  # 7 and "7" are one id (caption scoring keys ids as strings)
        if key in seen:
            raise RecordError(f"{source}[{i}]: id {record['id']!r} repeats {source}[{seen[key]}]")
        seen[key] = i
    if not records:
        raise RecordError(f"{source}: no records")


def read_records(path: str | Path, task: str, *, max_errors: int = 20) -> list[dict]:
    """The records of a JSONL file, checked. Every malformed line is reported (up to ``max_errors``)
    in one RecordError, as ``FILE:LINE: what is wrong``."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a BOM is not an error
    except (OSError, UnicodeDecodeError) as err:
        raise RecordError(f"{path}: cannot read: {err}") from None
    records, errors, seen = [], [], {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            check_record(task, record)
            if str(record["id"]) in seen:
                raise RecordError(f"id {record['id']!r} repeats line {seen[str(record['id'])]}")
        except (json.JSONDecodeError, RecordError) as err:
            errors.append(f"{path}:{number}: {err}")
            continue
        seen[str(record["id"])] = number
        records.append(record)
    if errors:
        shown = errors[:max_errors] + ([f"... and {len(errors) - max_errors} more"] if len(errors) > max_errors else [])
        raise RecordError(f"{len(errors)} malformed {task} line(s):\n" + "\n".join(shown))
    if not records:
        raise RecordError(f"{path}: no records (want one JSON object per line)")
    return records


def write_records(path: str | Path, records: list[dict]) -> None:
    """Write records as JSONL (UTF-8, one object per line)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

"""What every benchmark script shares: timing on the device, the run's provenance, result files."""

from __future__ import annotations

import datetime
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch


def provenance() -> dict:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device,
        "torch": torch.__version__,
        "command": "python " + shlex.join(sys.argv),
    }


def time_ms(fn, warmup: int = 3, repeat: int = 10) -> float:
    """Median milliseconds of ``fn()`` (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def back_to_back_ms(fn, warmup: int = 3, repeat: int = 10) -> float:
    """Mean milliseconds of ``fn()`` called ``repeat`` times without waiting in between: the host runs
    ahead of the device as it does inside a model, so launch costs hide behind device work unless
    the host is the slower side. (``time_ms`` waits for every call: it also counts each call's
    launch lead, the time the device sits idle before the first kernel arrives.)"""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - t0) * 1e3 / repeat
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeat


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def write_results(out_dir: str | Path, name: str, title: str, sections: dict[str, tuple[list[dict], list[str]]],
                  notes: str = "") -> str:
    """Write ``name.md`` (tables) and ``name.json`` (all rows) with provenance; returns the markdown."""
    meta = provenance()
    parts = [f"# {title}", "", f"- date: {meta['date']}", f"- device: {meta['device']} (torch {meta['torch']})",
             f"- command: `{meta['command']}`", ""]
    if notes:
        parts += [notes, ""]
    for heading, (rows, columns) in sections.items():
        parts += [f"## {heading}", "", markdown_table(rows, columns), ""]
    text = "\n".join(parts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text)
    payload = {**meta, "sections": {h: rows for h, (rows, _) in sections.items()}}
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2))
    return text

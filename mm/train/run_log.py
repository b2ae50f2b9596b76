"""Metrics of a run: ``metrics.jsonl`` (one record per log event) and TensorBoard event files."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

METRICS = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics (is {run_dir} a run directory?)")
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


class RunLog:
    """Appends records ``{"step", "split", "time", **metrics}``; non-finite values are stored as null.

    On resume from step s, records after s are dropped (those steps are trained again) and
    TensorBoard purges its events after s, so the curves never hold two versions of a step.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True,
                 write: bool = True):
        self.run_dir = Path(run_dir)
        self.write = write  # False on ranks other than 0 under torchrun: log() and close() do nothing
        if not write:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS
        if resume_step is not None and self.path.is_file():
            kept = [r for r in read_metrics(self.run_dir) if r["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        elif resume_step is None:
            self.path.write_text("")
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)

    def log(self, step: int, metrics: dict[str, float], split: str = "train") -> None:
        if not self.write:
            return
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
        record = {"step": step, "split": split, "time": round(time.time(), 3), **clean}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in clean.items():
                if value is not None:
                    self._tb.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if not self.write:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()

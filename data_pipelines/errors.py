"""Counted, rate-limited skipping of bad samples, with a stop above an error-rate threshold.

Every bad input (unreadable shard, missing key, undecodable image...) is turned into a
:class:`SampleError` carrying a short *reason*; a :class:`SkipCounter` counts it by reason, logs
it at a limited rate and raises :class:`DataErrorRateExceeded` once the share of bad samples
exceeds the configured threshold. Nothing is dropped silently and nothing sleeps (webdataset's
``warn_and_continue`` sleeps 0.5 s per error).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

log = logging.getLogger("data_pipelines")


@dataclass
class ErrorPolicy:
    """How bad samples are tolerated."""

    max_error_rate: float = 0.1  # stop when bad / (bad + good) exceeds this ...
    min_samples: int = 200  # ... but only after this many samples were seen (early noise)
    log_first: int = 5  # log the first N errors of each reason in full
    log_interval_s: float = 30.0  # afterwards, at most one summary line per interval
    max_empty_shards: int = 1000  # consecutive shards without a single sample -> stop

    def __post_init__(self):
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ValueError(f"max_error_rate must be in [0, 1], got {self.max_error_rate}")
        if self.min_samples < 0:
            raise ValueError(f"min_samples must be >= 0, got {self.min_samples}")


class SampleError(Exception):
    """A sample (or a whole shard) that cannot be used; ``reason`` is the counter's key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class DataErrorRateExceeded(RuntimeError):
    """Too many bad samples: the data is broken, not merely noisy."""


class SkipCounter:
    """Counts good samples and errors by reason; logs at a limited rate; enforces the threshold.

    ``suppressed`` is set while a resumed stream replays the part it already delivered, so that
    errors counted before the checkpoint are not counted twice.
    """

    def __init__(self, policy: ErrorPolicy | None = None, where: str = ""):
        self.policy = policy or ErrorPolicy()
        self.where = where
        self.good = 0
        self.errors: dict[str, int] = {}
        self.suppressed = False
        self._last_log = 0.0
        self._unlogged = 0

    @property
    def total_errors(self) -> int:
        return sum(self.errors.values())

    def ok(self, n: int = 1) -> None:
        if not self.suppressed:
            self.good += n

    def error(self, reason: str, detail: str = "") -> None:
        if self.suppressed:
            return
        count = self.errors.get(reason, 0) + 1
        self.errors[reason] = count
        self._log(reason, detail, count)
        self.check()

    def _log(self, reason: str, detail: str, count: int) -> None:
        now = time.monotonic()
        if count <= self.policy.log_first:
            log.warning("skipped (%s) %s%s", reason, detail, f" [{self.where}]" if self.where else "")
            return
        self._unlogged += 1
        if now - self._last_log >= self.policy.log_interval_s:
            log.warning("skipped %d more bad samples; totals %s", self._unlogged, self.errors)
            self._last_log = now
            self._unlogged = 0

    def check(self) -> None:
        bad = self.total_errors
        seen = bad + self.good
        if seen < max(1, self.policy.min_samples):
            return
        rate = bad / seen
        if rate > self.policy.max_error_rate:
            raise DataErrorRateExceeded(
                f"{bad} of {seen} samples were bad ({rate:.1%} > max_error_rate="
                f"{self.policy.max_error_rate}); by reason: {self.errors}. Fix the data or raise "
                "max_error_rate."
            )

    def snapshot(self) -> dict:
        return {"good": self.good, "errors": dict(self.errors)}


def merge_counts(parts: list[dict]) -> dict:
    """Sum :meth:`SkipCounter.snapshot` dicts (one per worker) into run totals."""
    good = sum(p.get("good", 0) for p in parts)
    errors: dict[str, int] = {}
    for p in parts:
        for k, v in p.get("errors", {}).items():
            errors[k] = errors.get(k, 0) + v
    return {"good": good, "errors": dict(sorted(errors.items()))}

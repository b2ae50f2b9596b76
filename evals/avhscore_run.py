"""Score many files: decode in DataLoader workers, embed in batches, report per file and overall.

Workers decode and resize (uint8, cheap to pass between processes); the main process normalises,
embeds the frames of ``batch_size`` videos together (in calls of at most 256 frames) and their
soundtracks (and JavisScore windows) in one ``embed_audio_batch`` call, then scores each file. Unusable files are
kept in the report with their reason and left out of the means.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from evals.av_encoders import AVEncoderBase
from evals.av_media import SAMPLE_RATE, Unusable, load_media, normalize_frames
from evals.avhscore import METRICS, avhscore, javis_windows, javisscore

_FRAMES_PER_CALL = 256  # long videos x large batches: bound the float frames held at once


@dataclass
class ScoreConfig:
    metrics: tuple[str, ...] = ("avhscore",)
    fps: float | None = None  # None: every frame
    batch_size: int = 4  # videos per embedding call
    workers: int = 2  # decoding processes (0: in this process)
    window_s: float = 0.5  # JavisScore window
    lowest: float = 0.4  # JavisScore: share of each window's lowest cosines averaged

    def __post_init__(self):
        bad = [m for m in self.metrics if m not in METRICS]
        if bad or not self.metrics:
            raise ValueError(f"metrics must be among {METRICS}, got {list(self.metrics)}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.batch_size < 1 or self.workers < 0:
            raise ValueError(f"need batch_size >= 1 and workers >= 0, got {self.batch_size}, {self.workers}")


@dataclass
class Pair:
    video: str
    audio: str | None = None  # None: the video's own soundtrack


@dataclass
class Result:
    video: str
    audio: str | None
    scores: dict[str, float] = field(default_factory=dict)
    frames: int = 0
    seconds: float = 0.0  # audio length
    reason: str | None = None  # set when skipped
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None

    def record(self) -> dict:
        base = {"path": self.video, "audio": self.audio or self.video}
        if not self.ok:
            return {**base, "status": "skipped", "reason": self.reason, "detail": self.detail}
        return {**base, "status": "ok", **self.scores, "frames": self.frames, "seconds": round(self.seconds, 4)}


@dataclass
class Report:
    metrics: tuple[str, ...]
    results: list[Result]

    @property
    def skipped(self) -> list[Result]:
        return [r for r in self.results if not r.ok]

    def summary(self) -> dict[str, dict[str, float]]:
        """Per metric: mean, std (population) and count over the files that were scored."""
        out = {}
        for m in self.metrics:
            values = [r.scores[m] for r in self.results if r.ok]
            out[m] = {"mean": statistics.fmean(values) if values else math.nan,
                      "std": statistics.pstdev(values) if values else math.nan, "count": len(values)}
        return out


class _Files(torch.utils.data.Dataset):
    def __init__(self, pairs: Sequence[Pair], fps: float | None, min_audio_samples: int):
        self.pairs, self.fps, self.min_audio_samples = pairs, fps, min_audio_samples

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        p = self.pairs[i]
        try:
            return p, load_media(p.video, p.audio, self.fps, self.min_audio_samples)
        except Unusable as err:
            return p, err


def _batches(pairs: Sequence[Pair], cfg: ScoreConfig, min_audio_samples: int) -> Iterator[list]:
    loader = torch.utils.data.DataLoader(_Files(pairs, cfg.fps, min_audio_samples), batch_size=cfg.batch_size,
                                         num_workers=cfg.workers, collate_fn=list)
    yield from loader


def _score_batch(items: list, encoder: AVEncoderBase, cfg: ScoreConfig) -> list[Result]:
    results, media = [], []
    for pair, got in items:
        if isinstance(got, Unusable):
            results.append(Result(pair.video, pair.audio, reason=got.reason, detail=got.detail))
        else:
            results.append(Result(pair.video, pair.audio, frames=len(got.frames), seconds=len(got.wave) / SAMPLE_RATE))
            media.append((results[-1], got))
    if not media:
        return results
    frames_u8 = torch.cat([m.frames for _, m in media])  # [ΣN, 3, 224, 224] uint8
    frame_emb = torch.cat([encoder.embed_frames(normalize_frames(frames_u8[i:i + _FRAMES_PER_CALL])).float().cpu()
                           for i in range(0, len(frames_u8), _FRAMES_PER_CALL)])
    waves, windows = [m.wave for _, m in media], []
    if "javisscore" in cfg.metrics:
        for _, m in media:
            windows.append(javis_windows(len(m.frames), m.frame_rate, len(m.wave), SAMPLE_RATE, cfg.window_s))
            waves += [m.wave[w.samples[0]:w.samples[1]] for w in windows[-1]]
    audio_emb = encoder.embed_audio_batch(waves).float().cpu()
    first, next_window = 0, len(media)
    for i, (result, m) in enumerate(media):
        frames = frame_emb[first:first + len(m.frames)]
        first += len(m.frames)
        if "avhscore" in cfg.metrics:
            result.scores["avhscore"] = avhscore(frames, audio_emb[i])
        if "javisscore" in cfg.metrics:
            n = len(windows[i])
            result.scores["javisscore"] = javisscore(frames, audio_emb[next_window:next_window + n], windows[i],
                                                     cfg.lowest)
            next_window += n
    return results


def score_files(pairs: Sequence[Pair], encoder: AVEncoderBase, cfg: ScoreConfig, progress: bool = True) -> Report:
    """Score every pair; the report keeps the input order."""
    from tqdm import tqdm

    results = []
    with tqdm(total=len(pairs), disable=not progress, desc="avhscore", unit="video", dynamic_ncols=True) as bar:
        for items in _batches(pairs, cfg, encoder.min_audio_samples):
            batch = _score_batch(items, encoder, cfg)
            results += batch
            bar.update(len(batch))
            bar.set_postfix(skipped=sum(not r.ok for r in results))
    return Report(tuple(cfg.metrics), results)


def write_jsonl(report: Report, path: str | Path) -> None:
    """One JSON object per file: path, audio, status ("ok" | "skipped"), scores or reason."""
    with open(path, "w") as f:
        for r in report.results:
            f.write(json.dumps(r.record()) + "\n")


def write_csv(report: Report, path: str | Path) -> None:
    columns = ["path", "audio", "status", *report.metrics, "frames", "seconds", "reason", "detail"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in report.results:
            writer.writerow(r.record())


def summary_table(report: Report) -> str:
    """Markdown table: metric, mean, std, count over the scored files."""
    lines = ["| metric | mean | std | count |", "|---|---|---|---|"]
    for m, s in report.summary().items():
        lines.append(f"| {m} | {s['mean']:.4f} | {s['std']:.4f} | {s['count']} |")
    return "\n".join(lines)


def skipped_by_reason(report: Report) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in report.skipped:
        counts[r.reason] = counts.get(r.reason, 0) + 1
    return dict(sorted(counts.items()))

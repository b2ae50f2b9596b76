"""`mm avhscore`: AVHScore / JavisScore of videos with an audio-visual encoder (ImageBind or the suite's own)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.cli import UsageError

AUDIO_EXTS = ("wav", "flac", "mp3", "m4a", "aac", "ogg", "opus", "mp4")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the command; shared with any alias (e.g. `mm eval avhscore`)."""
    p.add_argument("paths", nargs="*", metavar="PATH", help="video files (folders are searched with --glob)")
    p.add_argument("--dir", action="append", default=[], metavar="D", help="a folder of videos (repeatable)")
    p.add_argument("--glob", default="*.mp4", help="file pattern inside folders (default: '*.mp4')")
    p.add_argument("--encoder", required=True,
                   help="imagebind (--checkpoint imagebind_huge.pth), mm (--checkpoint RUN|CHECKPOINT), "
                        "another registered name, or package.module:Class")
    p.add_argument("--checkpoint", required=True, metavar="FILE|RUN", help="the encoder's weights (local path)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int, default=4, help="videos per embedding call (default 4)")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (default 2; 0: none)")
    p.add_argument("--fps", type=float, default=None, help="sample frames at this rate (default: every frame)")
    p.add_argument("--metrics", default="avhscore", help="comma-separated: avhscore,javisscore")
    p.add_argument("--audio-dir", default=None, metavar="D",
                   help="take each video's audio from D/<video stem>.<wav|flac|mp3|...> instead of its own track")
    p.add_argument("--out", default=None, metavar="JSONL", help="per-file records, one JSON object a line")
    p.add_argument("--csv", default=None, metavar="CSV", help="per-file records as CSV")
    p.add_argument("--strict", action="store_true", help="exit 1 when any file was skipped")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "avhscore",
        help="AVHScore / JavisScore of videos (frame-audio agreement)",
        description="Mean over frames of cos(E_img(frame), E_audio(soundtrack)) per video, and the mean, std and "
        "count over videos; JavisScore with --metrics avhscore,javisscore. Files without audio, undecodable or "
        "too short are listed with the reason and left out. Example: mm avhscore --dir samples --encoder "
        "imagebind --checkpoint ckpt/imagebind_huge.pth --out scores.jsonl",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def _videos(args) -> list[Path]:
    found: list[Path] = []
    for folder in args.dir:
        if not Path(folder).is_dir():
            raise UsageError(f"--dir {folder}: not a folder")
    for spec in [*args.paths, *args.dir]:
        path = Path(spec)
        found += sorted(path.glob(args.glob)) if path.is_dir() else [path]  # a missing file is reported per file
    if not found:
        raise UsageError("no videos: give PATH... or --dir D (with --glob)")
    return found


def _audio_for(video: Path, audio_dir: Path) -> str:
    for ext in AUDIO_EXTS:
        candidate = audio_dir / f"{video.stem}.{ext}"
        if candidate.is_file():
            return str(candidate)
    return str(audio_dir / f"{video.stem}.{{{','.join(AUDIO_EXTS)}}}")  # reported as not found


def _config(args):
    from evals.avhscore_run import ScoreConfig

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    try:
        return ScoreConfig(metrics=metrics, fps=args.fps, batch_size=args.batch_size, workers=args.workers)
    except ValueError as err:
        raise UsageError(str(err)) from None


def run(args: argparse.Namespace) -> int:
    from evals.av_encoders import EncoderError, build_encoder, encoder_class
    from evals.avhscore_run import Pair, score_files, skipped_by_reason, summary_table, write_csv, write_jsonl
    from mm.train.trainer import resolve_device

    cfg = _config(args)
    videos = _videos(args)
    if args.audio_dir and not Path(args.audio_dir).is_dir():
        raise UsageError(f"--audio-dir {args.audio_dir}: not a folder")
    if not Path(args.checkpoint).exists():
        raise UsageError(f"--checkpoint {args.checkpoint}: no such file or folder")
    try:
        encoder_class(args.encoder)
    except EncoderError as err:
        raise UsageError(str(err)) from None
    pairs = [Pair(str(v), _audio_for(v, Path(args.audio_dir)) if args.audio_dir else None) for v in videos]
    try:
        encoder = build_encoder(args.encoder, args.checkpoint, resolve_device(args.device))
    except EncoderError as err:
        print(f"mm avhscore: error: {err}", file=sys.stderr)
        return 1
    report = score_files(pairs, encoder, cfg, progress=not args.quiet)
    for r in report.results:
        if r.ok:
            print("  ".join(f"{m}={r.scores[m]:.4f}" for m in cfg.metrics) + f"  {r.video}")
    for r in report.skipped:
        print(f"skipped {r.video}: {r.reason}: {r.detail}")
    if args.out:
        write_jsonl(report, args.out)
    if args.csv:
        write_csv(report, args.csv)
    print(summary_table(report))
    skipped = skipped_by_reason(report)
    print(f"scored {len(report.results) - len(report.skipped)} of {len(report.results)} files; skipped: "
          + (", ".join(f"{k} {v}" for k, v in skipped.items()) or "none"))
    if len(report.skipped) == len(report.results):
        return 1
    return 1 if args.strict and report.skipped else 0

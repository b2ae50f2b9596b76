"""`mm shards`: build tar shards from your data (`build`) or generate a synthetic set (`synth`)."""

from __future__ import annotations

import argparse
import os

from tools.cli import UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser("shards", help="write webdataset tar shards (build from data, or synth)")
    sub = p.add_subparsers(dest="shards_command", metavar="ACTION", parser_class=type(p))
    sub.required = True

    b = sub.add_parser("build", help="shards from images+captions, VQA JSONL, videos or text files")
    b.add_argument("kind", choices=["image-text", "vqa", "video", "text"])
    b.add_argument("input", help="folder, .csv or .jsonl (see data_pipelines/shards/build.py)")
    _writer_args(b)
    b.add_argument("--strict", action="store_true", help="fail on the first unusable input")
    b.add_argument("--max-pixels", type=int, default=64_000_000, help="refuse larger images")
    b.set_defaults(func=run)

    s = sub.add_parser("synth", help="generate a deterministic synthetic set")
    s.add_argument("kind", choices=["vl", "av", "text"])
    _writer_args(s)
    s.add_argument("-n", "--num-samples", type=int, default=None, help="samples (default per set)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=None, help="image side (vl) or frame side (av)")
    s.add_argument("--sizes", default=None, metavar="WxH,...",
                   help="vl: images of these sizes in turn (mixed aspect ratios, for any-res), e.g. 64x48,48x64")
    s.add_argument("--max-objects", type=int, default=None,
                   help="vl: objects per image drawn from 1..N (default 3; 1 makes an easier set)")
    s.add_argument("--seconds", type=float, default=None, help="clip length (av)")
    s.add_argument("--fps", type=int, default=None, help="frame rate (av)")
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.set_defaults(func=run)


def _writer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", required=True, help="output folder for shard-NNNNNN.tar + sizes.json")
    p.add_argument("--maxcount", type=int, default=10000, help="samples per shard at most")
    p.add_argument("--maxsize", type=float, default=1e9, help="bytes per shard at most")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from data_pipelines.shards.writer import ShardWriterConfig

    try:
        writer = ShardWriterConfig(out_dir=args.out, maxcount=args.maxcount, maxsize=int(args.maxsize))
        if args.shards_command == "build":
            return _build(args, writer)
        return _synth(args, writer)
    except ValueError as err:
        raise UsageError(str(err)) from err


def _build(args, writer) -> int:
    from data_pipelines.shards.build import BuildConfig, BuildError, build_shards

    cfg = BuildConfig(kind=args.kind, input=args.input, writer=writer, strict=args.strict, max_pixels=args.max_pixels)
    try:
        report = build_shards(cfg, progress=not args.quiet)
    except BuildError as err:
        print(f"mm shards build: {err}")
        return 1
    for source, reason in report.skipped[:50]:
        print(f"skipped {source}: {reason}")
    if len(report.skipped) > 50:
        print(f"... {len(report.skipped) - 50} more in {args.out}/build_report.json")
    print(report.summary())
    return 0 if report.written else 1


def _synth(args, writer) -> int:
    from data_pipelines.synthetic.write import KINDS, write_synthetic

    cfg_type = KINDS[args.kind][0]
    fields = {"seed": args.seed}
    if args.num_samples is not None:
        fields["num_samples"] = args.num_samples
    for name, attr in (("size", {"vl": "image_size", "av": "size"}), ("seconds", {"av": "seconds"}),
                       ("fps", {"av": "fps"}), ("max_objects", {"vl": "max_objects"})):  # fmt: skip
        value = getattr(args, name)
        if value is not None:
            if args.kind not in attr:
                raise UsageError(f"--{name.replace('_', '-')} does not apply to the {args.kind} set")
            fields[attr[args.kind]] = value
    if args.sizes is not None:
        if args.kind != "vl":
            raise UsageError(f"--sizes does not apply to the {args.kind} set")
        fields["sizes"] = _sizes(args.sizes)
    workers = args.workers or os.cpu_count() or 1
    sizes = write_synthetic(args.kind, cfg_type(**fields), writer, progress=not args.quiet, workers=workers)
    print(f"wrote {sum(sizes.values())} {args.kind} samples into {len(sizes)} shards in {args.out}")
    return 0


def _sizes(text: str) -> list[list[int]]:
    """``"64x48,48x64"`` -> ``[[64, 48], [48, 64]]`` (width, height)."""
    sizes = []
    for item in text.split(","):
        w, x, h = item.strip().partition("x")
        if not (x and w.isdigit() and h.isdigit()):
            raise UsageError(f"--sizes: {item.strip()!r} is not WIDTHxHEIGHT (e.g. 64x48)")
        sizes.append([int(w), int(h)])
    return sizes

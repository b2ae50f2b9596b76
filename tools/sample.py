"""`mm sample`: audible videos from text with a trained TAVDiffusion (a run or a checkpoint of recipe `tav`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tools.cli import UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sample",
        help="sample audible videos (mp4 with sound) from text with a TAVDiffusion run",
        description="Denoise video and audio together from prompts with the model of a run directory (its "
        "latest complete checkpoint, EMA weights when it has them) or of a checkpoint directory; writes "
        "<out>/clipNN.mp4 (H.264 + AAC), clipNN.wav, contact_sheet.png and index.html. Example: "
        "mm sample runs/tav_tiny --prompt 'a red circle moves around and bounces 2 times.' --num 4 --out samples",
    )
    p.add_argument("model", metavar="RUN|CHECKPOINT", help="a run directory or a checkpoint directory")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", default=None, metavar="FILE", help="a text file, one prompt a line")
    p.add_argument("--num", type=int, default=1, help="clips per prompt (default 1); clip i uses seed + i")
    p.add_argument("--steps", type=int, default=40, help="denoising steps (default 40)")
    p.add_argument("--guidance", type=float, default=8.0, help="classifier-free guidance scale (default 8; 1: none)")
    p.add_argument("--scheduler", default="ddim", choices=("ddim", "dpm"))
    p.add_argument("--mode", default="joint", choices=("joint", "independent"),
                   help="joint (default): both streams denoised together; independent: each against fresh "
                        "noise in place of the other (the published inference, for comparison)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--batch-size", type=int, default=8, help="clips per denoising batch (default 8)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (CUDA: bf16 autocast)")
    p.add_argument("--score-encoder", default=None, metavar="NAME",
                   help="also score each clip's AVHScore with this encoder (as `mm avhscore --encoder`)")
    p.add_argument("--score-checkpoint", default=None, metavar="FILE|RUN", help="the scoring encoder's weights")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise UsageError(f"--prompts {path}: no such file")
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UsageError("give at least one --prompt or a --prompts file")
    if args.num < 1 or args.batch_size < 1:
        raise UsageError(f"--num and --batch-size must be >= 1, got {args.num}, {args.batch_size}")
    return [p for p in prompts for _ in range(args.num)]


def load_tav(path: Path):
    """(TAVDiffusion with its inference weights, the run's config) from a run or checkpoint directory."""
    from mm.config import ConfigError
    from mm.models.tavdiffusion.model import TAVDiffusion
    from mm.train.checkpoint import CONFIG, load_weights_for_inference
    from mm.train.recipe import load_recipe_config
    from tools.generate import checkpoint_of

    if not path.is_dir():
        raise UsageError(f"{path}: no such directory (want a run or a checkpoint of recipe 'tav')")
    checkpoint = checkpoint_of(path)
    if checkpoint is None:
        raise UsageError(f"{path}: neither a run (with checkpoints/) nor a checkpoint (config.yaml + COMPLETE)")
    try:
        cfg = load_recipe_config(checkpoint / CONFIG)
    except ConfigError as err:
        raise UsageError(str(err)) from None
    if cfg.recipe != "tav":
        raise UsageError(f"{checkpoint / CONFIG}: recipe {cfg.recipe!r} is not a TAVDiffusion run (want 'tav')")
    model = TAVDiffusion(cfg.model)
    ema = load_weights_for_inference(checkpoint, model)
    return model.eval(), cfg, checkpoint, ema


def run(args: argparse.Namespace) -> int:
    import contextlib

    import torch

    from evals.gallery import GalleryClip, write_gallery
    from mm.models.tavdiffusion.sampling import SamplingConfig, sample_clips
    from mm.train.checkpoint import CheckpointError
    from mm.train.trainer import resolve_device

    prompts = read_prompts(args)
    if bool(args.score_encoder) != bool(args.score_checkpoint):
        raise UsageError("--score-encoder and --score-checkpoint go together")
    try:
        sampling = SamplingConfig(steps=args.steps, guidance=args.guidance, scheduler=args.scheduler, mode=args.mode,
                                  seed=args.seed)
    except ValueError as err:
        raise UsageError(str(err)) from None
    device = resolve_device(args.device)
    try:
        model, cfg, checkpoint, ema = load_tav(Path(args.model))
    except CheckpointError as err:
        print(f"mm sample: error: {err}", file=sys.stderr)
        return 1
    model.to(device)
    video = cfg.data.video
    print(f"{checkpoint} ({'EMA' if ema else 'raw'} weights): {len(prompts)} clips of {video.num_frames} frames "
          f"at {video.fps:g} fps, {cfg.model.video.size}px, {sampling.steps} {sampling.scheduler} steps, guidance "
          f"{sampling.guidance:g}, {sampling.mode}", file=sys.stderr)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    start = time.perf_counter()
    with autocast:
        clips = sample_clips(model, prompts, video.num_frames, video.fps, sampling, device,
                             batch_size=args.batch_size, progress=not args.quiet)
    seconds = time.perf_counter() - start
    scores = [{} for _ in prompts]
    if args.score_encoder:
        from evals.av_encoders import EncoderError, build_encoder
        from evals.avhscore_clips import clip_avhscores

        try:
            encoder = build_encoder(args.score_encoder, args.score_checkpoint, device)
        except EncoderError as err:
            raise UsageError(str(err)) from None
        scores = [{"AVHScore": s} for s in clip_avhscores(encoder, clips.frames, clips.audio, clips.sample_rate)]
    gallery = [GalleryClip(name=f"clip{i:02d}", prompt=p, frames=clips.frames[i].permute(0, 2, 3, 1),
                           audio=clips.audio[i], fps=clips.fps, sample_rate=clips.sample_rate, scores=scores[i])
               for i, p in enumerate(prompts)]
    index = write_gallery(Path(args.out), gallery, title=f"mm sample {checkpoint}")
    print(f"{len(prompts)} clips in {seconds:.1f} s ({seconds / len(prompts):.2f} s per clip, {device}); "
          f"open {index}", file=sys.stderr)
    return 0

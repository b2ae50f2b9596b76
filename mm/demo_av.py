"""`mm demo` stage `av`: train the suite's AV encoder (``configs/av_encoder_tiny.yaml``) on synthetic
audible clips, then score held-out clips with `mm avhscore`'s pipeline — each with its own
soundtrack, and, as the baseline, with the next clip's soundtrack. Passed when the own-audio
AVHScore is clearly above the baseline (by 0.1) and wins at least 80 % of the clips.

The clips are 1 s of 32x32 video at 4 fps (the `av` set at a small size: the stage must fit a few
minutes on two CPU cores); the config's frame and image sizes are set to match.
"""

from __future__ import annotations

from pathlib import Path

from mm.demo import CONFIGS, StageResult

CLIP = {"seconds": 1.0, "size": 32, "fps": 4}


def write_av_data(root: Path, train: int, heldout: int) -> tuple[Path, list[Path]]:
    """Training shards, and the held-out clips as mp4 files (what `mm avhscore` reads)."""
    from data_pipelines.shards.writer import ShardWriterConfig
    from data_pipelines.synthetic.av import AVSynthConfig, make_av_sample
    from data_pipelines.synthetic.write import write_synthetic

    write_synthetic("av", AVSynthConfig(num_samples=train, seed=0, **CLIP),
                    ShardWriterConfig(out_dir=str(root / "train"), maxcount=1000), workers=2 if train >= 256 else 1)
    (root / "heldout").mkdir(parents=True, exist_ok=True)
    videos = []
    for i in range(heldout):
        sample = make_av_sample(AVSynthConfig(seed=1, **CLIP), i)
        videos.append(root / "heldout" / f"{sample['__key__']}.mp4")
        videos[-1].write_bytes(sample["mp4"])
    return root / "train", videos


def train_av_encoder(train: Path, run_dir: Path, fast: bool):
    """The suite's AV encoder trained on the ``CLIP``-sized shards ``train``: (encoder for the metric, result)."""
    from evals.av_encoders import MMEncoder
    from mm.train.recipe import get_recipe, load_recipe_config
    from mm.train.trainer import Trainer

    overrides = [f"run.dir={run_dir}", f"data.stream.shards=[{train}]", "eval.shards=[]",
                 f"data.video.fps={CLIP['fps']}", f"data.video.num_frames={CLIP['fps']}",
                 f"data.video.size={CLIP['size']}", f"model.image_size={CLIP['size']}", "checkpoint.every=0",
                 *(["train.steps=4", "train.log_every=2"] if fast else ["train.steps=80", "schedule.warmup_steps=5"])]
    cfg = load_recipe_config(CONFIGS / "av_encoder_tiny.yaml", overrides)
    trainer = Trainer(get_recipe(cfg.recipe)(cfg))
    result = trainer.fit()
    return MMEncoder.from_model(trainer.model, trainer.device), result


def av_stage(out: Path, fast: bool) -> StageResult:
    import statistics

    from evals.avhscore_run import Pair, ScoreConfig, score_files

    train, videos = write_av_data(out / "data" / "av", train=64 if fast else 320, heldout=8 if fast else 24)
    encoder, result = train_av_encoder(train, out / "av_encoder", fast)
    score = ScoreConfig(metrics=("avhscore", "javisscore"), batch_size=8, workers=0)
    own = score_files([Pair(str(v)) for v in videos], encoder, score, progress=False)
    other = score_files([Pair(str(v), str(videos[(i + 1) % len(videos)])) for i, v in enumerate(videos)],
                        encoder, score, progress=False)
    a = [r.scores["avhscore"] for r in own.results]
    b = [r.scores["avhscore"] for r in other.results]
    wins = sum(x > y for x, y in zip(a, b, strict=True)) / len(a)
    own_mean, other_mean = statistics.fmean(a), statistics.fmean(b)
    return StageResult(
        "av",
        {
            "steps": str(result.step),
            "AVHScore, own soundtrack (held-out clips)": f"{own_mean:.3f} ± {statistics.pstdev(a):.3f}",
            "baseline: AVHScore with the next clip's soundtrack": f"{other_mean:.3f} ± {statistics.pstdev(b):.3f}",
            "clips scoring higher with their own sound": f"{wins:.2f} ({len(a)} clips)",
            "JavisScore own / next clip's": (f"{own.summary()['javisscore']['mean']:.3f} / "
                                             f"{other.summary()['javisscore']['mean']:.3f}"),
            "run": str(result.run_dir),
            "score videos with": f"mm avhscore --dir {videos[0].parent} --encoder mm --checkpoint {result.run_dir}",
        },
        passed=own_mean > other_mean + 0.1 and wins >= 0.8,
    )

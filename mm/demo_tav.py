"""`mm demo` stage `tav`: a tiny TAVDiffusion (``configs/tav_tiny.yaml``) trained on synthetic audible
clips, then clips sampled from prompts and scored with AVHScore by the suite's AV encoder (trained in
the same stage on the same data, as the `av` stage does), against two baselines of the same run:
- the same sampled clips with their soundtracks shuffled across clips (what the metric must tell apart);
- the streams sampled independently (each against fresh noise in place of the other: the published
  inference) from the same prompts and seeds.
Passed when joint sampling beats both. The prompts are the empty prompt (the clip's colour and pitch
are then left to the model: only the exchange between the streams can make them agree) and the
captions of held-out clips; the gallery of the joint samples is written to ``<out>/tav/samples/``.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from mm.demo import CONFIGS, StageResult
from mm.demo_av import CLIP, train_av_encoder, write_av_data


def _heldout_captions(videos: list[Path], count: int) -> list[str]:
    import json

    from data_pipelines.synthetic.av import AVSynthConfig, make_av_sample

    return [json.loads(make_av_sample(AVSynthConfig(seed=1, **CLIP), i)["json"])["caption"]
            for i in range(min(count, len(videos)))]


def tav_stage(out: Path, fast: bool) -> StageResult:
    import contextlib

    import torch

    from evals.avhscore_clips import clip_avhscores
    from evals.gallery import GalleryClip, write_gallery
    from mm.models.tavdiffusion.sampling import SamplingConfig, sample_clips
    from mm.train.recipe import get_recipe, load_recipe_config
    from mm.train.trainer import Trainer

    train, videos = write_av_data(out / "data" / "tav", train=64 if fast else 320, heldout=8)
    encoder, _ = train_av_encoder(train, out / "tav" / "av_encoder", fast)
    overrides = [f"run.dir={out / 'tav' / 'run'}", f"data.stream.shards=[{train}]", "eval.shards=[]",
                 "eval.preview_prompts=[]", f"data.video.fps={CLIP['fps']}", f"data.video.num_frames={CLIP['fps']}",
                 f"data.video.size={CLIP['size']}", "checkpoint.every=0",
                 *(["train.steps=3", "train.log_every=1"] if fast else ["train.steps=400", "train.log_every=50"])]
    cfg = load_recipe_config(CONFIGS / "tav_tiny.yaml", overrides)
    trainer = Trainer(get_recipe(cfg.recipe)(cfg))
    result = trainer.fit()
    model = trainer.model.eval()
    empty = 2 if fast else 12
    prompts = [""] * empty + _heldout_captions(videos, 2 if fast else 8)
    sampling = SamplingConfig(steps=4 if fast else 25, guidance=1.0 if fast else 3.0, seed=0)
    video = cfg.data.video
    averaged = trainer.ema.applied(trainer.module) if trainer.ema is not None else contextlib.nullcontext()
    with torch.no_grad(), averaged:
        joint = sample_clips(model, prompts, video.num_frames, video.fps, sampling, trainer.device)
        sampling.mode = "independent"
        alone = sample_clips(model, prompts, video.num_frames, video.fps, sampling, trainer.device)
    n = len(prompts)
    shuffled_order = [(i + 1) % n for i in range(n)]
    own = clip_avhscores(encoder, joint.frames, joint.audio, joint.sample_rate)
    shuffled = clip_avhscores(encoder, joint.frames, joint.audio, joint.sample_rate, audio_of=shuffled_order)
    independent = clip_avhscores(encoder, alone.frames, alone.audio, alone.sample_rate)
    gallery = write_gallery(out / "tav" / "samples", [
        GalleryClip(name=f"clip{i:02d}", prompt=p or "(empty prompt)", frames=joint.frames[i].permute(0, 2, 3, 1),
                    audio=joint.audio[i], fps=joint.fps, sample_rate=joint.sample_rate,
                    scores={"AVHScore": own[i], "independent": independent[i]})
        for i, p in enumerate(prompts)], title="mm demo: TAVDiffusion samples (joint)")

    def mean(xs: list[float], part: slice = slice(None)) -> float:
        return statistics.fmean(xs[part])

    uncond, cond = slice(0, empty), slice(empty, n)
    return StageResult(
        "tav",
        {
            "steps": str(result.step),
            "AVHScore, joint sampling (all clips)": f"{mean(own):.3f}",
            "baseline: same clips, soundtracks shuffled": f"{mean(shuffled):.3f}",
            "baseline: streams sampled independently": f"{mean(independent):.3f}",
            "empty prompt: joint / independent": f"{mean(own, uncond):.3f} / {mean(independent, uncond):.3f}",
            "held-out captions: joint / independent": f"{mean(own, cond):.3f} / {mean(independent, cond):.3f}",
            "gallery": str(gallery),
            "run": str(result.run_dir),
            "sample with": f"mm sample {result.run_dir} --prompt '' --num 4 --guidance 3 --steps 25 --out samples",
        },
        passed=mean(own) > mean(shuffled) and mean(own) > mean(independent),
    )

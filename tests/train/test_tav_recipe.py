"""`mm train` with recipe tav and `mm sample` on its run: held-out figures, previews, EMA weights, files
people open (mp4 with sound, wav, png, html), exact repeats per seed, and CLI misuse."""

import json

import av
import pytest

from data_pipelines.shards.writer import ShardWriterConfig
from data_pipelines.synthetic.av import AVSynthConfig
from data_pipelines.synthetic.write import write_synthetic
from mm.train.run_log import read_metrics
from tools.cli import main

TINY = ["model.video.size=16", "model.audio.hop=400", "model.audio.n_mels=16", "model.audio.griffin_lim_iters=4",
        "model.text.dim=32", "model.text.layers=1", "model.lightnet.hidden=48", "model.lightnet.layers=2",
        "model.lightnet.head_dim=24", "model.lightnet.ffn=96", "model.lightnet.couple_layers=[1]",
        "data.stream.batch_size=4", "data.stream.num_workers=0", "train.progress=false"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tav")
    clip = dict(seconds=1.0, size=32, fps=4)
    for split, n, seed in (("train", 8, 0), ("held", 4, 1)):
        write_synthetic("av", AVSynthConfig(num_samples=n, seed=seed, **clip),
                        ShardWriterConfig(out_dir=str(root / split)))
    run = root / "run"
    code = main(["train", "configs/tav_tiny.yaml", f"run.dir={run}", *TINY, f"data.stream.shards=[{root / 'train'}]",
                 f"eval.shards=[{root / 'held'}]", "eval.batches=1", "eval.timesteps=[500]", "train.steps=4",
                 "train.log_every=2", "train.eval_every=2", "checkpoint.every=0", "train.ema=0.9",
                 "eval.preview_prompts=['a red circle']", "eval.preview.steps=2"])
    assert code == 0
    return run


def test_training_writes_figures_previews_and_ema(run):
    evals = [r for r in read_metrics(run) if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4]
    assert {"video_mse", "audio_mse", "video_mse_uncoupled", "coupling_gain"} <= set(evals[-1])
    for step in (2, 4):
        gallery = run / "previews" / f"step_{step:08d}"
        assert (gallery / "index.html").is_file() and (gallery / "clip00.mp4").stat().st_size > 0
    assert (run / "checkpoints" / "step_00000004" / "ema.safetensors").is_file()


def decoded(path):
    with av.open(str(path)) as container:
        video = [f for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = sum(f.samples for f in container.decode(audio=0))
        return len(video), video[0].width, stream.sample_rate, samples


def test_sample_writes_playable_clips_that_repeat_per_seed(run, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square\n")
    args = ["sample", str(run), "--prompts", str(prompts), "--num", "2", "--steps", "2", "--guidance", "2",
            "--seed", "5", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "EMA weights" in capsys.readouterr().err
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted([f"clip{i:02d}.{e}" for i in range(4) for e in ("mp4", "wav")] +
                           ["contact_sheet.png", "index.html"])
    frames, width, rate, samples = decoded(tmp_path / "a" / "clip03.mp4")
    assert (frames, width, rate) == (4, 16, 16000) and 16000 <= samples < 16000 + 1024
    html = (tmp_path / "a" / "index.html").read_text()
    assert "a blue square" in html and "clip03.mp4" in html
    # the same seed gives the same clips; another seed other clips
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "clip03.wav").read_bytes() == (tmp_path / "b" / "clip03.wav").read_bytes()
    assert main([*args[:-3], "--seed", "6", "--quiet", "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "a" / "clip03.wav").read_bytes() != (tmp_path / "c" / "clip03.wav").read_bytes()


def test_sample_misuse_exits_2_with_a_hint(run, tmp_path, capsys):
    assert main(["sample", str(run), "--out", str(tmp_path)]) == 2
    assert "--prompt" in capsys.readouterr().err
    assert main(["sample", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "o")]) == 2
    assert "neither a run" in capsys.readouterr().err
    assert main(["sample", str(run), "--prompt", "x", "--steps", "0", "--out", str(tmp_path / "o")]) == 2
    assert "steps" in capsys.readouterr().err
    cfg = json.loads(json.dumps({"recipe": "lm"}))  # a checkpoint of another recipe is refused by name
    other = tmp_path / "lm_run" / "checkpoints" / "step_00000001"
    other.mkdir(parents=True)
    (other / "config.yaml").write_text(f"recipe: {cfg['recipe']}\n")
    (other / "COMPLETE").write_text("1\n")
    assert main(["sample", str(tmp_path / "lm_run"), "--prompt", "x", "--out", str(tmp_path / "o")]) == 2
    assert "not a TAVDiffusion run" in capsys.readouterr().err

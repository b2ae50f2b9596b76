"""AVHScore / JavisScore: the definitions, the preprocessing, the batched runner, bad files, the CLI."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from evals.av_media import Unusable, load_media, normalize_frames
from evals.avhscore import Window, avhscore, javis_windows, javisscore
from evals.avhscore_run import Pair, ScoreConfig, score_files
from tests.evals.av_fixtures import ToyEncoder, media_dir_fixture  # noqa: F401 - the media_dir fixture
from tools.cli import main

TOY = "tests.evals.av_fixtures:ToyEncoder"


def cos(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_avhscore_is_the_mean_frame_audio_cosine():
    f, a = torch.randn(7, 5), torch.randn(5)
    direct = sum(cos(f[i].double().numpy(), a.double().numpy()) for i in range(7)) / 7
    assert avhscore(f, a) == pytest.approx(direct, abs=1e-6)
    assert avhscore(f * 3.0, a * 0.1) == pytest.approx(direct, abs=1e-6)  # scale-free


def test_javis_windows_and_score_follow_the_definition():
    # 23 frames at 8 fps (4-frame windows), 2.9 s of audio (8000-sample windows): the last window of each
    # is moved back to end at the end; M = min(6, 6).
    windows = javis_windows(23, 8.0, 46400, 16000)
    assert [w.frames for w in windows] == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 20), (19, 23)]
    assert [w.samples for w in windows] == [(0, 8000), (8000, 16000), (16000, 24000), (24000, 32000),
                                           (32000, 40000), (38400, 46400)]
    assert javis_windows(23, 8.0, 12000, 16000) == [Window((0, 4), (0, 8000)), Window((4, 8), (4000, 12000))]
    assert javis_windows(3, 8.0, 46400, 16000) == [Window((0, 3), (0, 46400))]  # shorter than a window
    f, a = torch.randn(23, 6), torch.randn(6, 6)
    per_window = []
    for w, aw in zip(windows, a, strict=True):
        c = sorted(cos(f[i].double().numpy(), aw.double().numpy()) for i in range(*w.frames))
        k = max(1, int(len(c) * 0.4))  # 4 frames: the lowest one
        per_window.append(sum(c[:k]) / k)
    assert javisscore(f, a, windows) == pytest.approx(sum(per_window) / len(per_window), abs=1e-6)
    ten = javis_windows(40, 20.0, 16000, 16000)  # 10-frame windows: the lowest 4 are averaged
    f10, a10 = torch.randn(40, 6), torch.randn(len(ten), 6)
    lows = [sorted(cos(f10[i].numpy(), x.numpy()) for i in range(*w.frames))[:4] for w, x in zip(ten, a10, strict=True)]
    assert javisscore(f10, a10, ten) == pytest.approx(np.mean([np.mean(v) for v in lows]), abs=1e-6)
    with pytest.raises(ValueError, match="2 windows but 3"):
        javisscore(f, a[:3], windows[:2])


def test_preprocessing_matches_the_spec(media_dir):
    from evals.av_media import read_frames

    m = load_media(media_dir / "good_0.mp4", None, None, 400)  # 96x64 at 12 fps for 1.5 s; audio 22.05 kHz
    assert m.frames.shape == (18, 3, 224, 224) and m.frames.dtype == torch.uint8 and m.frame_rate == 12.0
    # shorter side 64 -> 224 (width 336), centre crop 224: the 16-px green margins (56 px scaled) are gone
    f = m.frames.float()
    assert f[:, 1, :, 4:-4].mean() < 40 and f[:, 0, :, 4:100].mean() > 180 and f[:, 2, :, 124:220].mean() > 180
    assert (m.frames[0] != m.frames[-1]).any()  # every frame, not one repeated
    assert read_frames((media_dir / "good_0.mp4").read_bytes(), 4.0)[0].shape == (6, 3, 224, 224)  # --fps 4
    # audio: resampled to 16 kHz, mono, the whole track (AAC pads a little at the ends)
    assert abs(len(m.wave) / 16000 - 1.5) < 0.1 and m.wave.dtype == torch.float32
    spectrum = np.abs(np.fft.rfft(m.wave[2000:18000].numpy()))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 440) <= 1
    # CLIP normalisation
    x = normalize_frames(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), (1 - mean) / std, rtol=1e-6)


def test_resize_crop_matches_pil_bicubic_as_imagebind_loads_images():
    from PIL import Image
    from torchvision import transforms as T

    from evals.av_media import resize_crop

    rng = np.random.default_rng(0)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((320, 240)))
    frame = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)  # photo-like, 4:3
    pil = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.PILToTensor()])
    ref = pil(Image.fromarray(frame)).float()
    ours = resize_crop(torch.from_numpy(frame).permute(2, 0, 1)[None])[0].float()
    assert ours.shape == (3, 224, 224) and (ours - ref).abs().max() <= 1 and (ours - ref).abs().mean() < 0.05


@pytest.mark.parametrize("name,reason", [("silent.mp4", "no_audio"), ("garbage.mp4", "undecodable"),
                                         ("empty.mp4", "undecodable"), ("absent.mp4", "not_found")])
def test_unusable_files_raise_with_a_reason(media_dir, name, reason):
    with pytest.raises(Unusable) as err:
        load_media(media_dir / name, None, None, 400)
    assert err.value.reason == reason
    with pytest.raises(Unusable, match="too_short"):
        load_media(media_dir / "good_2.mp4", None, None, 16000)  # 0.4 s of audio, an encoder wanting 1 s


def test_runner_scores_equal_the_definition_on_the_same_embeddings(media_dir, monkeypatch):
    import evals.avhscore_run

    monkeypatch.setattr(evals.avhscore_run, "_FRAMES_PER_CALL", 7)  # 18-frame videos take 3 calls
    files = ["good_0.mp4", "good_1.mp4", "garbage.mp4", "silent.mp4", "good_2.mp4"]
    pairs = [Pair(str(media_dir / f)) for f in files]
    cfg = ScoreConfig(metrics=("avhscore", "javisscore"), batch_size=2, workers=1)  # 2 videos per batch
    encoder = ToyEncoder()
    report = score_files(pairs, encoder, cfg, progress=False)
    assert [r.video for r in report.results] == [p.video for p in pairs]
    assert [r.reason for r in report.results] == [None, None, "undecodable", "no_audio", None]
    assert encoder.calls == 6 + 1  # 18 + 18 frames (calls span the two videos), none, then 4 frames
    for r in report.results:
        if not r.ok:
            continue
        m = load_media(r.video, None, None, 400)
        f = encoder.embed_frames(normalize_frames(m.frames))
        assert r.scores["avhscore"] == pytest.approx(avhscore(f, encoder.embed_audio(m.wave)), abs=1e-6)
        windows = javis_windows(len(m.frames), m.frame_rate, len(m.wave), 16000)
        a = torch.stack([encoder.embed_audio(m.wave[w.samples[0]:w.samples[1]]) for w in windows])
        assert r.scores["javisscore"] == pytest.approx(javisscore(f, a, windows), abs=1e-6)
        assert r.frames == len(m.frames)
    summary = report.summary()["avhscore"]
    values = [r.scores["avhscore"] for r in report.results if r.ok]
    assert summary["count"] == 3 and summary["mean"] == pytest.approx(np.mean(values))
    assert summary["std"] == pytest.approx(np.std(values))


def test_imagebind_encoder_through_the_runner(media_dir):
    from evals.av_encoders import ImageBindEncoder
    from mm.models.imagebind import ImageBindConfig, ImageBindVisionAudio, audio_clips

    tiny = ImageBindVisionAudio(ImageBindConfig(vision_width=32, vision_layers=1, vision_heads=2, audio_width=32,
                                                audio_layers=1, audio_heads=2, embed_dim=16))
    encoder = ImageBindEncoder.from_model(tiny, torch.device("cpu"))
    cfg = ScoreConfig(metrics=("avhscore",), fps=4.0, workers=0)
    report = score_files([Pair(str(media_dir / "good_1.mp4"))], encoder, cfg, progress=False)
    m = load_media(media_dir / "good_1.mp4", None, 4.0, 400)
    with torch.no_grad():
        frames = tiny.embed_images(normalize_frames(m.frames))
        audio = tiny.embed_audio_clips(audio_clips(m.wave)[None])[0]
    assert len(m.frames) == 9
    assert report.results[0].scores["avhscore"] == pytest.approx(avhscore(frames, audio), abs=1e-5)


def run_cli(capsys, *argv):
    try:
        code = main(["avhscore", *map(str, argv)])
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_writes_jsonl_and_csv_and_lists_skipped_files(media_dir, tmp_path, capsys):
    out, table = tmp_path / "s.jsonl", tmp_path / "s.csv"
    ckpt = tmp_path / "toy.ckpt"
    ckpt.write_text("toy encoders need no weights")
    args = ["--dir", media_dir, "--encoder", TOY, "--checkpoint", ckpt, "--metrics", "avhscore,javisscore",
            "--workers", 0, "--quiet", "--out", out, "--csv", table]
    code, stdout, _ = run_cli(capsys, *args)
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6
    by_name = {r["path"].rsplit("/", 1)[1]: r for r in records}
    assert by_name["silent.mp4"] == {**by_name["silent.mp4"], "status": "skipped", "reason": "no_audio"}
    assert {k for k, r in by_name.items() if r["status"] == "ok"} == {"good_0.mp4", "good_1.mp4", "good_2.mp4"}
    assert all(math.isfinite(r["avhscore"]) and math.isfinite(r["javisscore"]) for r in records if r["status"] == "ok")
    rows = list(csv.DictReader(table.open()))
    assert [r["path"] for r in rows] == [r["path"] for r in records]
    assert float(rows[[r["status"] for r in rows].index("ok")]["avhscore"]) == pytest.approx(
        next(r["avhscore"] for r in records if r["status"] == "ok"))
    assert "skipped" in stdout and "no_audio" in stdout and "| avhscore |" in stdout and "| javisscore |" in stdout
    assert "scored 3 of 6 files" in stdout
    assert run_cli(capsys, *args, "--strict")[0] == 1  # some were skipped
    good = ["--encoder", TOY, "--checkpoint", ckpt, "--workers", 0, "--quiet"]
    assert run_cli(capsys, media_dir / "good_0.mp4", *good, "--strict")[0] == 0
    assert run_cli(capsys, media_dir / "garbage.mp4", *good)[0] == 1  # nothing could be scored


def test_eval_alias_runs_the_same_command(media_dir, tmp_path, capsys):
    """`mm eval avhscore` takes the options of `mm avhscore` and writes the same records."""
    args = [media_dir / "good_0.mp4", "--encoder", TOY, "--checkpoint", tmp_path, "--workers", 0, "--quiet"]
    outs = [tmp_path / "direct.jsonl", tmp_path / "alias.jsonl"]
    assert run_cli(capsys, *args, "--out", outs[0])[0] == 0
    assert main(["eval", "avhscore", *map(str, args), "--out", str(outs[1])]) == 0
    assert outs[0].read_text() == outs[1].read_text() and outs[0].read_text()


def test_cli_audio_dir_pairs_by_stem(media_dir, tmp_path, capsys):
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "good_0.wav").write_bytes((media_dir / "good_1.mp4").read_bytes())  # any container PyAV reads
    out = tmp_path / "s.jsonl"
    code, _, _ = run_cli(capsys, media_dir / "good_0.mp4", media_dir / "good_1.mp4", "--audio-dir", audio,
                         "--encoder", TOY, "--checkpoint", out.parent, "--workers", 0, "--quiet", "--out", out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0 and records[0]["audio"] == str(audio / "good_0.wav") and records[0]["status"] == "ok"
    assert records[0]["seconds"] == pytest.approx(2.25, abs=0.1)  # good_1's track
    assert records[1]["reason"] == "not_found"


@pytest.mark.parametrize("argv,needle", [
    (["x.mp4", "--encoder", "nope", "--checkpoint", "."], "unknown encoder 'nope'"),
    (["x.mp4", "--encoder", "mm", "--checkpoint", "/no/such/run"], "no such file"),
    (["x.mp4", "--encoder", TOY, "--checkpoint", ".", "--metrics", "avhscore,fvd"], "metrics must be among"),
    (["--encoder", TOY, "--checkpoint", "."], "no videos"),
    (["x.mp4", "--encoder", TOY, "--checkpoint", ".", "--batch-size", "0"], "batch_size"),
    (["x.mp4", "--checkpoint", "."], "--encoder"),
])
def test_cli_misuse_exits_2_with_a_hint(capsys, argv, needle):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and needle in err and "--help" in err


def test_imagebind_checkpoint_that_does_not_fit_is_named(tmp_path, capsys):
    from mm.models.imagebind import ImageBindConfig, ImageBindVisionAudio

    tiny = ImageBindVisionAudio(ImageBindConfig(vision_width=32, vision_layers=1, vision_heads=2, audio_width=32,
                                                audio_layers=1, audio_heads=2, embed_dim=16))
    torch.save(tiny.state_dict(), tmp_path / "tiny.pth")  # the huge towers expect other shapes and 40 more blocks
    code, _, err = run_cli(capsys, "x.mp4", "--encoder", "imagebind", "--checkpoint", tmp_path / "tiny.pth")
    assert code == 1 and "does not fit the ImageBind" in err
    assert "missing: modality_trunks" in err and "audio.cls_token: checkpoint (1, 1, 32), model (1, 1, 768)" in err


def test_mm_encoder_refuses_a_run_of_another_recipe(tmp_path, capsys):
    run = tmp_path / "run" / "checkpoints" / "step_00000001"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("recipe: lm\n")
    (run / "COMPLETE").write_text("1\n")
    code, _, err = run_cli(capsys, "x.mp4", "--encoder", "mm", "--checkpoint", tmp_path / "run")
    assert code == 1 and "not an AV encoder" in err

"""Synthetic sets: deterministic, answers readable from the pixels, soundtrack tied to the picture."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from data_pipelines.errors import SkipCounter
from data_pipelines.shards.tar_stream import iter_shard
from data_pipelines.shards.writer import ShardWriterConfig
from data_pipelines.synthetic.av import PITCH, AVSynthConfig, make_av_sample
from data_pipelines.synthetic.shapes import COLOURS, POSITIONS
from data_pipelines.synthetic.text import TextSynthConfig, make_text_sample
from data_pipelines.synthetic.vl import VLSynthConfig, make_vl_sample
from data_pipelines.synthetic.write import write_synthetic
from tools.cli import main


def test_vl_deterministic_and_seed_dependent():
    cfg = VLSynthConfig(seed=3)
    a, b = make_vl_sample(cfg, 5), make_vl_sample(cfg, 5)
    assert a == b
    assert make_vl_sample(VLSynthConfig(seed=4), 5)["jpg"] != a["jpg"]


def test_vl_answers_are_in_the_pixels():
    cfg = VLSynthConfig(image_size=96, max_objects=4)
    for i in range(40):
        s = make_vl_sample(cfg, i)
        meta = json.loads(s["json"])
        img = np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("RGB")).astype(int)
        cell = 96 / 3
        for o in meta["objects"]:
            c = POSITIONS.index(o["position"])
            cx, cy = int((c % 3 + 0.5) * cell), int((c // 3 + 0.5) * cell + (4 if o["shape"] == "triangle" else 0))
            colour = img[cy, cx]
            nearest = min(COLOURS, key=lambda k: np.abs(np.array(COLOURS[k]) - colour).sum())
            assert nearest == o["colour"], (i, o, colour)
        count = next(q for q in meta["qa"] if q["question"] == "how many shapes are there?")
        assert count["answer"] == str(len(meta["objects"]))
        for q in meta["qa"]:
            if q["type"] == "position":
                colour, shape = q["question"][len("where is the ") : -1].split()
                assert any(
                    o["colour"] == colour and o["shape"] == shape and o["position"] == q["answer"]
                    for o in meta["objects"]
                )


def test_av_clip_pitch_follows_colour_and_metadata():
    import av

    from data_pipelines.decode.audio import AudioDecodeConfig, decode_audio
    from data_pipelines.decode.video import VideoDecodeConfig, decode_video, probe_video

    cfg = AVSynthConfig(seed=1)
    s = make_av_sample(cfg, 2)
    assert s == make_av_sample(cfg, 2)  # byte-identical
    meta = json.loads(s["json"])
    info = probe_video(s["mp4"])
    assert info["frames"] == 16 and info["fps"] == 8.0 and abs(info["duration"] - 2.0) < 1e-6
    assert info["audio_sample_rate"] == 16000 and info["audio_codec"] == "aac"
    wave = decode_audio(s["mp4"], 0.0, 2.0, AudioDecodeConfig()).numpy()
    quiet = np.ones(len(wave), bool)  # look at the tone away from the clicks
    for f in meta["bounce_frames"]:
        quiet[int(f / 8 * 16000) : int(f / 8 * 16000) + 800] = False
    seg = wave[4000:12000] if quiet[4000:12000].all() else wave[quiet][:8000]
    spectrum = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
    peak = np.argmax(spectrum) * 16000 / len(seg)
    assert abs(peak - PITCH[meta["colour"]]) < 10, (peak, meta["colour"])
    frames = decode_video(s["mp4"], 0.0, VideoDecodeConfig(num_frames=16, fps=8, size=0, random_start=False))
    assert tuple(frames.shape) == (16, 3, 64, 64)
    assert av.open(io.BytesIO(s["mp4"])).format.name.startswith("mov,mp4")


def test_text_corpus_deterministic():
    cfg = TextSynthConfig(seed=7)
    assert make_text_sample(cfg, 3) == make_text_sample(cfg, 3)
    assert make_text_sample(cfg, 3)["txt"] != make_text_sample(TextSynthConfig(seed=8), 3)["txt"]


def test_write_synthetic_same_bytes_with_workers(tmp_path):
    cfg = VLSynthConfig(num_samples=70)
    a = write_synthetic("vl", cfg, ShardWriterConfig(out_dir=str(tmp_path / "a"), maxcount=30))
    b = write_synthetic("vl", cfg, ShardWriterConfig(out_dir=str(tmp_path / "b"), maxcount=30), workers=2)
    assert a == b == {"shard-000000.tar": 30, "shard-000001.tar": 30, "shard-000002.tar": 10}
    for name in a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize("kind,n", [("vl", 12), ("text", 12), ("av", 3)])
def test_cli_synth(tmp_path, kind, n, capsys):
    out = tmp_path / kind
    assert main(["shards", "synth", kind, "-o", str(out), "-n", str(n), "--maxcount", "5", "--quiet"]) == 0
    sizes = json.loads((out / "sizes.json").read_text())
    assert sum(sizes.values()) == n
    got = [s for name in sorted(sizes) for s in iter_shard(str(out / name), None, SkipCounter())]
    assert len(got) == n and all("__error__" not in s for s in got)


def test_cli_synth_rejects_bad_values(tmp_path, capsys):
    assert main(["shards", "synth", "text", "-o", str(tmp_path), "--size", "3"]) == 2
    assert main(["shards", "synth", "vl", "-o", str(tmp_path), "-n", "0"]) == 2
    assert "num_samples must be >= 1, got 0" in capsys.readouterr().err

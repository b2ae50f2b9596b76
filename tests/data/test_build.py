"""`mm shards build`: four input kinds round-trip through the readers; bad inputs are reported."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipelines.decode.image import ImageDecodeConfig
from data_pipelines.readers.image_text import ImageTextReaderConfig, build_image_text_reader
from data_pipelines.readers.text import TextReaderConfig, build_text_reader
from data_pipelines.readers.video import VideoReaderConfig, build_video_reader
from data_pipelines.readers.vqa import VQAReaderConfig, build_vqa_reader
from data_pipelines.stream import one_pass
from data_pipelines.synthetic.av import AVSynthConfig, make_av_sample
from data_pipelines.testing import take
from data_pipelines.tokenizers import ByteTokenizer
from tools.cli import main


def make_images(folder, n, size=40):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)
        p = folder / f"img{i:02d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def build(*args):
    return main(["shards", "build", *map(str, args), "--quiet"])


def test_image_folder_round_trip_with_skips(tmp_path, capsys):
    src = tmp_path / "src"
    paths = make_images(src, 7)
    for i, p in enumerate(paths):
        if i == 2:
            continue  # no caption
        if i == 3:
            p.with_suffix(".json").write_text(json.dumps({"captions": ["three a", "three b"]}))
        else:
            p.with_suffix(".txt").write_text(f"caption {i}\n")
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (src / "broken.txt").write_text("broken")
    out = tmp_path / "shards"
    assert build("image-text", src, "-o", out, "--maxcount", "2") == 0
    printed = capsys.readouterr().out
    assert "skipped 2" in printed and "missing_caption" in printed and "unreadable_image" in printed
    sizes = json.loads((out / "sizes.json").read_text())
    assert list(sizes.values()) == [2, 2, 2]
    report = json.loads((out / "build_report.json").read_text())
    assert sorted(os.path.basename(s) for s, _ in report["skipped"]) == ["broken.jpg", "img02.png"]

    cfg = ImageTextReaderConfig(
        stream=one_pass(out, batch_size=4), image=ImageDecodeConfig(resize="none"), normalize="none", caption="first"
    )
    batches = take(build_image_text_reader(cfg, ByteTokenizer()))
    texts = [t for b in batches for t in b["text"]]
    assert texts == ["caption 0", "caption 1", "three a", "caption 4", "caption 5", "caption 6"]
    images = [img for b in batches for img in b["image"]]  # resize: none keeps own sizes, a list
    kept = [p for i, p in enumerate(paths) if i != 2]
    for img, p in zip(images, kept, strict=True):
        expected = torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1).float() / 255
        assert torch.equal(img, expected)  # PNG: bit exact
    assert batches[0]["text_ids"].shape[0] == 4

    assert build("image-text", src, "-o", tmp_path / "strict", "--strict") == 1


def test_csv_and_jsonl_image_text(tmp_path):
    paths = make_images(tmp_path / "imgs", 3)
    with open(tmp_path / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption", "caption_2"])
        for i, p in enumerate(paths):
            w.writerow([f"imgs/{p.name}", f"c{i}", f"d{i}"])
        w.writerow(["imgs/missing.png", "gone", ""])
    assert build("image-text", tmp_path / "list.csv", "-o", tmp_path / "a") == 0
    rec = [{"image": f"imgs/{p.name}", "caption": f"j{i}"} for i, p in enumerate(paths)]
    (tmp_path / "list.jsonl").write_text("\n".join(map(json.dumps, rec)) + "\nnot json\n")
    assert build("image-text", tmp_path / "list.jsonl", "-o", tmp_path / "b") == 0
    for name, want in (("a", ["c0", "c1", "c2"]), ("b", ["j0", "j1", "j2"])):
        report = json.loads((tmp_path / name / "build_report.json").read_text())
        assert report["written"] == 3 and len(report["skipped"]) == 1
        cfg = ImageTextReaderConfig(stream=one_pass(tmp_path / name, batch_size=4), caption="first",
                                    image=ImageDecodeConfig(size=32))
        (batch,) = take(build_image_text_reader(cfg))
        assert batch["text"] == want and batch["image"].shape == (3, 3, 32, 32)


def test_vqa_jsonl_round_trip(tmp_path):
    paths = make_images(tmp_path, 3)
    recs = [{"image": p.name, "question": f"q{i}?", "answers": ["a", "b", "a"]} for i, p in enumerate(paths)]
    recs.append({"image": paths[0].name, "question": "no answers"})
    (tmp_path / "vqa.jsonl").write_text("\n".join(map(json.dumps, recs)))
    out = tmp_path / "shards"
    assert build("vqa", tmp_path / "vqa.jsonl", "-o", out) == 0
    vqa = VQAReaderConfig(stream=one_pass(out, batch_size=4), image=ImageDecodeConfig(size=16))
    (batch,) = take(build_vqa_reader(vqa))
    assert batch["question"] == ["q0?", "q1?", "q2?"]
    assert batch["answers"] == [["a", "b", "a"]] * 3 and batch["answer"] == ["a"] * 3
    assert json.loads((out / "build_report.json").read_text())["skipped"][0][1].startswith("bad_record")


def test_video_jsonl_round_trip_keeps_bytes(tmp_path):
    cfg = AVSynthConfig(seed=2)
    recs = []
    originals = []
    for i in range(3):
        s = make_av_sample(cfg, i)
        (tmp_path / f"v{i}.mp4").write_bytes(s["mp4"])
        originals.append(s["mp4"])
        recs.append({"video": f"v{i}.mp4", "caption": s["txt"]})
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 1000)
    with __import__("wave").open(str(tmp_path / "side.wav"), "wb") as w:  # separate soundtrack
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.full(16000, 8000, np.int16).tobytes())
    recs[1]["audio"] = "side.wav"
    recs += [
        {"video": "empty.mp4", "caption": "x"},
        {"video": "junk.mp4", "caption": "y"},
        {"video": "absent.mp4", "caption": "z"},
    ]
    (tmp_path / "videos.jsonl").write_text("\n".join(map(json.dumps, recs)))
    out = tmp_path / "shards"
    assert build("video", tmp_path / "videos.jsonl", "-o", out) == 0
    reasons = sorted(r.split(":")[0] for _, r in json.loads((out / "build_report.json").read_text())["skipped"])
    assert reasons == ["empty_video", "missing_video", "unreadable_video"]

    from data_pipelines.errors import SkipCounter
    from data_pipelines.shards.tar_stream import iter_shard

    samples = list(iter_shard(str(out / "shard-000000.tar"), None, SkipCounter()))
    assert [s["mp4"] for s in samples] == originals  # container bytes, no re-encode
    meta = json.loads(samples[0]["json"])
    assert meta["fps"] == 8.0 and meta["audio_sample_rate"] == 16000 and abs(meta["duration"] - 2) < 1e-6

    rcfg = VideoReaderConfig(stream=one_pass(out, batch_size=3))
    rcfg.video.random_start = False
    rcfg.audio.mel = True
    (batch,) = take(build_video_reader(rcfg))
    assert batch["video"].shape == (3, 16, 3, 64, 64) and batch["audio"].shape == (3, 32000)
    assert batch["mel"].shape == (3, 64, 201)
    side = batch["audio"][1]  # the wav member, resampled 8 kHz -> 16 kHz: constant 8000/32768
    assert abs(side[2000:30000].mean().item() - 8000 / 32768) < 1e-3
    assert batch["text"] == [r["caption"] for r in recs[:3]]


def test_text_folder_round_trip(tmp_path):
    src = tmp_path / "txt"
    (src / "sub").mkdir(parents=True)
    docs = {"a.txt": "hello world", "sub/b.txt": "second doc\n\nwith two paragraphs", "c.txt": "  \n"}
    for name, text in docs.items():
        (src / name).write_text(text)
    (src / "bad.txt").write_bytes(b"\xff\xfe\xfa invalid utf8")
    out = tmp_path / "shards"
    assert build("text", src, "-o", out) == 0
    reasons = sorted(r.split(":")[0] for _, r in json.loads((out / "build_report.json").read_text())["skipped"])
    assert reasons == ["empty_text", "unreadable_text"]
    tok = ByteTokenizer()
    cfg = TextReaderConfig(stream=one_pass(out, batch_size=1), seq_len=8)
    ids = torch.cat([b["input_ids"].flatten() for b in take(build_text_reader(cfg, tok))]).tolist()
    text = tok.decode([i if i != tok.eos_id else ord("|") for i in ids])
    assert text.startswith("hello world|second doc\n\nwith two paragraphs|"[: len(text)])


def test_build_usage_errors(tmp_path, capsys):
    assert build("vqa", tmp_path, "-o", tmp_path / "o") == 2
    assert "must be a .jsonl" in capsys.readouterr().err
    assert build("text", tmp_path / "nope", "-o", tmp_path / "o") == 2


@pytest.mark.parametrize("maxsize", [3000])
def test_maxsize_splits(tmp_path, maxsize):
    make_images(tmp_path / "s", 6)
    for p in (tmp_path / "s").glob("*.png"):
        p.with_suffix(".txt").write_text("c")
    assert build("image-text", tmp_path / "s", "-o", tmp_path / "o", "--maxsize", maxsize) == 0
    sizes = json.loads((tmp_path / "o" / "sizes.json").read_text())
    assert sum(sizes.values()) == 6 and len(sizes) > 1
    assert all(os.path.getsize(tmp_path / "o" / n) <= maxsize + 6 * 1024 or sizes[n] == 1 for n in sizes)

"""Resume: a loader restored from state_dict yields exactly the batches of an uninterrupted run."""

import io
import json

import pytest
from PIL import Image

from data_pipelines.decode.image import ImageDecodeConfig
from data_pipelines.readers.image_text import ImageTextReaderConfig, build_image_text_reader
from data_pipelines.readers.text import TextReaderConfig, build_text_reader
from data_pipelines.readers.video import VideoReaderConfig, build_video_reader
from data_pipelines.stream import StreamConfig
from data_pipelines.synthetic.av import AVSynthConfig, make_av_sample
from data_pipelines.synthetic.text import TextSynthConfig, make_text_sample
from data_pipelines.testing import same_batch, write_samples
from data_pipelines.tokenizers import ByteTokenizer


def jpeg(i):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (i * 9 % 256, i * 5 % 256, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def run_batches(make, total, cut=None):
    """``total`` batches over as many epochs as needed; with ``cut``, checkpoint after ``cut``
    batches, rebuild the loader from a JSON round trip of the state and continue."""
    src = make()
    out = []
    while len(out) < total:
        for batch in src:
            out.append(batch)
            if cut is not None and len(out) == cut:
                state = json.loads(json.dumps(src.state_dict()))
                src = make()
                src.load_state_dict(state)
                break
            if len(out) == total:
                break
    return out, src


def image_source(tmp_path, workers):
    samples = [{"__key__": f"r{i:03d}", "jpg": jpeg(i) if i % 11 else b"bad", "txt": f"c{i}"} for i in range(45)]
    write_samples(tmp_path, samples, maxcount=4)  # 12 shards of uneven sizes, some bad samples

    def make():
        cfg = ImageTextReaderConfig(
            # a missing shard: its shard_open errors happen while replaying, and must not count twice
            stream=StreamConfig(
                shards=[str(tmp_path), str(tmp_path / "missing.tar")] * 2,
                batch_size=3,
                samples_per_epoch=21,
                shuffle_buffer=6,
                num_workers=workers,
                seed=11,
            ),
            image=ImageDecodeConfig(size=8),
        )
        return build_image_text_reader(cfg)

    return make


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers", [0, 2, 3])
def test_resume_image_text(tmp_path, workers):
    make = image_source(tmp_path, workers)
    total = 16  # 7 batches per epoch: cuts inside epoch 0, on the boundary, inside epoch 1
    ref, ref_src = run_batches(make, total)
    assert len({k for b in ref for k in b["key"]}) > 20
    assert ref_src.counts()["errors"]["shard_open"] > 0 and ref_src.counts()["errors"]["bad_image"] > 0
    for cut in (1, 5, 7, 10):
        got, src = run_batches(make, total, cut)
        assert all(same_batch(a, b) for a, b in zip(ref, got, strict=True)), cut
        assert src.counts() == ref_src.counts(), cut  # skip totals carried across the resume


def test_resume_text_packing_mid_document(tmp_path):
    cfg_s = TextSynthConfig(num_samples=60, min_sentences=3, max_sentences=20)
    write_samples(tmp_path, [make_text_sample(cfg_s, i) for i in range(60)], maxcount=13)

    def make():
        cfg = TextReaderConfig(
            stream=StreamConfig(
                shards=[str(tmp_path)], batch_size=2, samples_per_epoch=20, shuffle_buffer=5, num_workers=2, seed=3
            ),
            seq_len=64,
        )
        return build_text_reader(cfg, ByteTokenizer())

    ref, _ = run_batches(make, 14)
    carries = []
    for cut in (3, 6, 11):
        src = make()
        for n, _ in enumerate(src, 1):
            if n == cut:
                carries.append([p[1] for p in src.state_dict()["positions"]])
                break
        got, _ = run_batches(make, 14, cut)
        assert all(same_batch(a, b) for a, b in zip(ref, got, strict=True)), cut
    assert any(c > 0 for cs in carries for c in cs)  # some cuts fell inside a document


def test_resume_video(tmp_path):
    cfg_s = AVSynthConfig(seconds=1.0, fps=8, size=32)
    write_samples(tmp_path, [make_av_sample(cfg_s, i) for i in range(6)], maxcount=2)

    def make():
        cfg = VideoReaderConfig(
            stream=StreamConfig(
                shards=[str(tmp_path)], batch_size=2, samples_per_epoch=8, shuffle_buffer=3, num_workers=2, seed=1
            )
        )
        cfg.video.num_frames, cfg.video.fps, cfg.video.size = 4, 8.0, 16
        return build_video_reader(cfg)

    ref, _ = run_batches(make, 4)
    got, _ = run_batches(make, 4, cut=1)
    assert all(same_batch(a, b) for a, b in zip(ref, got, strict=True))


def test_state_mismatch_is_refused(tmp_path):
    make2 = image_source(tmp_path, 2)
    state = make2().state_dict()
    with pytest.raises(ValueError, match="num_workers"):
        image_source(tmp_path, 3)().load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        make2().load_state_dict({**state, "version": 99})

"""Readers: foreign shard writers, packing format, determinism, splitting, refusal of unsafe input."""

import io
import pickle
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipelines.decode.image import ImageDecodeConfig
from data_pipelines.packing import IGNORE_INDEX
from data_pipelines.readers.image_text import ImageTextReaderConfig, build_image_text_reader
from data_pipelines.readers.text import TextReaderConfig, build_text_reader
from data_pipelines.stream import StreamConfig, one_pass
from data_pipelines.testing import same_batch, take, write_samples
from data_pipelines.tokenizers import ByteTokenizer
from mm.layers.packing import document_positions


def jpeg(i, size=24):
    img = Image.new("RGB", (size, size), (i * 20 % 256, 100, 200))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


def image_text(path, **kw):
    stream = one_pass(path, **{"batch_size": 4, **kw})
    cfg = ImageTextReaderConfig(stream=stream, image=ImageDecodeConfig(size=16), caption="first")
    return [k for b in take(build_image_text_reader(cfg)) for k in zip(b["key"], b["text"], strict=True)]


def test_webdataset_shardwriter_shards(tmp_path):
    import webdataset as wds

    with wds.ShardWriter(str(tmp_path / "wds-%06d.tar"), maxcount=4, verbose=0) as sink:
        for i in range(10):
            img = Image.new("RGB", (20, 20), (i * 10, 0, 0))
            sink.write({"__key__": f"s{i:03d}", "jpg": img, "txt": f"caption {i}"})
    got = image_text(tmp_path)  # no sizes.json: uniform shard weights
    assert got == [(f"s{i:03d}", f"caption {i}") for i in range(10)]  # batches of 4, 4 and the last 2
    assert image_text(tmp_path, keep_partial=False) == got[:8]  # drop_last


@pytest.mark.parametrize("compress", [False, True])
def test_plain_tar_shards(tmp_path, compress):
    src = tmp_path / "files"
    src.mkdir()
    for i in range(6):
        (src / f"k{i}.jpg").write_bytes(jpeg(i))
        (src / f"k{i}.txt").write_text(f"t{i}")
    name = "plain.tar.gz" if compress else "plain.tar"
    (tmp_path / "sh").mkdir()
    subprocess.run(
        ["tar", "--sort=name", "-czf" if compress else "-cf", str(tmp_path / "sh" / name), "-C", str(src), "."],
        check=True,
    )
    got = image_text(tmp_path / "sh")
    assert got == [(f"./k{i}", f"t{i}") for i in range(6)]


def test_pickle_members_are_never_loaded(tmp_path):
    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    samples = [
        {"__key__": f"e{i}", "jpg": jpeg(i), "txt": "x", "pkl": pickle.dumps(Evil()), "pth": pickle.dumps(Evil())}
        for i in range(3)
    ]
    write_samples(tmp_path / "sh", samples)
    assert len(image_text(tmp_path / "sh")) == 3
    assert not sentinel.exists()


def test_unsafe_urls_refused(tmp_path):
    with pytest.raises(ValueError, match="allow_pipe"):
        build_image_text_reader(ImageTextReaderConfig(stream=one_pass("pipe:cat x.tar", batch_size=4)))
    with pytest.raises(ValueError, match="only local paths"):
        build_image_text_reader(ImageTextReaderConfig(stream=one_pass("http://host/x.tar", batch_size=4)))


def test_pipe_when_opted_in(tmp_path):
    write_samples(tmp_path, [{"__key__": f"p{i}", "jpg": jpeg(i), "txt": "c"} for i in range(3)])
    cfg = one_pass(f"pipe:cat {tmp_path}/shard-000000.tar", allow_pipe=True, batch_size=4)
    cfg.shards = [f"pipe:cat {tmp_path}/shard-000000.tar"]
    got = take(build_image_text_reader(ImageTextReaderConfig(stream=cfg, image=ImageDecodeConfig(size=8))))
    assert got[0]["key"] == ["p0", "p1", "p2"]


def test_config_validation():
    with pytest.raises(ValueError, match="samples_per_epoch"):
        StreamConfig(shards=["x"], resample=True, samples_per_epoch=0)
    with pytest.raises(ValueError, match="resize must be one of"):
        ImageDecodeConfig(resize="bogus")
    with pytest.raises(ValueError, match="normalize must be one of"):
        ImageTextReaderConfig(normalize="bogus")
    with pytest.raises(ValueError, match="seq_len"):
        TextReaderConfig(seq_len=1)


def test_node_and_worker_split_covers_each_sample_once(tmp_path):
    write_samples(tmp_path, [{"__key__": f"n{i:02d}", "jpg": jpeg(i), "txt": "c"} for i in range(25)], maxcount=3)
    keys = []
    for rank in range(2):
        cfg = one_pass(tmp_path, rank=rank, world_size=2, batch_size=4)
        cfg.num_workers = 2
        cfg.shuffle_shards = True
        keys.append({k for k, _ in image_text_cfg(cfg)})
    assert not keys[0] & keys[1]
    assert keys[0] | keys[1] == {f"n{i:02d}" for i in range(25)}


def image_text_cfg(stream):
    cfg = ImageTextReaderConfig(stream=stream, image=ImageDecodeConfig(size=8), caption="first")
    return [k for b in take(build_image_text_reader(cfg)) for k in zip(b["key"], b["text"], strict=True)]


def test_resampled_stream_is_deterministic(tmp_path):
    write_samples(tmp_path, [{"__key__": f"d{i:02d}", "jpg": jpeg(i), "txt": "c"} for i in range(30)], maxcount=7)

    def run(seed):
        cfg = ImageTextReaderConfig(
            stream=StreamConfig(
                shards=[str(tmp_path)], batch_size=4, samples_per_epoch=48, shuffle_buffer=10, num_workers=0, seed=seed
            ),
            image=ImageDecodeConfig(size=8),
        )
        src = build_image_text_reader(cfg)
        first = list(src.one_epoch())
        assert len(first) == len(src) == 12 and src.state_dict()["epoch"] == 1
        return first + take(src, 12)  # iterating goes on into the next epoch

    a, b, c = run(0), run(0), run(1)
    assert len(a) == 24 and all(same_batch(x, y) for x, y in zip(a, b, strict=True))
    assert [x["key"] for x in a[:12]] != [x["key"] for x in a[12:]]  # epochs differ
    assert [x["key"] for x in a] != [x["key"] for x in c]


def test_packing_format(tmp_path):
    tok = ByteTokenizer()
    rng = np.random.default_rng(0)
    docs = ["".join(chr(97 + int(c)) for c in rng.integers(0, 26, int(n))) for n in rng.integers(1, 40, 60)]
    write_samples(tmp_path, [{"__key__": f"t{i:03d}", "txt": d} for i, d in enumerate(docs)], maxcount=25)
    B, T = 3, 16
    batches = take(build_text_reader(TextReaderConfig(stream=one_pass(tmp_path, batch_size=B), seq_len=T), tok))
    stream, doc_start = [], []
    for d in docs:
        doc_start.append(len(stream))
        stream += tok.encode(d) + [tok.eos_id]
    full, rest = divmod(len(stream), B * T)
    rows = -(-rest // T)  # the last batch of a one-pass stream: the leftover tokens, last row padded
    assert len(batches) == full + 1 and 0 < rest < (rows * T) and rows < B
    starts = set(doc_start)
    for n, b in enumerate(batches):
        size = B * T if n < full else rows * T
        assert b["input_ids"].shape == b["labels"].shape == (size // T, T)
        off = n * B * T
        real = stream[off : off + size]
        flat = b["input_ids"].flatten().tolist()
        assert flat == real + [tok.eos_id] * (size - len(real))
        labels = b["labels"].flatten().tolist()
        for i, lab in enumerate(labels):
            g = off + i
            if g >= len(stream) or stream[g] == tok.eos_id:
                assert lab == IGNORE_INDEX
            else:
                assert lab == stream[g + 1]
        want = {i for i in range(0, size, T)} | {s - off for s in starts if off <= s < off + size}
        want |= {len(real)} - {size}  # the padding is a segment of its own
        assert b["cu_seqlens"].tolist() == sorted(want) + [size]
        assert b["cu_seqlens"].dtype == torch.int32
    dropped = one_pass(tmp_path, batch_size=B, keep_partial=False)
    assert len(take(build_text_reader(TextReaderConfig(stream=dropped, seq_len=T), tok))) == full
    pos = document_positions(batches[0]["cu_seqlens"], B, T)
    assert pos.shape == (B, T) and (pos[:, 0] == 0).all()


def test_configs_load_as_omegaconf_structured_configs():
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError

    from data_pipelines.readers.video import VideoReaderConfig
    from data_pipelines.readers.vqa import VQAReaderConfig

    for schema in (ImageTextReaderConfig, VQAReaderConfig, VideoReaderConfig, TextReaderConfig):
        merged = OmegaConf.merge(
            OmegaConf.structured(schema),
            {"stream": {"shards": ["a", "b"], "rank": 1, "world_size": 2, "errors": {"max_error_rate": 0.2}}},
        )
        cfg = OmegaConf.to_object(merged)
        assert isinstance(cfg, schema) and cfg.stream.shards == ["a", "b"] and cfg.stream.errors.max_error_rate == 0.2
        with pytest.raises(ConfigKeyError):
            OmegaConf.merge(OmegaConf.structured(schema), {"stream": {"bogus": 1}})
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(VideoReaderConfig), {"video": {"fallback": None}}))
    assert cfg.video.fallback is None


def test_len_is_batches_per_rank(tmp_path):
    write_samples(tmp_path, [{"__key__": f"l{i}", "jpg": jpeg(i), "txt": "c"} for i in range(5)])
    stream = StreamConfig(shards=[str(tmp_path)], batch_size=2, samples_per_epoch=20, rank=1, world_size=2)
    src = build_image_text_reader(ImageTextReaderConfig(stream=stream, image=ImageDecodeConfig(size=8)))
    assert len(src) == 5
    with pytest.raises(ValueError, match="less than one batch"):
        build_image_text_reader(
            ImageTextReaderConfig(
                stream=StreamConfig(shards=[str(tmp_path)], batch_size=8, samples_per_epoch=10, world_size=2, rank=0)
            )
        )

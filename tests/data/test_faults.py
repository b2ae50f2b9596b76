"""Fault injection: every bad input is skipped and counted by reason, exactly; limits stop the run."""

import io
import json
import struct
import tarfile
import time
import zlib

import pytest
from PIL import Image

from data_pipelines.decode.image import ImageDecodeConfig
from data_pipelines.errors import DataErrorRateExceeded, ErrorPolicy
from data_pipelines.readers.image_text import ImageTextReader, ImageTextReaderConfig, build_image_text_reader
from data_pipelines.readers.video import VideoReaderConfig, build_video_reader
from data_pipelines.stateful import DataLoaderStalled, ResumableLoader, ShardStream
from data_pipelines.stream import StreamConfig, one_pass
from data_pipelines.synthetic.av import AVSynthConfig, make_av_sample
from data_pipelines.testing import take, write_samples


def jpeg(i):
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), (i * 7 % 256, 50, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def bomb_png(width=30000, height=30000):
    """A valid tiny PNG whose header claims width x height pixels."""
    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def read_all(stream_cfg):
    cfg = ImageTextReaderConfig(stream=stream_cfg, image=ImageDecodeConfig(size=8), caption="first")
    src = build_image_text_reader(cfg)
    keys = [k for b in take(src) for k in b["key"]]
    return keys, src.counts()


def faulty_set(tmp_path):
    samples = []
    for i in range(30):
        s = {"__key__": f"f{i:02d}", "jpg": jpeg(i), "txt": f"c{i}"}
        if i == 5:
            s["jpg"] = b"\xff\xd8\xff\xe0 this is not a jpeg"
        if i == 12:
            del s["jpg"]
        if i == 17:
            s["jpg"] = bomb_png()
        samples.append(s)
    write_samples(tmp_path, samples, maxcount=10)
    return tmp_path / "shard-000002.tar"


def member_offsets(path):
    with tarfile.open(path) as t:
        return {m.name: (m.offset, m.offset_data, m.size) for m in t.getmembers()}


def test_bad_samples_counted_by_reason_and_mid_member_truncation(tmp_path):
    shard = faulty_set(tmp_path)
    _, data_at, _ = member_offsets(shard)["f25.jpg"]
    with open(shard, "r+b") as f:
        f.truncate(data_at + 10)  # cut inside sample f25's image
    keys, counts = read_all(one_pass(tmp_path, batch_size=1))
    lost = {5, 12, 17, 25, 26, 27, 28, 29}
    assert keys == [f"f{i:02d}" for i in range(30) if i not in lost]
    assert counts == {
        "good": 22,
        "errors": {"bad_image": 1, "image_too_large": 1, "missing_key": 1, "tar_truncated": 1},
    }


def test_truncation_at_a_header_boundary_is_detected(tmp_path):
    shard = faulty_set(tmp_path)
    header_at, _, _ = member_offsets(shard)["f25.jpg"]
    with open(shard, "r+b") as f:
        f.truncate(header_at)  # tarfile alone would call this a normal end of archive
    keys, counts = read_all(one_pass(tmp_path, batch_size=1))
    # f24 may have lost members after the cut: the sample being read at the cut is dropped
    assert keys[-1] == "f23" and counts["errors"]["tar_truncated"] == 1


def test_oversized_member_and_missing_shard(tmp_path):
    write_samples(tmp_path, [{"__key__": f"m{i}", "jpg": jpeg(i) + b"\0" * (2000 * i), "txt": "c"} for i in range(4)])
    keys, counts = read_all(
        one_pass([str(tmp_path / "shard-000000.tar"), str(tmp_path / "gone.tar")], max_member_bytes=3000, batch_size=1)
    )
    assert keys == ["m0", "m1"]
    assert counts["errors"] == {"member_too_large": 2, "shard_open": 1}


def test_zero_byte_and_corrupt_video(tmp_path):
    cfg = AVSynthConfig(seed=5)
    samples = [make_av_sample(cfg, i) for i in range(4)]
    samples[1]["mp4"] = b""
    samples[2]["mp4"] = samples[2]["mp4"][:300]  # truncated container
    write_samples(tmp_path, samples)
    rcfg = VideoReaderConfig(stream=one_pass(tmp_path, batch_size=1))
    src = build_video_reader(rcfg)
    keys = [k for b in take(src) for k in b["key"]]
    assert keys == ["av00000000", "av00000003"]
    assert src.counts() == {"good": 2, "errors": {"bad_video": 2}}
    assert src.metrics()["data/skipped/bad_video"] == 2


def test_error_rate_threshold_stops_the_run(tmp_path):
    samples = [{"__key__": f"b{i:02d}", "jpg": jpeg(i) if i % 2 else b"junk", "txt": "c"} for i in range(40)]
    write_samples(tmp_path, samples)
    policy = ErrorPolicy(max_error_rate=0.2, min_samples=10)
    with pytest.raises(DataErrorRateExceeded, match=r"bad_image.*max_error_rate"):
        read_all(one_pass(tmp_path, errors=policy, batch_size=1))
    # the same data under a tolerant policy goes through, with the totals
    _, counts = read_all(one_pass(tmp_path, errors=ErrorPolicy(max_error_rate=0.6, min_samples=10), batch_size=1))
    assert counts == {"good": 20, "errors": {"bad_image": 20}}


def test_no_shard_readable_stops(tmp_path):
    policy = ErrorPolicy(min_samples=5)
    cfg = StreamConfig(
        shards=[str(tmp_path / "a.tar"), str(tmp_path / "b.tar")],
        batch_size=2,
        samples_per_epoch=10,
        num_workers=0,
        errors=policy,
    )
    with pytest.raises(DataErrorRateExceeded, match="shard_open"):
        read_all(cfg)


class HangingReader(ImageTextReader):
    def decode(self, sample, rng):
        if sample["__key__"] == "h3":
            time.sleep(20)  # a decoder stuck on one file
        return super().decode(sample, rng)


def test_hanging_decoder_gives_clear_error(tmp_path):
    write_samples(tmp_path, [{"__key__": f"h{i}", "jpg": jpeg(i), "txt": "c"} for i in range(8)])
    cfg = ImageTextReaderConfig(
        stream=one_pass(tmp_path, num_workers=1, worker_timeout_s=3.0, batch_size=1), image=ImageDecodeConfig(size=8)
    )
    src = ResumableLoader(ShardStream(cfg.stream, HangingReader(cfg)))
    got = []
    start = time.monotonic()
    with pytest.raises(DataLoaderStalled, match="worker_timeout_s=3.0"):
        for b in src:
            got += b["key"]
    assert got == ["h0", "h1", "h2"] and time.monotonic() - start < 20
    json.dumps(src.state_dict())

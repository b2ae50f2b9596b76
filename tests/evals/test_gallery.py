"""The sampling gallery: mp4s that decord and PyAV read back, exact wavs, an escaped index.html, a contact sheet."""

import html.parser
import io
import wave
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipelines.encode import encode_mp4, encode_wav
from evals import gallery
from evals.gallery import GalleryClip, write_gallery
from tests.evals.gallery_fixtures import make_clips, moving_square, sine

AAC_FRAME = 1024  # samples per AAC-LC frame


@pytest.fixture(scope="module", name="built")
def built_fixture(tmp_path_factory):
    clips = make_clips()
    out = tmp_path_factory.mktemp("gallery")
    index = write_gallery(out, clips, title="Samples <step 100>")
    return out, index, clips


def top_level_atoms(data: bytes) -> list[str]:
    names, i = [], 0
    while i + 8 <= len(data):
        size = int.from_bytes(data[i : i + 4], "big")
        names.append(data[i + 4 : i + 8].decode("latin-1"))
        if size == 1:
            size = int.from_bytes(data[i + 8 : i + 16], "big")
        if size < 8:
            break
        i += size
    return names


def pyav_read(data: bytes):
    import av

    with av.open(io.BytesIO(data)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        facts = {
            "frames": v.frames, "rate": v.average_rate, "size": (v.codec_context.height, v.codec_context.width),
            "sample_rate": a.rate, "audio_seconds": float(a.duration * a.time_base),
        }  # fmt: skip
        images = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(v)])
    with av.open(io.BytesIO(data)) as c:
        samples = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)])
    return facts, images, samples


def test_mp4_decodes_with_pyav_and_decord(built):
    import decord

    out, _, clips = built
    for c in clips:
        data = (out / f"{c.name}.mp4").read_bytes()
        frames = np.asarray(c.frames)
        t, h, w, _ = frames.shape
        s = len(c.audio)
        assert top_level_atoms(data)[:2] == ["ftyp", "moov"], "faststart: the index precedes the media"
        facts, images, samples = pyav_read(data)
        assert facts["frames"] == t and images.shape == (t, h, w, 3)
        assert facts["rate"] == Fraction(c.fps) and facts["size"] == (h, w)
        assert np.abs(images.astype(int) - frames).mean() < 3  # H.264 at crf 20 on flat colours
        assert facts["sample_rate"] == c.sample_rate
        assert facts["audio_seconds"] == pytest.approx(s / c.sample_rate, abs=1e-3)  # the edit list trims both ends
        # Decoders drop the 1024 priming samples (edit list) but keep the last frame's padding:
        # S <= decoded < S + one AAC frame, and sample i decodes sample i (a 1024 shift would not match).
        assert s <= len(samples) < s + AAC_FRAME, (s, len(samples))
        assert np.abs(samples[:s] - c.audio).max() < 0.1
        assert np.abs(samples[s:]).max(initial=0) < 0.01  # the padding is silence

        vr = decord.VideoReader(io.BytesIO(data))
        assert len(vr) == t and vr.get_avg_fps() == pytest.approx(c.fps)
        got = vr.get_batch(list(range(t))).asnumpy()
        assert got.shape == (t, h, w, 3) and np.abs(got.astype(int) - images).mean() < 2
        native = decord.AudioReader(io.BytesIO(data), sample_rate=-1, mono=True)[:].asnumpy()[0]
        at_rate = decord.AudioReader(io.BytesIO(data), sample_rate=c.sample_rate, mono=True)[:].asnumpy()[0]
        assert len(native) == len(samples) and np.abs(native - samples).max() < 1e-4
        assert len(at_rate) == len(native)  # no resampling needed: the track is at c.sample_rate


def test_mp4_bytes_repeat_and_fractional_fps():
    frames, audio = moving_square(10, 32, 64, (0, 200, 0)), sine(12000, 16000, 300.0)
    a = encode_mp4(frames, audio, 30000 / 1001, 16000)
    assert a == encode_mp4(frames, audio, 30000 / 1001, 16000)
    facts, _, _ = pyav_read(a)
    assert facts["rate"] == Fraction(30000, 1001) and facts["frames"] == 10


def test_wav_reads_back_within_16_bit_quantisation(built):
    out, _, clips = built
    for c in clips:
        with wave.open(str(out / f"{c.name}.wav"), "rb") as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, c.sample_rate)
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        assert len(pcm) == len(c.audio)
        assert np.abs(pcm / 32767 - c.audio).max() <= 0.5 / 32767 + 1e-7
    data = encode_wav(np.array([1.5, -2.0, 0.0, 0.25], np.float32), 8000)  # out of range: clipped
    with wave.open(io.BytesIO(data), "rb") as w:
        assert np.frombuffer(w.readframes(4), "<i2").tolist() == [32767, -32767, 0, 8192]


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.texts = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.texts.append(data)


def test_index_html_escapes_and_links_only_local_files(built):
    out, index, clips = built
    page = index.read_text(encoding="utf-8")
    assert "<script" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp;" in page
    assert "<title>Samples &lt;step 100&gt;</title>" in page
    parser = _Links()
    parser.feed(page)
    assert [t for t, _ in parser.tags].count("script") == 0
    texts = "".join(parser.texts)
    assert clips[0].prompt in texts and clips[1].prompt in texts  # shown verbatim, newline kept
    assert "AVHScore" in texts and "0.2134" in texts
    videos = [a for t, a in parser.tags if t == "video"]
    assert videos == [{"controls": None, "preload": "metadata", "src": f"{c.name}.mp4"} for c in clips]
    links = {a.get("src") or a.get("href") for t, a in parser.tags if t in ("video", "a", "img", "link", "source")}
    assert links == {"contact_sheet.png", *(f"{c.name}{ext}" for c in clips for ext in (".mp4", ".wav"))}
    assert all((out / name).is_file() for name in links)  # self-contained: every reference is a file here
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_contact_sheet_size_and_content(built):
    out, _, clips = built
    sheet = Image.open(out / "contact_sheet.png")
    sheet.load()
    g = gallery
    thumb_width = [round(c.frames.shape[2] * g.THUMB_HEIGHT / c.frames.shape[1]) for c in clips]
    widths = [min(len(c.frames), g.SHEET_FRAMES) * (w + g.GAP) for c, w in zip(clips, thumb_width, strict=True)]
    assert sheet.mode == "RGB"
    assert sheet.size == (g.GAP + max(widths) + g.MEL_WIDTH + g.GAP,
                          g.GAP + len(clips) * (g.LABEL_HEIGHT + g.THUMB_HEIGHT + g.GAP))  # fmt: skip
    px = np.asarray(sheet).astype(int)
    row = lambda r: px[g.GAP + r * (g.LABEL_HEIGHT + g.THUMB_HEIGHT + g.GAP) + g.LABEL_HEIGHT :][: g.THUMB_HEIGHT]
    red = (row(0)[..., 0] > 180) & (row(0)[..., 2] < 90)
    blue = (row(1)[..., 2] > 180) & (row(1)[..., 0] < 90)
    assert red.sum() > 1000 and blue.sum() > 1000 and not ((row(0)[..., 2] > 180) & (row(0)[..., 0] < 90)).any()
    label = px[g.GAP : g.GAP + g.LABEL_HEIGHT, :200]
    assert (label.sum(-1) < 200).sum() > 30  # dark text in the label strip
    mel = row(0)[:, g.GAP + max(widths) :]
    assert mel.shape[1] == g.MEL_WIDTH + g.GAP and mel[:, : g.MEL_WIDTH].std() > 10  # a tone shows as a band


def test_a_crash_while_writing_leaves_the_old_index_whole(tmp_path, monkeypatch):
    clips = make_clips()[1:]
    index = write_gallery(tmp_path, clips, title="first")
    before = index.read_bytes()
    real = Path.write_bytes

    def half_then_crash(self, data):
        if self.name.startswith(".index.html"):
            real(self, data[: len(data) // 2])
            raise OSError("disk full")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        write_gallery(tmp_path, clips, title="second")
    assert index.read_bytes() == before
    names = sorted(p.name for p in tmp_path.iterdir())  # the half-written temporary file is gone
    assert names == ["blue-square.2.mp4", "blue-square.2.wav", "contact_sheet.png", "index.html"]


@pytest.mark.parametrize("name", ["", "a b", "../up", "x/y", ".hidden", "-flag", "é", "a" * 101])
def test_unsafe_names_are_refused(name):
    with pytest.raises(ValueError, match="clip name") as err:
        GalleryClip(name=name, prompt="", frames=np.zeros((1, 16, 16, 3), np.uint8),
                    audio=np.zeros(100, np.float32), fps=8.0, sample_rate=16000)  # fmt: skip
    assert repr(name) in str(err.value)


def test_bad_media_is_refused_naming_the_value():
    ok = dict(name="c", prompt="p", audio=np.zeros(100, np.float32), fps=8.0, sample_rate=16000)
    with pytest.raises(ValueError, match="clip c: .*even.*63x64"):
        GalleryClip(frames=np.zeros((2, 63, 64, 3), np.uint8), **ok)
    with pytest.raises(ValueError, match="even.*64x17"):
        encode_mp4(np.zeros((2, 64, 17, 3), np.uint8), np.zeros(100, np.float32), 8, 16000)
    with pytest.raises(ValueError, match="dtype float32"):
        GalleryClip(frames=np.zeros((2, 16, 16, 3), np.float32), **ok)
    with pytest.raises(ValueError, match=r"shape \(2, 16, 16\)"):
        GalleryClip(frames=torch.zeros(2, 16, 16, dtype=torch.uint8), **ok)
    with pytest.raises(ValueError, match="1 non-finite"):
        GalleryClip(frames=np.zeros((2, 16, 16, 3), np.uint8), **{**ok, "audio": np.array([0.0, np.nan])})
    with pytest.raises(ValueError, match="fps must be > 0, got 0"):
        GalleryClip(frames=np.zeros((2, 16, 16, 3), np.uint8), **{**ok, "fps": 0})
    clip = GalleryClip(frames=np.zeros((2, 16, 16, 3), np.uint8), **ok)
    with pytest.raises(ValueError, match=r"duplicates \['c'\]"):
        write_gallery("/nonexistent-never-created", [clip, clip], title="t")
    with pytest.raises(ValueError, match="at least one clip"):
        write_gallery("/nonexistent-never-created", [], title="t")

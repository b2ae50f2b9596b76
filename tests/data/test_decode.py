"""Decoders: decord and PyAV agree, AV1 falls back to PyAV, audio is resampled to 16 kHz mono."""

import io
import wave

import numpy as np
import pytest
import torch

from data_pipelines.decode.audio import AudioDecodeConfig, decode_audio, log_mel
from data_pipelines.decode.image import ImageDecodeConfig, decode_image
from data_pipelines.decode.video import VideoDecodeConfig, decode_video
from data_pipelines.errors import SampleError
from data_pipelines.synthetic.av import AVSynthConfig, encode_mp4, make_av_sample


@pytest.mark.parametrize("start", [0.5, 2.6])  # 2.6: PyAV seeks
def test_decord_and_pyav_give_the_same_frames(start):
    s = make_av_sample(AVSynthConfig(seed=4, seconds=4.0), 0)
    kw = dict(num_frames=6, fps=4.0, size=32, random_start=False)
    a = decode_video(s["mp4"], start, VideoDecodeConfig(backend="decord", **kw))
    b = decode_video(s["mp4"], start, VideoDecodeConfig(backend="pyav", **kw))
    assert a.shape == b.shape == (6, 3, 32, 32) and a.dtype == torch.uint8
    assert (a.float() - b.float()).abs().mean() < 6  # same frames; scalers differ slightly
    assert (a[0].float() - a[-1].float()).abs().mean() > 1  # the shape moved: frames are distinct


def test_av1_falls_back_to_pyav():
    frames = np.zeros((8, 64, 64, 3), np.uint8)
    frames[:, :, :32] = (200, 30, 30)
    data = encode_mp4(frames, np.zeros(16000, np.float32), 8, 16000, codec="libsvtav1")  # decord: no AV1
    out = decode_video(data, 0.0, VideoDecodeConfig(num_frames=4, size=32, random_start=False))
    assert out.shape == (4, 3, 32, 32)
    assert out[0, 0, 16, 4] > 150 and out[0, 0, 16, 28] < 50
    with pytest.raises(SampleError, match="decord"):
        decode_video(data, 0.0, VideoDecodeConfig(num_frames=4, size=32, fallback=None))


def test_wav_stereo_44k_to_16k_mono_and_log_mel():
    sr, f0 = 44100, 1000.0
    t = np.arange(2 * sr) / sr
    left = 0.5 * np.sin(2 * np.pi * f0 * t)
    pcm = (np.stack([left, left], 1) * 32767).astype(np.int16)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    cfg = AudioDecodeConfig(mel=True)
    x = decode_audio(buf.getvalue(), 0.5, 1.0, cfg)
    assert x.shape == (16000,) and x.dtype == torch.float32
    spec = np.abs(np.fft.rfft(x.numpy()))
    assert abs(np.argmax(spec) * 16000 / 16000 - f0) < 2
    assert abs(x.abs().max().item() - 0.5) < 0.05
    mel = log_mel(x[None], cfg)
    assert mel.shape == (1, 64, 101) and torch.isfinite(mel).all()
    short = decode_audio(buf.getvalue(), 1.5, 1.0, cfg)  # runs past the end: zero padded
    assert short.shape == (16000,) and short[9000:].abs().max() == 0


def test_image_formats_and_guards():
    from PIL import Image

    img = Image.new("RGB", (50, 30), (10, 200, 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    out = decode_image(buf.getvalue(), ImageDecodeConfig(size=16))
    assert out.shape == (3, 16, 16) and out[1].float().mean() == 200
    assert decode_image(buf.getvalue(), ImageDecodeConfig(size=16, resize="squash")).shape == (3, 16, 16)
    with pytest.raises(SampleError, match="image_too_large"):
        decode_image(buf.getvalue(), ImageDecodeConfig(max_pixels=1000))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(SampleError, match="bad_image"):  # EPS would run Ghostscript: not accepted
        decode_image(eps, ImageDecodeConfig())
    with pytest.raises(SampleError, match="bad_image"):
        decode_image(buf.getvalue()[:60], ImageDecodeConfig())  # truncated PNG


def test_audio_seek_matches_decoding_from_the_start(monkeypatch):
    import data_pipelines.decode.audio as audio

    s = make_av_sample(AVSynthConfig(seconds=4.0, fps=4, size=16), 3)
    cfg = AudioDecodeConfig()
    seeked = decode_audio(s["mp4"], 2.3, 1.0, cfg)
    monkeypatch.setattr(audio, "_SEEK_MARGIN_S", 1e9)  # never seek
    full = decode_audio(s["mp4"], 2.3, 1.0, cfg)
    assert seeked.shape == full.shape == (16000,)
    assert (seeked - full).abs().max() < 1e-3

"""Clips -> files people open: mp4 a browser plays (H.264 yuv420p + AAC) and 16-bit PCM wav.

The mp4 is what a ``<video>`` element decodes: H.264 in yuv420p (the only chroma layout every
browser decodes, hence even width and height), AAC-LC mono audio, and the ``moov`` index written
before the media data (``movflags=+faststart``) so playback starts before the whole file arrives.
FFmpeg's faststart pass reopens the output by name to move the index, which a ``BytesIO`` has
not got, so the file is written to a temporary path and read back. ``fflags=+bitexact`` and one
encoder thread make the bytes a function of the input alone (shards and seeds repeat exactly).

AAC starts with 1024 samples of encoder priming; the muxer records them in an edit list, and
FFmpeg-based decoders (PyAV, browsers) drop them, so the decoded track has the input's length
rounded up to a whole AAC frame at most (1024 samples).
"""

from __future__ import annotations

import io
import os
import tempfile
import wave
from fractions import Fraction

import numpy as np


def _numpy(x, name: str) -> np.ndarray:
    """A torch tensor (any device) or array-like -> ndarray, without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    return x


def check_frames(frames) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` with even H, W (tensor or array) -> ndarray; ValueError naming what is wrong."""
    frames = _numpy(frames, "frames")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be [T, H, W, 3] with T >= 1, got shape {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:  # yuv420p subsamples chroma 2x2
        raise ValueError(f"frame height and width must be even for yuv420p, got {h}x{w} (H x W)")
    return frames


def check_audio(audio, sample_rate: int) -> np.ndarray:
    """Finite float ``[S]`` (tensor or array) -> float32 ndarray clipped to [-1, 1]; ValueError otherwise."""
    audio = _numpy(audio, "audio")
    if audio.ndim != 1 or audio.shape[0] < 1:
        raise ValueError(f"audio must be mono [S] with S >= 1, got shape {tuple(audio.shape)}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio must be float in [-1, 1], got dtype {audio.dtype}")
    if not np.isfinite(audio).all():
        raise ValueError(f"audio has {int((~np.isfinite(audio)).sum())} non-finite samples")
    if int(sample_rate) != sample_rate or sample_rate < 1000:
        raise ValueError(f"sample_rate must be an integer >= 1000, got {sample_rate}")
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def encode_mp4(frames, audio, fps: float, sample_rate: int, codec: str = "libx264") -> bytes:
    """Mux uint8 RGB frames ``[T, H, W, 3]`` and mono float audio ``[S]`` in [-1, 1] into mp4 bytes.

    ``fps`` may be fractional (12.5, 30000/1001 as 29.97). ``codec`` other than libx264 is for
    tests (e.g. ``libsvtav1``: AV1, which decord cannot read).
    """
    import av

    frames = check_frames(frames)
    audio = check_audio(audio, sample_rate)
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    rate = Fraction(fps).limit_denominator(1001)
    with tempfile.TemporaryDirectory(prefix="mm-mp4-") as tmp:
        path = os.path.join(tmp, "clip.mp4")
        options = {"fflags": "+bitexact", "movflags": "+faststart"}
        with av.open(path, mode="w", format="mp4", options=options) as out:
            vs = out.add_stream(codec, rate=rate)
            vs.width, vs.height = frames.shape[2], frames.shape[1]
            vs.pix_fmt = "yuv420p"
            if codec == "libx264":
                vs.options = {"preset": "ultrafast", "crf": "20"}
            vs.codec_context.thread_count = 1  # deterministic bytes
            aus = out.add_stream("aac", rate=int(sample_rate))
            aus.layout = "mono"
            for i, img in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                frame.pts, frame.time_base = i, 1 / rate
                out.mux(vs.encode(frame))
            out.mux(vs.encode())
            step = aus.codec_context.frame_size or 1024
            for start in range(0, len(audio), step):
                frame = av.AudioFrame.from_ndarray(audio[None, start : start + step], format="flt", layout="mono")
                frame.sample_rate, frame.pts = int(sample_rate), start
                out.mux(aus.encode(frame))
            out.mux(aus.encode())
        with open(path, "rb") as f:
            return f.read()


def encode_wav(audio, sample_rate: int) -> bytes:
    """Mono float audio ``[S]`` in [-1, 1] -> 16-bit PCM wav bytes (``round(x * 32767)``, clipped)."""
    pcm = np.round(check_audio(audio, sample_rate) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return buf.getvalue()

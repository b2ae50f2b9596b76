"""mp4 fixtures for the AV metric tests, made here with PyAV (H.264 + AAC), and a toy encoder."""

import io

import numpy as np
import pytest
import torch

from data_pipelines.synthetic.av import encode_mp4
from evals.av_encoders import AVEncoderBase


def stripes(frames: int, height: int, width: int, shift: int = 0) -> np.ndarray:
    """[T, H, W, 3] uint8: green outer margins (a centre crop removes them), red left / blue right inside."""
    x = np.zeros((frames, height, width, 3), np.uint8)
    margin = (width - height) // 2
    x[:, :, :margin] = x[:, :, width - margin:] = (0, 200, 0)
    x[:, :, margin:width // 2] = (220, 20, 20)
    x[:, :, width // 2:width - margin] = (20, 20, 220)
    for t in range(frames):  # a moving bright bar: frames differ
        x[t, :, margin + (4 * t + shift) % (width - 2 * margin)] = 255
    return x


def tone(seconds: float, rate: int, hz: float) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def video_only_mp4(frames: np.ndarray, fps: int) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for img in frames:
            for packet in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="session", name="media_dir")
def media_dir_fixture(tmp_path_factory):
    """good_{0,1,2}.mp4 (96x64, differing lengths / rates / audio rates), silent.mp4 (no audio stream),
    garbage.mp4, empty.mp4."""
    root = tmp_path_factory.mktemp("av_media")
    specs = [(12, 1.5, 22050, 440.0), (8, 2.25, 16000, 660.0), (10, 0.4, 44100, 880.0)]  # fps, s, audio rate, Hz
    for i, (fps, seconds, rate, hz) in enumerate(specs):
        frames = stripes(round(fps * seconds), 64, 96, shift=3 * i)
        (root / f"good_{i}.mp4").write_bytes(encode_mp4(frames, tone(seconds, rate, hz), fps, rate))
    (root / "silent.mp4").write_bytes(video_only_mp4(stripes(8, 64, 96), 8))
    (root / "garbage.mp4").write_bytes(b"\x00\x01 definitely not a container " * 40)
    (root / "empty.mp4").write_bytes(b"")
    return root


class ToyEncoder(AVEncoderBase):
    """Deterministic stand-in: frames -> channel means and spread; audio -> level, spread, length."""

    min_audio_samples = 400

    def __init__(self, checkpoint: str = "", device: torch.device | None = None):
        self.calls = 0

    def embed_frames(self, frames):
        self.calls += 1
        return torch.cat([frames.mean(dim=(2, 3)), frames.std(dim=(2, 3)), frames[:, :, :8, :8].mean((2, 3))], dim=1)

    def embed_audio(self, wave):
        w = wave.float()
        feats = [w.abs().mean(), w.std(), w.max(), w[: len(w) // 2].abs().mean(), torch.tensor(len(w) / 16000.0)]
        return torch.stack([*feats, feats[0] * 2, -feats[1], feats[2] + 1, torch.tensor(1.0)])

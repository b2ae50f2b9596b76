"""A folder people open after sampling: per clip an mp4 and a wav, a contact sheet, an index.html.

``write_gallery(out_dir, clips, title)`` writes, for each :class:`GalleryClip`, ``<name>.mp4``
(H.264 + AAC, what a browser's ``<video>`` plays: :func:`data_pipelines.encode.encode_mp4`) and
``<name>.wav`` (16-bit PCM), then ``contact_sheet.png`` (one row per clip: up to
:data:`SHEET_FRAMES` evenly spaced frames, then a log-mel image of its audio, labelled with the
name and scores) and last ``index.html`` (title, contact sheet, a table of players, prompts,
scores and wav links; self-contained: inline CSS, no script, no external assets). Every file is
written to a temporary name and renamed, and index.html is written after everything it links,
so a crash never leaves a half-written page or a page pointing at missing files.

The log-mel image: the data pipeline's ``log_mel`` (64 mel bands, 25 ms window, 10 ms hop, scaled
to the clip's sample rate), natural-log power shown over the top 80 dB (ln 10^8) of the clip.
"""

from __future__ import annotations

import html
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_pipelines.encode import check_audio, check_frames, encode_mp4, encode_wav

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
SHEET_FRAMES = 8  # frames per contact-sheet row, evenly spaced over the clip
THUMB_HEIGHT = 96  # px: frames and the mel image are scaled to this height
LABEL_HEIGHT = 16  # px: the strip above each row holding the clip's name and scores
MEL_WIDTH = 160  # px
GAP = 4  # px between thumbnails and around the sheet
_DYNAMIC_RANGE = math.log(1e8)  # 80 dB in natural-log power
_BACKGROUND = (255, 255, 255)


@dataclass(eq=False)
class GalleryClip:
    """One sampled clip. ``frames``: uint8 ``[T, H, W, 3]`` (H, W even); ``audio``: float ``[S]`` in [-1, 1]."""

    name: str  # file stem: letters, digits, '_', '-', '.', starting with a letter or digit
    prompt: str
    frames: object  # numpy array or torch tensor; stored as a numpy array
    audio: object
    fps: float
    sample_rate: int
    scores: dict[str, float] = field(default_factory=dict)  # e.g. {"AVHScore": 0.21}

    def __post_init__(self):
        if not isinstance(self.name, str) or not SAFE_NAME.fullmatch(self.name):
            raise ValueError(f"clip name must match {SAFE_NAME.pattern} (a safe file stem), got {self.name!r}")
        if not isinstance(self.prompt, str):
            raise ValueError(f"clip {self.name}: prompt must be a str, got {type(self.prompt).__name__}")
        if not self.fps > 0:
            raise ValueError(f"clip {self.name}: fps must be > 0, got {self.fps}")
        try:
            self.frames = check_frames(self.frames)
            self.audio = check_audio(self.audio, self.sample_rate)
            self.scores = {str(k): float(v) for k, v in self.scores.items()}
        except (ValueError, TypeError) as err:
            raise ValueError(f"clip {self.name}: {err}") from None


def write_gallery(out_dir, clips: list[GalleryClip], title: str) -> Path:
    """Write the gallery of ``clips`` into ``out_dir`` (created if missing); returns the index.html path."""
    if not clips:
        raise ValueError("write_gallery needs at least one clip, got 0")
    names = [c.name for c in clips]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"clip names must be unique, got duplicates {twice}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for c in clips:
        _write_atomic(out / f"{c.name}.mp4", encode_mp4(c.frames, c.audio, c.fps, c.sample_rate))
        _write_atomic(out / f"{c.name}.wav", encode_wav(c.audio, c.sample_rate))
    png = io.BytesIO()
    contact_sheet(clips).save(png, format="PNG")
    _write_atomic(out / "contact_sheet.png", png.getvalue())
    index = out / "index.html"
    _write_atomic(index, render_index(clips, title).encode("utf-8"))
    return index


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the whole new one
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def render_index(clips: list[GalleryClip], title: str) -> str:
    """index.html: title, contact sheet, and one table row per clip; all text HTML-escaped."""
    esc = html.escape
    rows = []
    for c in clips:
        scores = "".join(f"<tr><th>{esc(k)}</th><td>{v:.4g}</td></tr>" for k, v in c.scores.items())
        seconds = len(c.frames) / c.fps
        rows.append(
            f'<tr id="clip-{c.name}">\n'
            f'<td class="name">{c.name}<br><small>{len(c.frames)} frames, {c.fps:g} fps, {seconds:.2f} s'
            f"<br>{c.sample_rate} Hz audio</small></td>\n"
            f'<td><video controls preload="metadata" src="{c.name}.mp4"></video></td>\n'
            f'<td class="prompt">{esc(c.prompt)}</td>\n'
            f'<td><table class="scores">{scores or "<tr><td>–</td></tr>"}</table></td>\n'
            f'<td><a href="{c.name}.wav" download>{c.name}.wav</a></td>\n'
            "</tr>"
        )
    body = "\n".join(rows)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
img.sheet {{ max-width: 100%; border: 1px solid #ccc; }}
table.clips {{ border-collapse: collapse; margin-top: 1em; }}
table.clips > tbody > tr > td, table.clips > thead > tr > th {{
  border-top: 1px solid #ddd; padding: 0.5em; vertical-align: top; text-align: left; }}
video {{ width: 320px; image-rendering: pixelated; background: #000; }}
td.prompt {{ max-width: 30em; white-space: pre-wrap; }}
table.scores th {{ font-weight: normal; color: #555; padding-right: 0.5em; }}
</style>
</head>
<body>
<h1>{esc(title)}</h1>
<img class="sheet" src="contact_sheet.png" alt="contact sheet: one row per clip, frames then log-mel">
<table class="clips">
<thead><tr><th>clip</th><th>video</th><th>prompt</th><th>scores</th><th>audio</th></tr></thead>
<tbody>
{body}
</tbody>
</table>
</body>
</html>
"""


def _thumb(frame: np.ndarray):
    from PIL import Image

    img = Image.fromarray(frame)
    w = max(1, round(frame.shape[1] * THUMB_HEIGHT / frame.shape[0]))
    enlarge = frame.shape[0] < THUMB_HEIGHT  # keep tiny samples' pixels crisp
    return img.resize((w, THUMB_HEIGHT), Image.Resampling.NEAREST if enlarge else Image.Resampling.LANCZOS)


def mel_image(audio: np.ndarray, sample_rate: int):
    """``[S]`` -> PIL image ``MEL_WIDTH x THUMB_HEIGHT``: log-mel power, low bands at the bottom, magma."""
    import torch
    from matplotlib import colormaps
    from PIL import Image

    from data_pipelines.decode.audio import AudioDecodeConfig, log_mel

    cfg = AudioDecodeConfig(
        sample_rate=sample_rate, n_fft=round(0.025 * sample_rate), hop_length=round(0.010 * sample_rate)
    )
    wave = torch.from_numpy(np.pad(audio, (0, max(0, cfg.n_fft - len(audio)))))  # the STFT's reflect pad needs >= n_fft
    mel = log_mel(wave, cfg).numpy()  # [64, F]
    top = mel.max()
    level = np.clip((mel - (top - _DYNAMIC_RANGE)) / _DYNAMIC_RANGE, 0.0, 1.0)
    rgb = (colormaps["magma"](level[::-1])[..., :3] * 255).astype(np.uint8)  # [64, F, 3], high bands first
    return Image.fromarray(rgb).resize((MEL_WIDTH, THUMB_HEIGHT), Image.Resampling.BILINEAR)


def contact_sheet(clips: list[GalleryClip]):
    """PIL RGB image: one row per clip (label strip, then frames, then the log-mel image at the right).

    Width ``GAP + max(row frame widths) + MEL_WIDTH + GAP`` where a row's frames are
    ``min(T, SHEET_FRAMES)`` thumbnails of ``round(W * THUMB_HEIGHT / H) + GAP`` px each; height
    ``GAP + len(clips) * (LABEL_HEIGHT + THUMB_HEIGHT + GAP)``.
    """
    from PIL import Image, ImageDraw, ImageFont

    rows = []
    for c in clips:
        picks = np.linspace(0, len(c.frames) - 1, min(len(c.frames), SHEET_FRAMES)).round().astype(int)
        rows.append([_thumb(c.frames[i]) for i in picks])
    frames_width = max(sum(t.width + GAP for t in row) for row in rows)
    row_height = LABEL_HEIGHT + THUMB_HEIGHT + GAP
    sheet = Image.new("RGB", (GAP + frames_width + MEL_WIDTH + GAP, GAP + len(clips) * row_height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=LABEL_HEIGHT - 4)
    for r, (c, row) in enumerate(zip(clips, rows, strict=True)):
        y = GAP + r * row_height
        label = "   ".join([c.name, *(f"{k} {v:.4g}" for k, v in c.scores.items())])
        draw.text((GAP, y + 1), label, fill=(0, 0, 0), font=font)
        x = GAP
        for thumb in row:
            sheet.paste(thumb, (x, y + LABEL_HEIGHT))
            x += thumb.width + GAP
        sheet.paste(mel_image(c.audio, c.sample_rate), (GAP + frames_width, y + LABEL_HEIGHT))
    return sheet

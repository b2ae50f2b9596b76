"""Image bytes -> uint8 tensor ``[3, H, W]``, with a decompression-bomb guard.

The pixel count is checked from the header before any pixel is decoded, so a tiny file that
claims 50 000 x 50 000 pixels costs nothing. Normalisation is done per batch (``collate``), where
it is one vectorised op instead of one per image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from ..errors import SampleError

RESIZE_MODES = ("center_crop", "squash", "none")
# The formats we accept; anything else (EPS, which runs Ghostscript, and friends) is refused.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")


@dataclass
class ImageDecodeConfig:
    size: int = 224  # output side; images are resized by their shorter side first
    resize: str = "center_crop"  # center_crop | squash | none (keep the decoded size: readers then batch lists)
    max_pixels: int = 64_000_000  # refuse larger images (decompression bombs)
    min_side: int = 1  # refuse images with a shorter side (image_too_small), e.g. slivers any-res cannot tile

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.min_side < 1:
            raise ValueError(f"min_side must be >= 1, got {self.min_side}")


def open_image(data: bytes, max_pixels: int, min_side: int = 1):
    """PIL image from bytes, header-checked; raises :class:`SampleError` ``bad_image``/``image_too_large``/
    ``image_too_small``."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise SampleError("bad_image", "empty member")
    try:
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as err:  # PIL's own limit, above ours by default
        raise SampleError("image_too_large", str(err)) from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise SampleError("bad_image", str(err)) from None
    w, h = img.size
    if w * h > max_pixels:
        raise SampleError("image_too_large", f"{w}x{h} > max_pixels={max_pixels}")
    if min(w, h) < min_side:
        raise SampleError("image_too_small", f"{w}x{h}: a side < min_side={min_side}")
    return img


def decode_image(data: bytes, cfg: ImageDecodeConfig):
    """Bytes -> uint8 ``[3, H, W]`` (``H = W = cfg.size`` unless ``resize == "none"``)."""
    import numpy as np
    import torch
    from PIL import Image

    img = open_image(data, cfg.max_pixels, cfg.min_side)
    try:
        if cfg.resize != "none" and img.format == "JPEG":
            img.draft("RGB", (cfg.size, cfg.size))  # DCT-domain downscale, keeps >= size
        img = img.convert("RGB")
        w, h = img.size
        s = cfg.size
        if cfg.resize == "squash":
            img = img.resize((s, s), Image.BICUBIC)
        elif cfg.resize == "center_crop":
            scale = s / min(w, h)
            nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), Image.BICUBIC)
            left, top = (nw - s) // 2, (nh - s) // 2
            img = img.crop((left, top, left + s, top + s))
        arr = np.asarray(img)  # [H, W, 3] uint8
    except (OSError, ValueError, SyntaxError) as err:  # truncated or corrupt pixel data
        raise SampleError("bad_image", str(err)) from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # [3, H, W]

"""Any-resolution images (LLaVA-NeXT / MiniMax-VL-01, DESIGN §4): grid choice, tiling, token layout.

An image of H×W pixels is resized (aspect kept, bicubic) into the best-fitting grid "pinpoint"
(a multiple of the tile side S in each direction), padded to it, cut into S×S tiles, and a S×S
thumbnail of the whole image goes first. The best pinpoint maximises the image's effective
pixels min(h'·w', H·W) after fitting, then minimises the wasted pixels of the pinpoint.

Token layout of one image (what the model splices into the prompt): the thumbnail's g×g patch
tokens, then the tiles' tokens put back on one (gh·g)×(gw·g) map, the rows and columns that only
cover padding removed ("unpad"), and a learned ``image_newline`` after every row. With a single
fixed resolution (``anyres=False``) an image is one S×S resize and g·g tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from data_pipelines.collate import NORMALIZATIONS, check_normalization


@dataclass
class ImageConfig:
    size: int = 336  # tile side S in pixels (the vision tower's input size)
    anyres: bool = True  # False: one fixed S×S resolution per image
    max_tiles: int = 4  # tile budget when grid_pinpoints is empty: every a×b grid with a·b ≤ max_tiles
    grid_pinpoints: list[list[int]] = field(default_factory=list)  # explicit [height, width] list
    normalize: str = "clip"

    def __post_init__(self):
        check_normalization(self.normalize)
        if self.size < 1 or self.max_tiles < 1:
            raise ValueError(f"image.size and image.max_tiles must be >= 1, got {self.size}, {self.max_tiles}")
        for hw in self.grid_pinpoints:
            if len(hw) != 2 or hw[0] % self.size or hw[1] % self.size or min(hw) < self.size:
                raise ValueError(f"image.grid_pinpoints entry {list(hw)} is not a [height, width] multiple of "
                                 f"image.size={self.size}")

    @property
    def pinpoints(self) -> list[tuple[int, int]]:
        if self.grid_pinpoints:
            return [(int(h), int(w)) for h, w in self.grid_pinpoints]
        s, n = self.size, self.max_tiles
        return [(a * s, b * s) for a in range(1, n + 1) for b in range(1, n + 1) if a * b <= n]


def best_pinpoint(height: int, width: int, pinpoints: list[tuple[int, int]]) -> tuple[int, int]:
    """The [height, width] pinpoint that keeps most of the image's pixels, then wastes least."""
    best, best_key = None, None
    for ph, pw in pinpoints:
        scale = min(pw / width, ph / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        key = (effective, -(ph * pw - effective))
        if best_key is None or key > best_key:
            best, best_key = (ph, pw), key
    return best


def fitted_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """Aspect-preserving size of the image inside ``target`` (one side equal to it, the other ceil'd)."""
    th, tw = target
    if tw / width < th / height:
        return min(math.ceil(height * tw / width), th), tw
    return th, min(math.ceil(width * th / height), tw)


def unpadded_rows_cols(height: int, width: int, rows: int, cols: int) -> tuple[slice, slice]:
    """Which rows/columns of a rows×cols token map cover the image (not the padding)."""
    if width / height > cols / rows:
        new_rows = int(round(height * cols / width, 7))
        pad = (rows - new_rows) // 2
        return slice(pad, rows - pad), slice(0, cols)
    new_cols = int(round(width * rows / height, 7))
    pad = (cols - new_cols) // 2
    return slice(0, rows), slice(pad, cols - pad)


def tile_grid(height: int, width: int, cfg: ImageConfig) -> tuple[int, int]:
    """(rows, cols) of tiles for an H×W image; (0, 0) with a single fixed resolution."""
    if not cfg.anyres:
        return 0, 0
    ph, pw = best_pinpoint(height, width, cfg.pinpoints)
    return ph // cfg.size, pw // cfg.size


def num_image_tokens(height: int, width: int, cfg: ImageConfig, tokens_per_side: int) -> int:
    """Placeholders one H×W image takes in the prompt (``tokens_per_side`` = g, per tile side)."""
    g = tokens_per_side
    gh, gw = tile_grid(height, width, cfg)
    if gh == 0:
        return g * g
    r, c = unpadded_rows_cols(height, width, gh * g, gw * g)
    rows, cols = r.stop - r.start, c.stop - c.start
    return g * g + rows * (cols + 1)


@dataclass
class ProcessedImages:
    pixel_values: torch.Tensor  # [sum of tiles, 3, S, S] float32, thumbnail first within each image
    image_sizes: torch.Tensor  # [N, 2] original (height, width)
    tiles: list[int]  # tiles (incl. thumbnail) per image


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    import torchvision.transforms.v2.functional as tvF

    if tuple(image.shape[-2:]) == (height, width):
        return image
    return tvF.resize(image, [height, width], interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)


def image_tiles(image: torch.Tensor, cfg: ImageConfig) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [1 + tiles, 3, S, S]: the thumbnail, then the tiles row by row."""
    import torchvision.transforms.v2.functional as tvF

    s = cfg.size
    thumb = _resize(image, s, s)[None]
    if not cfg.anyres:
        return thumb
    h, w = image.shape[-2:]
    target = best_pinpoint(h, w, cfg.pinpoints)
    nh, nw = fitted_size(h, w, target)
    fitted = _resize(image, nh, nw)
    px, rx = divmod(target[1] - nw, 2)
    py, ry = divmod(target[0] - nh, 2)
    padded = tvF.pad(fitted, [px, py, px + rx, py + ry])  # [3, th, tw], zeros around the image
    tiles = padded.unflatten(1, (target[0] // s, s)).unflatten(3, (target[1] // s, s))  # [3, gh, s, gw, s]
    tiles = tiles.permute(1, 3, 0, 2, 4).flatten(0, 1)  # [gh·gw, 3, s, s], row-major
    return torch.cat([thumb, tiles])


def process_images(images: list[torch.Tensor], cfg: ImageConfig) -> ProcessedImages:
    """uint8 [3, H, W] images of any sizes -> normalised tiles for the vision tower.

    Equal to transformers' ``LlavaNextImageProcessor`` configured with shortest_edge = crop = S and the
    same pinpoints (tiles flattened over images instead of padded to a [B, max_tiles, ...] batch)."""
    if not images:
        raise ValueError("process_images needs at least one image")
    out, sizes, counts = [], [], []
    for i, image in enumerate(images):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image {i}: expected uint8 [3, H, W], got {image.dtype} {tuple(image.shape)}")
        tiles = image_tiles(image, cfg)
        out.append(tiles)
        sizes.append(tuple(image.shape[-2:]))
        counts.append(tiles.shape[0])
    pixels = torch.cat(out).float().div_(255.0)
    stats = NORMALIZATIONS[cfg.normalize]
    if stats is not None:
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in stats)
        pixels = (pixels - mean) / std
    return ProcessedImages(pixels, torch.tensor(sizes, dtype=torch.long), counts)

"""Batch assembly for fixed-size batches: image normalisation and padded token lists."""

from __future__ import annotations

# (mean, std) per channel, for images scaled to [0, 1].
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": None,  # float in [0, 1]
}


def check_normalization(name: str) -> None:
    if name not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {sorted(NORMALIZATIONS)}, got {name!r}")


def _normalize_(x, normalize: str):
    """uint8 ``[..., 3, H, W]`` -> float32 in [0, 1], then (x - mean) / std per channel."""
    import torch

    x = x.float().div_(255.0)
    stats = NORMALIZATIONS[normalize]
    if stats is not None:
        mean = torch.tensor(stats[0]).view(3, 1, 1)
        std = torch.tensor(stats[1]).view(3, 1, 1)
        x.sub_(mean).div_(std)
    return x


def stack_images(images: list, normalize: str):
    """uint8 ``[3, H, W]`` list -> float32 ``[B, 3, H, W]``, normalised per ``NORMALIZATIONS``."""
    import torch

    return _normalize_(torch.stack(images), normalize)


def collate_images(images: list, normalize: str, own_sizes: bool):
    """A reader's batch of uint8 ``[3, H, W]`` images: stacked (:func:`stack_images`), or with
    ``own_sizes`` (images decoded at their own sizes, ``resize: none``) a list of float32
    ``[3, H, W]``, each normalised as the stacked batch would be."""
    if own_sizes:
        return [_normalize_(image, normalize) for image in images]
    return stack_images(images, normalize)


def tokenize_padded(tokenizer, texts: list[str], max_len: int):
    """Texts -> (ids ``[B, L]``, lengths ``[B]``), each cut to ``max_len`` tokens, L <= max_len.

    Padding uses the tokenizer's ``pad_id`` if it has one, else its ``eos_id`` (lengths mark it).
    """
    import torch

    pad_id = getattr(tokenizer, "pad_id", None)
    pad_id = tokenizer.eos_id if pad_id is None else pad_id
    lists = [tokenizer.encode(t)[:max_len] for t in texts]
    width = max(1, max(len(t) for t in lists))
    ids = torch.full((len(lists), width), pad_id, dtype=torch.long)
    for i, t in enumerate(lists):
        ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    return ids, torch.tensor([len(t) for t in lists], dtype=torch.long)

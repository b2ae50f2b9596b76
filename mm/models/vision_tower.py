"""Vision tower of the VLM: a ViT built by name through timm or open_clip, returning the patch
tokens of one layer with the CLS token dropped (DESIGN §4).

``layer`` counts as Hugging Face's ``hidden_states`` do: ``k ≥ 1`` is the output of block ``k - 1``,
``-1`` the last block, ``-2`` the one before (LLaVA's choice). The tokens are taken before the
final LayerNorm (as LLaVA-NeXT / MiniMax-VL-01 take them); blocks after the chosen layer are not
run. Weights come from a local file only (safetensors, or a torch file read with
``weights_only=True``); nothing is ever downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

LIBRARIES = ("timm", "open_clip")


@dataclass
class VisionConfig:
    library: str = "timm"  # timm | open_clip
    # timm: a model name such as vit_large_patch14_clip_336 (CLIP ViT-L/14 at 336 px, the full size);
    # open_clip: an architecture name such as ViT-L-14-336
    name: str = "vit_large_patch14_clip_quickgelu_336"
    checkpoint: str | None = None  # local weights file; None: random initialisation
    layer: int = -1  # which layer's patch tokens (Hugging Face hidden_states index; -1 last, -2 LLaVA's)
    options: dict[str, Any] = field(default_factory=dict)  # extra create_model arguments (tiny ViTs)

    def __post_init__(self):
        if self.library not in LIBRARIES:
            raise ValueError(f"vision.library must be one of {LIBRARIES}, got {self.library!r}")
        if self.layer == 0:
            raise ValueError("vision.layer=0 is the patch embedding, not a transformer layer; use -1, -2 or k >= 1")
        if self.checkpoint is not None and not str(self.checkpoint).strip():
            raise ValueError("vision.checkpoint must be a file path or null")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file, without ever unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vision.checkpoint: no such file {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many classes
        raise ValueError(f"{path}: not a weights file torch.load(weights_only=True) can read: {err}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


class VisionTower(nn.Module):
    """``forward(pixels [N, 3, S, S]) -> [N, P, width]``: patch tokens of ``cfg.layer``, no CLS."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.library == "timm":
            self.encoder = _build_timm(cfg)
            self.image_size = int(self.encoder.patch_embed.img_size[0])
            self.patch_size = int(self.encoder.patch_embed.patch_size[0])
            self.width = int(self.encoder.embed_dim)
            depth = len(self.encoder.blocks)
        else:
            self.encoder = _build_open_clip(cfg)
            self.image_size = int(self.encoder.image_size[0])
            self.patch_size = int(self.encoder.patch_size[0])
            self.width = int(self.encoder.transformer.width)
            depth = len(self.encoder.transformer.resblocks)
        block = cfg.layer - 1 if cfg.layer > 0 else depth + cfg.layer
        if not 0 <= block < depth:
            raise ValueError(f"vision.layer={cfg.layer} is outside a {depth}-layer tower")
        self.block = block
        self.grid = self.image_size // self.patch_size  # patches per side of one tile

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"vision tower takes {self.image_size}x{self.image_size} tiles, got {tuple(pixels.shape)}")
        if self.cfg.library == "timm":
            out = self.encoder.forward_intermediates(pixels, indices=[self.block], stop_early=True,
                                                     output_fmt="NLC", intermediates_only=True)
            return out[0]  # prefix (CLS) tokens are dropped by timm
        out = self.encoder.forward_intermediates(pixels, indices=[self.block], stop_early=True,
                                                 output_fmt="NLC", intermediates_only=True)
        return out["image_intermediates"][0]


def _build_timm(cfg: VisionConfig) -> nn.Module:
    import timm

    options = {"num_classes": 0, **cfg.options}
    try:
        model = timm.create_model(cfg.name, pretrained=False, **options)
    except RuntimeError as err:  # timm's "Unknown model"
        raise ValueError(f"vision.name={cfg.name!r}: {err}") from None
    if cfg.checkpoint:
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = checkpoint_filter_fn(read_state_dict(cfg.checkpoint), model)  # OpenAI/open_clip layouts too
        _load_strict(model, state, cfg.checkpoint, optional_prefixes=("head.",))
    return model


def _build_open_clip(cfg: VisionConfig) -> nn.Module:
    import open_clip

    try:
        model = open_clip.create_model(cfg.name, pretrained=None, **cfg.options)
    except RuntimeError as err:
        raise ValueError(f"vision.name={cfg.name!r}: {err}") from None
    if cfg.checkpoint:
        state = read_state_dict(cfg.checkpoint)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
        _load_strict(model.visual, visual or state, cfg.checkpoint, optional_prefixes=())
    return model.visual


def _load_strict(model: nn.Module, state: dict, path, optional_prefixes: tuple[str, ...]) -> None:
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(optional_prefixes)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(optional_prefixes)]
    if missing or unexpected:
        raise ValueError(f"{path}: does not fit the vision tower: missing {missing[:6]}, unexpected {unexpected[:6]}")

"""Load the vision and audio parts of the published ImageBind checkpoint from a local file.

``imagebind_huge.pth`` is a plain state dict of all six modalities (1311 keys); the keys of the
vision and audio preprocessors, trunks, heads and postprocessors are taken as they are and every
shape is checked; the text, depth, thermal and imu keys are ignored. Read with
``torch.load(weights_only=True)`` (memory-mapped: the file is 4.5 GB), or a ``.safetensors``
conversion of it. Nothing is downloaded.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from mm.models.imagebind.model import ImageBindConfig, ImageBindVisionAudio

_PARTS = ("modality_preprocessors", "modality_trunks", "modality_heads", "modality_postprocessors")


class ImageBindCheckpointError(ValueError):
    """A checkpoint that does not fit the towers; the message names the file and the keys."""


def _is_ours(key: str) -> bool:
    part, _, rest = key.partition(".")
    return part in _PARTS and rest.split(".", 1)[0] in ("vision", "audio")


def _torch_load(path: Path):
    try:  # memory-mapped: the tensors are read when used
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # a legacy (pre-zip) file


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ImageBindCheckpointError(f"{path}: no such file (want the ImageBind checkpoint, e.g. imagebind_huge.pth)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = _torch_load(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ImageBindCheckpointError(f"{path}: cannot be read safely (weights_only=True): {first}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ImageBindCheckpointError(f"{path}: not a state dict of tensors")
    return state


def load_imagebind(path: str | Path, cfg: ImageBindConfig | None = None) -> ImageBindVisionAudio:
    """The towers of ``cfg`` (default: ImageBind-huge) with the checkpoint's vision and audio weights.

    Raises :class:`ImageBindCheckpointError` naming every missing key and every shape mismatch."""
    with torch.device("meta"):
        model = ImageBindVisionAudio(cfg or ImageBindConfig())
    state = {k: v for k, v in read_state_dict(path).items() if _is_ours(k)}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
             for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        lines = [f"{path}: does not fit the ImageBind vision/audio towers"]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
            if items:
                shown = "; ".join(items[:10]) + (f" ... ({len(items)} in all)" if len(items) > 10 else "")
                lines.append(f"  {label}: {shown}")
        raise ImageBindCheckpointError("\n".join(lines))
    model.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    return model.eval()

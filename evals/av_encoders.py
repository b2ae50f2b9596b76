"""Audio-visual encoders for AVHScore / JavisScore: one interface, a registry, two built-ins.

An encoder is one class::

    @register_encoder("mine")
    class Mine(AVEncoderBase):
        min_audio_samples = 400                     # shorter tracks are reported as too short
        def __init__(self, checkpoint: str, device: torch.device): ...
        def embed_frames(self, frames):  ...        # [N, 3, 224, 224] CLIP-normalised -> [N, D]
        def embed_audio(self, wave): ...            # [S] mono 16 kHz -> [D]

``embed_audio_batch`` (a list of waves -> [B, D]) defaults to one ``embed_audio`` call per wave;
override it when the encoder can batch. ``mm avhscore --encoder mine`` then finds it when the
module that registers it is imported, or without registration as ``--encoder package.module:Class``.
Built-in: ``imagebind`` (ImageBind-huge from a local checkpoint file) and ``mm`` (the suite's own
``av_encoder`` recipe, from a run or checkpoint directory).
"""

from __future__ import annotations

import abc
import importlib
from pathlib import Path

import torch

from mm.models.imagebind.audio import MIN_SAMPLES as IMAGEBIND_MIN_SAMPLES


class EncoderError(ValueError):
    """An encoder that cannot be built (unknown name, unusable checkpoint); the message says which."""


class AVEncoderBase(abc.ABC):
    min_audio_samples: int = 1

    @abc.abstractmethod
    def __init__(self, checkpoint: str, device: torch.device): ...

    @abc.abstractmethod
    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """[N, 3, 224, 224] CLIP-normalised float -> [N, D]."""

    @abc.abstractmethod
    def embed_audio(self, wave: torch.Tensor) -> torch.Tensor:
        """[S] mono float at 16 kHz -> [D]."""

    def embed_audio_batch(self, waves: list[torch.Tensor]) -> torch.Tensor:
        """Waves of any lengths -> [B, D]."""
        return torch.stack([self.embed_audio(w) for w in waves])


ENCODERS: dict[str, type[AVEncoderBase]] = {}


def register_encoder(name: str):
    def add(cls: type[AVEncoderBase]) -> type[AVEncoderBase]:
        ENCODERS[name] = cls
        return cls

    return add


def encoder_class(name: str) -> type[AVEncoderBase]:
    """A registered name, or ``module:Class`` of a class that implements :class:`AVEncoderBase`."""
    if name in ENCODERS:
        return ENCODERS[name]
    module, sep, attr = name.partition(":")
    if not sep:
        raise EncoderError(f"unknown encoder {name!r}; known: {', '.join(sorted(ENCODERS))}, or module:Class")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise EncoderError(f"encoder {name!r}: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, AVEncoderBase)):
        raise EncoderError(f"encoder {name!r} is not a subclass of evals.av_encoders.AVEncoderBase")
    return cls


def build_encoder(name: str, checkpoint: str, device: torch.device) -> AVEncoderBase:
    return encoder_class(name)(checkpoint, device)


class TorchEncoder(AVEncoderBase):
    """An encoder around one ``nn.Module`` (``self.model``) on ``self.device``."""

    @classmethod
    def from_model(cls, model: torch.nn.Module, device: torch.device):
        """Wrap a model already built, without a checkpoint (tests: tiny widths; benchmarks: random weights)."""
        self = cls.__new__(cls)
        self._use(model, device)
        return self

    def _use(self, model: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self.model = model.to(device).eval()


@register_encoder("imagebind")
class ImageBindEncoder(TorchEncoder):
    """ImageBind-huge vision and audio towers; ``checkpoint`` is the published imagebind_huge.pth."""

    min_audio_samples = IMAGEBIND_MIN_SAMPLES  # one 25 ms fbank frame

    def __init__(self, checkpoint: str, device: torch.device):
        from mm.models.imagebind import ImageBindCheckpointError, load_imagebind

        try:
            model = load_imagebind(checkpoint)
        except ImageBindCheckpointError as err:
            raise EncoderError(str(err)) from None
        self._use(model, device)

    @torch.no_grad()
    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model.embed_images(frames.to(self.device)).float()

    def embed_audio(self, wave: torch.Tensor) -> torch.Tensor:
        return self.embed_audio_batch([wave])[0]

    @torch.no_grad()
    def embed_audio_batch(self, waves: list[torch.Tensor]) -> torch.Tensor:
        from mm.models.imagebind.audio import audio_clips

        clips = torch.stack([audio_clips(w.float().cpu()) for w in waves])  # [B, 3, 1, 128, 204]
        return self.model.embed_audio_clips(clips.to(self.device)).float()


def _checkpoint_dir(path: Path) -> Path:
    """A checkpoint directory, or the latest complete one of a run directory."""
    from mm.train.checkpoint import CONFIG, CheckpointManager, is_complete

    if (path / CONFIG).is_file() and is_complete(path):
        return path
    latest = CheckpointManager(path / "checkpoints").latest() if (path / "checkpoints").is_dir() else None
    if latest is None:
        raise EncoderError(f"{path}: neither a complete checkpoint nor a run with one under checkpoints/")
    return latest.path


@register_encoder("mm")
class MMEncoder(TorchEncoder):
    """The suite's ``av_encoder`` recipe; ``checkpoint`` is a run or a checkpoint directory."""

    min_audio_samples = 400  # one 25 ms mel frame

    def __init__(self, checkpoint: str, device: torch.device):
        from mm.config import ConfigError
        from mm.models.av_encoder import AVEncoder
        from mm.train.checkpoint import CONFIG, CheckpointError, load_weights
        from mm.train.recipe import load_recipe_config

        path = _checkpoint_dir(Path(checkpoint))
        try:
            cfg = load_recipe_config(path / CONFIG)
            if cfg.recipe != "av_encoder":
                raise EncoderError(f"{path / CONFIG}: recipe {cfg.recipe!r} is not an AV encoder (want 'av_encoder')")
            model = AVEncoder(cfg.model)
            load_weights(path, model)
        except (ConfigError, CheckpointError) as err:
            raise EncoderError(str(err)) from None
        self._use(model, device)

    @torch.no_grad()
    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model.embed_frames(frames.to(self.device))

    @torch.no_grad()
    def embed_audio(self, wave: torch.Tensor) -> torch.Tensor:
        return self.model.embed_audio(wave.float().to(self.device)[None])[0]

    @torch.no_grad()
    def embed_audio_batch(self, waves: list[torch.Tensor]) -> torch.Tensor:
        if len({w.numel() for w in waves}) == 1:  # equal lengths (the JavisScore windows): one call
            return self.model.embed_audio(torch.stack(waves).float().to(self.device))
        return super().embed_audio_batch(waves)

"""Recipe `av_encoder`: the audio-visual contrastive encoder on audible-video shards (``mm shards synth av``).

A batch is B clips of T frames with the audio of the same seconds; the loss is the symmetric InfoNCE
of :mod:`mm.models.av_encoder`. Evaluation (held-out shards) reports the AVHScore of each clip with
its own audio and with the next clip's audio (what the metric must tell apart), and the in-batch
audio-to-video retrieval accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from data_pipelines.readers.video import VideoReaderConfig, build_video_reader, heldout_video_batches
from mm.models.av_encoder import AVEncoder, AVEncoderConfig, contrastive_loss
from mm.train.config import RecipeConfig
from mm.train.recipe import Recipe, StepOutput, nothing_to_evaluate


@dataclass
class AVEvalConfig:
    shards: list[str] = field(default_factory=list)  # held-out av shards; empty: no evaluation
    batches: int = 4  # held-out batches (of data.stream.batch_size clips)

    def __post_init__(self):
        if self.batches < 1:
            raise ValueError(f"eval.batches must be >= 1, got {self.batches}")


@dataclass
class AVEncoderRecipeConfig(RecipeConfig):
    recipe: str = "av_encoder"
    model: AVEncoderConfig = field(default_factory=AVEncoderConfig)
    data: VideoReaderConfig = field(default_factory=VideoReaderConfig)
    eval: AVEvalConfig = field(default_factory=AVEvalConfig)

    def __post_init__(self):
        if not self.data.with_audio or self.data.audio.sample_rate != 16000:
            raise ValueError("the av_encoder recipe needs data.with_audio=true and data.audio.sample_rate=16000")


def clip_frames(video: torch.Tensor) -> torch.Tensor:
    """uint8 [B, T, 3, H, W] -> float, CLIP-normalised (as the metric's frames)."""
    from evals.av_media import normalize_frames

    return normalize_frames(video.flatten(0, 1)).view(video.shape)


class AVEncoderRecipe(Recipe):
    config_cls = AVEncoderRecipeConfig
    unit = "clips"
    shard_keys = ("data.stream.shards", "eval.shards")

    def build_model(self) -> nn.Module:
        return AVEncoder(self.cfg.model)

    def build_train_data(self):
        return build_video_reader(self.cfg.data)

    def device_batch(self, batch: dict) -> dict:
        return {"video": batch["video"], "audio": batch["audio"]}

    def loss(self, model: nn.Module, batch: dict) -> StepOutput:
        frames, audio = model(clip_frames(batch["video"]), batch["audio"])
        loss, metrics = contrastive_loss(frames, audio, model.log_scale)
        return StepOutput(loss, batch["video"].shape[0], metrics)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        if not self.cfg.eval.shards:
            return {}
        own, other, correct, n = 0.0, 0.0, 0.0, 0
        for batch in heldout_video_batches(self.cfg.data, self.cfg.eval.shards, self.cfg.eval.batches):
            frames, audio = model(clip_frames(batch["video"].to(device)), batch["audio"].to(device))
            # AVHScore per clip: mean over frames of cos(frame, audio); with its own audio and the next clip's
            own += torch.einsum("btd,bd->bt", frames, audio).mean(1).sum().item()
            other += torch.einsum("btd,bd->bt", frames, audio.roll(1, dims=0)).mean(1).sum().item()
            correct += contrastive_loss(frames, audio, model.log_scale)[1]["accuracy"].item() * len(audio)
            n += len(audio)
        if n == 0:
            return nothing_to_evaluate(self.cfg.eval.shards)
        return {"avhscore_own": own / n, "avhscore_other": other / n, "retrieval_accuracy": correct / n}

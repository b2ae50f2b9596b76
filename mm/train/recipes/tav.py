"""Recipe `tav`: TAVDiffusion on audible-video shards (``mm shards synth av``, or shards of real clips).

A batch is B clips of T frames with the audio of the same seconds and their captions; the loss is
:meth:`mm.models.tavdiffusion.model.TAVDiffusion.training_loss`. Evaluation (every
``train.eval_every`` steps and at the end, on the EMA weights when ``train.ema`` is on):
- held-out shards: the denoising MSE of each stream at fixed timesteps and fixed noise (comparable
  from step to step), and the same with the streams uncoupled — ``coupling_gain`` is how much the
  exchange lowers the audio and video error;
- ``eval.preview_prompts``: clips sampled jointly and written as a gallery (mp4 with sound, wav,
  contact sheet, index.html) into ``<run>/previews/step_<N>/``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from data_pipelines.readers.video import VideoReaderConfig, build_video_reader, heldout_video_batches
from mm.models.tavdiffusion.model import TAVDiffusion, TAVDiffusionConfig
from mm.models.tavdiffusion.sampling import SamplingConfig
from mm.train.config import RecipeConfig
from mm.train.recipe import Recipe, StepOutput, nothing_to_evaluate

log = logging.getLogger("mm.train")


@dataclass
class TAVEvalConfig:
    shards: list[str] = field(default_factory=list)  # held-out av shards; empty: no held-out loss
    batches: int = 2  # held-out batches (of data.stream.batch_size clips)
    timesteps: list[int] = field(default_factory=lambda: [100, 400, 700, 950])  # where the held-out MSE is taken
    preview_prompts: list[str] = field(default_factory=list)  # sampled into <run>/previews/step_<N>/
    preview: SamplingConfig = field(default_factory=lambda: SamplingConfig(steps=20, guidance=4.0))

    def __post_init__(self):
        if self.batches < 1:
            raise ValueError(f"eval.batches must be >= 1, got {self.batches}")
        if not self.timesteps:
            raise ValueError("eval.timesteps must name at least one timestep")


@dataclass
class TAVRecipeConfig(RecipeConfig):
    recipe: str = "tav"
    model: TAVDiffusionConfig = field(default_factory=TAVDiffusionConfig)
    data: VideoReaderConfig = field(default_factory=VideoReaderConfig)
    eval: TAVEvalConfig = field(default_factory=TAVEvalConfig)

    def __post_init__(self):
        if not self.data.with_audio:
            raise ValueError("the tav recipe needs data.with_audio=true")
        if self.data.audio.sample_rate != self.model.audio.sample_rate:
            raise ValueError(f"data.audio.sample_rate ({self.data.audio.sample_rate}) must equal "
                             f"model.audio.sample_rate ({self.model.audio.sample_rate})")
        if max(self.eval.timesteps) >= self.model.schedule.train_timesteps or min(self.eval.timesteps) < 0:
            raise ValueError(f"eval.timesteps {self.eval.timesteps} must lie in [0, "
                             f"{self.model.schedule.train_timesteps})")


class TAVRecipe(Recipe):
    config_cls = TAVRecipeConfig
    unit = "clips"
    shard_keys = ("data.stream.shards", "eval.shards")

    def __init__(self, cfg: TAVRecipeConfig):
        super().__init__(cfg)
        self.steps_done = 0

    def build_model(self) -> nn.Module:
        return TAVDiffusion(self.cfg.model)

    def build_train_data(self):
        return build_video_reader(self.cfg.data)

    def device_batch(self, batch: dict) -> dict:
        return {"video": batch["video"], "audio": batch["audio"], "text": batch["text"]}

    def start_step(self, model: nn.Module, step: int) -> None:
        self.steps_done = step + 1  # what evaluation after this step reports as the step

    def loss(self, model: nn.Module, batch: dict) -> StepOutput:
        loss, metrics = model.training_loss(batch["video"], batch["audio"], batch["text"])
        return StepOutput(loss, batch["video"].shape[0], metrics)

    def heldout_mse(self, model: TAVDiffusion, device: torch.device) -> dict[str, float]:
        """Denoising MSE per stream at ``eval.timesteps`` with noise seeded per batch, coupled and not."""
        sums: dict[str, float] = {}
        n = 0
        for i, batch in enumerate(heldout_video_batches(self.cfg.data, self.cfg.eval.shards, self.cfg.eval.batches)):
            x_v, x_a = model.encode_media(batch["video"].to(device), batch["audio"].to(device))
            text, mask = model.encode_text(batch["text"], device)
            g = torch.Generator().manual_seed(1000 + i)
            for step in self.cfg.eval.timesteps:
                t = torch.full((len(x_v),), step, device=device, dtype=torch.long)
                n_v = torch.randn(x_v.shape, generator=g).to(device)
                n_a = torch.randn(x_a.shape, generator=g).to(device)
                noisy_v, noisy_a = model.noise.add_noise(x_v, n_v, t), model.noise.add_noise(x_a, n_a, t)
                for couple in (True, False):
                    out = model.denoise(noisy_v, noisy_a, t, text, mask, couple=couple)
                    tag = "" if couple else "_uncoupled"
                    for stream, pred, x0, eps in (("video", out.video, x_v, n_v), ("audio", out.audio, x_a, n_a)):
                        err = (pred.float() - model.target(x0, eps, t)).pow(2).mean(tuple(range(1, x0.dim())))
                        sums[f"{stream}_mse{tag}"] = sums.get(f"{stream}_mse{tag}", 0.0) + err.sum().item()
            n += len(x_v) * len(self.cfg.eval.timesteps)
        if n == 0:
            return {}
        m = {k: v / n for k, v in sums.items()}
        m["loss"] = m["video_mse"] + m["audio_mse"]
        m["coupling_gain"] = m["video_mse_uncoupled"] + m["audio_mse_uncoupled"] - m["loss"]
        return m

    def write_previews(self, model: TAVDiffusion, device: torch.device) -> Path:
        from evals.gallery import GalleryClip, write_gallery
        from mm.models.tavdiffusion.sampling import sample_clips

        video = self.cfg.data.video
        clips = sample_clips(model, list(self.cfg.eval.preview_prompts), video.num_frames, video.fps,
                             self.cfg.eval.preview, device)
        out = Path(self.cfg.run.dir) / "previews" / f"step_{self.steps_done:08d}"
        gallery = [GalleryClip(name=f"clip{i:02d}", prompt=p, frames=clips.frames[i].permute(0, 2, 3, 1),
                               audio=clips.audio[i], fps=clips.fps, sample_rate=clips.sample_rate, scores={})
                   for i, p in enumerate(self.cfg.eval.preview_prompts)]
        return write_gallery(out, gallery, title=f"{Path(self.cfg.run.dir).name}: step {self.steps_done}")

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        metrics = {}
        if self.cfg.eval.shards:
            metrics = self.heldout_mse(model, device) or nothing_to_evaluate(self.cfg.eval.shards)
        if self.cfg.eval.preview_prompts:
            path = self.write_previews(model, device)
            log.info("previews: %s", path)
        return metrics

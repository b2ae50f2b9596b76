"""Sampling both streams of TAVDiffusion with a diffusers scheduler and classifier-free guidance.

``joint`` (ours): video and audio are denoised together at one shared timestep; at every step the
denoiser sees both current samples and they exchange through the coupling modules. Guidance is
joint: one conditional and one unconditional pass over the pair,
    ê = ê(x_v, x_a, ∅) + g · (ê(x_v, x_a, c) − ê(x_v, x_a, ∅))   for each stream.
``independent`` (the published inference, the baseline): each stream is denoised against fresh
Gaussian noise in place of the other stream, so neither ever sees what the other is becoming.

Seeds: clip i of a call draws its starting noise (and the partner noise of ``independent``) from its
own generator seeded with ``seed + i``, so a clip repeats exactly whatever the batch around it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from tqdm import tqdm

SCHEDULERS = ("ddim", "dpm")
MODES = ("joint", "independent")


@dataclass
class SamplingConfig:
    steps: int = 40
    guidance: float = 8.0  # 1: no guidance (one pass per step)
    scheduler: str = "ddim"  # ddim | dpm (DPM-Solver++ multistep)
    mode: str = "joint"  # joint | independent
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.guidance < 1:
            raise ValueError(f"guidance must be >= 1, got {self.guidance}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")


def build_scheduler(name: str, schedule_kwargs: dict):
    """A diffusers sampling scheduler over the model's training noise schedule (trailing timesteps: the
    first step starts from pure noise at t = T − 1)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "ddim":
        return DDIMScheduler(**schedule_kwargs, timestep_spacing="trailing", clip_sample=False,
                             set_alpha_to_one=False)
    return DPMSolverMultistepScheduler(**schedule_kwargs, timestep_spacing="trailing", algorithm_type="dpmsolver++")


class _Noise:
    """Per-clip generators: clip i draws from ``seed + i`` on the CPU (the same numbers on every device)."""

    def __init__(self, seed: int, count: int):
        self.generators = [torch.Generator().manual_seed(seed + i) for i in range(count)]

    def draw(self, shape: tuple, device: torch.device) -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g) for g in self.generators]).to(device)


@torch.no_grad()
def sample_latents(model, prompts: list[str], video_shape: tuple, audio_shape: tuple, cfg: SamplingConfig,
                   device: torch.device, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents [N, *video_shape], [N, *audio_shape] for ``prompts`` (N of them) with ``model`` (a
    :class:`~mm.models.tavdiffusion.model.TAVDiffusion` in eval mode)."""
    n = len(prompts)
    guided = cfg.guidance > 1
    text, mask = model.encode_text(list(prompts) + ([""] * n if guided else []), device)
    noise = _Noise(cfg.seed, n)
    x_v, x_a = noise.draw(video_shape, device), noise.draw(audio_shape, device)
    schedulers = {}
    for stream in ("video", "audio"):
        schedulers[stream] = build_scheduler(cfg.scheduler, model.cfg.schedule.diffusers_kwargs())
        schedulers[stream].set_timesteps(cfg.steps, device=device)
    timesteps = schedulers["video"].timesteps

    def predict(v, a):
        """Guided predictions for (v, a): one batched pass over [conditional; unconditional]."""
        pair = 2 if guided else 1
        t = timestep.reshape(1).expand(n * pair)
        out = model.denoise(v.repeat(pair, *[1] * (v.dim() - 1)), a.repeat(pair, *[1] * (a.dim() - 1)), t,
                            text, mask)
        pv, pa = out.video.float(), out.audio.float()
        if not guided:
            return pv, pa
        (cv, uv), (ca, ua) = pv.chunk(2), pa.chunk(2)
        return uv + cfg.guidance * (cv - uv), ua + cfg.guidance * (ca - ua)

    for timestep in tqdm(timesteps, desc="denoise", disable=not progress, leave=False):
        if cfg.mode == "joint":
            pv, pa = predict(x_v, x_a)
        else:
            pv, _ = predict(x_v, noise.draw(audio_shape, device))
            _, pa = predict(noise.draw(video_shape, device), x_a)
        x_v = schedulers["video"].step(pv, timestep, x_v).prev_sample
        x_a = schedulers["audio"].step(pa, timestep, x_a).prev_sample
    return x_v, x_a


@dataclass
class Samples:
    frames: torch.Tensor  # uint8 [N, T, 3, H, W]
    audio: torch.Tensor  # float [N, S] in [-1, 1] at ``sample_rate``
    fps: float
    sample_rate: int


@torch.no_grad()
def sample_clips(model, prompts: list[str], num_frames: int, fps: float, cfg: SamplingConfig,
                 device: torch.device, batch_size: int = 8, progress: bool = False) -> Samples:
    """Decoded clips of ``num_frames`` frames at ``fps`` (and the sound of those seconds) for ``prompts``,
    ``batch_size`` clips per denoising batch."""
    sample_rate = model.audio_codec.sample_rate
    num_samples = round(num_frames / fps * sample_rate)
    video_shape, audio_shape = model.latent_shapes(num_frames, num_samples)
    frames, audio = [], []
    bar = tqdm(total=len(prompts), desc="clips", unit="clip", disable=not progress)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        part = copy.copy(cfg)
        part.seed = cfg.seed + start  # clip i always uses seed + i
        x_v, x_a = sample_latents(model, chunk, video_shape, audio_shape, part, device, progress=progress)
        frames.append(model.video_codec.decode(x_v).cpu())
        audio.append(model.audio_codec.decode(x_a, num_samples=num_samples).float().cpu())
        bar.update(len(chunk))
    bar.close()
    return Samples(torch.cat(frames), torch.cat(audio), fps, sample_rate)

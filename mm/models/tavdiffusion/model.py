"""TAVDiffusion: text → (video latents, audio latents), denoised together (DESIGN §6).

    frames ─ VideoCodec.encode ─ x_v ┐                 ┌→ v̂_v  (or ε̂_v)
    sound  ─ AudioCodec.encode ─ x_a ├→ Denoiser(t) ───┤→ v̂_a
    text   ─ TextEncoder ──── tokens ┘   (streams       └→ pooled features f_v, f_a
                                         exchange at the configured depths)

Training (one timestep t per clip, shared by both streams, so the exchange always sees its partner
at the same noise level — the condition joint sampling runs under):
    x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε,  target v = √ᾱ_t ε − √(1−ᾱ_t) x_0  (or ε),
    L = MSE_v + MSE_a + λ · InfoNCE(f_v, f_a),
InfoNCE the symmetric cross-entropy of the cosine-similarity matrix of the clips in the batch over
temperature τ (matching clips on the diagonal). Captions are replaced by "" with probability
``text_dropout`` so the same network also predicts unconditionally (classifier-free guidance).
The noise schedule is diffusers' (``DDPMScheduler``: ``add_noise``, ``get_velocity``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .audio_codec import AudioCodecConfig, build_audio_codec
from .denoiser import DenoiserOutput
from .frozen import Frozen
from .lightnet_denoiser import LightNetDenoiserConfig, build_lightnet_denoiser
from .text_encoders import TextEncoderConfig, build_text_encoder
from .unet import UNetDenoiserConfig, build_unet_denoiser
from .video_codec import VideoCodecConfig, build_video_codec

DENOISERS = ("unet", "lightnet")
PREDICTIONS = ("v_prediction", "epsilon")


@dataclass
class NoiseScheduleConfig:
    """The forward process, in diffusers' terms (the published model: scaled-linear 0.00085 → 0.012)."""

    prediction: str = "v_prediction"  # v_prediction | epsilon
    train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"  # linear | scaled_linear | squaredcos_cap_v2
    beta_start: float = 0.00085
    beta_end: float = 0.012

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"model.schedule.prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        schedules = ("linear", "scaled_linear", "squaredcos_cap_v2")
        if self.beta_schedule not in schedules:
            raise ValueError(f"model.schedule.beta_schedule must be one of {schedules}, got {self.beta_schedule!r}")
        if self.train_timesteps < 2:
            raise ValueError(f"model.schedule.train_timesteps must be >= 2, got {self.train_timesteps}")

    def diffusers_kwargs(self) -> dict:
        return {"num_train_timesteps": self.train_timesteps, "beta_schedule": self.beta_schedule,
                "beta_start": self.beta_start, "beta_end": self.beta_end, "prediction_type": self.prediction}


@dataclass
class TAVDiffusionConfig:
    video: VideoCodecConfig = field(default_factory=VideoCodecConfig)
    audio: AudioCodecConfig = field(default_factory=AudioCodecConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    denoiser: str = "unet"  # unet | lightnet: which section below builds it
    unet: UNetDenoiserConfig = field(default_factory=UNetDenoiserConfig)
    lightnet: LightNetDenoiserConfig = field(default_factory=LightNetDenoiserConfig)
    schedule: NoiseScheduleConfig = field(default_factory=NoiseScheduleConfig)
    contrastive_weight: float = 0.1  # λ of the InfoNCE term; 0: off
    contrastive_temperature: float = 0.1  # τ
    text_dropout: float = 0.1  # probability of training a clip with the empty caption

    def __post_init__(self):
        if self.denoiser not in DENOISERS:
            raise ValueError(f"model.denoiser must be one of {DENOISERS}, got {self.denoiser!r}")
        if self.contrastive_weight < 0 or self.contrastive_temperature <= 0:
            raise ValueError(f"need model.contrastive_weight >= 0 and model.contrastive_temperature > 0, got "
                             f"{self.contrastive_weight}, {self.contrastive_temperature}")
        if not 0 <= self.text_dropout <= 1:
            raise ValueError(f"model.text_dropout must be in [0, 1], got {self.text_dropout}")


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE of matching rows of ``a``, ``b`` [B, D]; returns (loss, retrieval accuracy b→a)."""
    logits = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T / temperature
    labels = torch.arange(len(a), device=a.device)
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    return loss, (logits.T.argmax(-1) == labels).float().mean()


def _drop_frozen(module: TAVDiffusion, state_dict: dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state_dict if any(k.startswith(f"{prefix}{name}.") for name in module.frozen)]:
        del state_dict[key]


def _frozen_not_missing(module: TAVDiffusion, incompatible) -> None:
    """A strict load of a checkpoint without the frozen parts is complete (they come from their own files)."""
    frozen = [k for k in incompatible.missing_keys if k.split(".", 1)[0] in module.frozen]
    for key in frozen:
        incompatible.missing_keys.remove(key)


class TAVDiffusion(nn.Module):
    def __init__(self, cfg: TAVDiffusionConfig):
        from diffusers import DDPMScheduler

        super().__init__()
        self.cfg = cfg
        self.video_codec = build_video_codec(cfg.video)
        self.audio_codec = build_audio_codec(cfg.audio)
        self.text_encoder = build_text_encoder(cfg.text)
        build = build_unet_denoiser if cfg.denoiser == "unet" else build_lightnet_denoiser
        self.denoiser = build(getattr(cfg, cfg.denoiser), text_dim=self.text_encoder.dim,
                              video_channels=self.video_codec.channels, audio_channels=self.audio_codec.channels)
        self.noise = DDPMScheduler(**cfg.schedule.diffusers_kwargs())
        # checkpoints hold what training changes: the frozen codecs and text encoders are rebuilt from
        # their own local files (the config names them), not copied into every checkpoint
        self.frozen = [name for name, m in self.named_children() if isinstance(m, Frozen)]
        self.register_state_dict_post_hook(_drop_frozen)
        self.register_load_state_dict_post_hook(_frozen_not_missing)

    def latent_shapes(self, num_frames: int, num_samples: int) -> tuple[tuple, tuple]:
        """(video, audio) latent shapes of one clip of ``num_frames`` frames (at the codec's size) and
        ``num_samples`` audio samples: (Cv, T, h, w), (Ca, F, M)."""
        return (self.video_codec.latent_shape(num_frames, self.cfg.video.size),
                self.audio_codec.latent_shape(num_samples))

    def encode_text(self, texts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text_encoder(texts, device)

    @torch.no_grad()
    def encode_media(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 frames [B, T, 3, H, W] and waves [B, S] -> latents (float32)."""
        return self.video_codec.encode(video).float(), self.audio_codec.encode(audio).float()

    def denoise(self, video, audio, t, text, text_mask, couple: bool = True) -> DenoiserOutput:
        return self.denoiser(video, audio, t, text, text_mask, couple=couple)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser is trained to predict for x_0, ε at t: ε, or v = √ᾱ_t ε − √(1−ᾱ_t) x_0."""
        if self.cfg.schedule.prediction == "epsilon":
            return noise
        return self.noise.get_velocity(x0, noise, t)

    def training_loss(self, video: torch.Tensor, audio: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, dict]:
        """Loss of a batch of clips (uint8 frames, waves, captions) at random shared timesteps."""
        device = video.device
        x_v, x_a = self.encode_media(video, audio)
        B = x_v.shape[0]
        drop = torch.rand(B).lt(self.cfg.text_dropout).tolist()  # the global (checkpointed) CPU RNG
        text, mask = self.encode_text(["" if d else s for s, d in zip(texts, drop, strict=True)], device)
        t = torch.randint(0, self.cfg.schedule.train_timesteps, (B,), device=device)
        n_v, n_a = torch.randn_like(x_v), torch.randn_like(x_a)
        out = self.denoise(self.noise.add_noise(x_v, n_v, t), self.noise.add_noise(x_a, n_a, t), t, text, mask)
        video_mse = F.mse_loss(out.video.float(), self.target(x_v, n_v, t))
        audio_mse = F.mse_loss(out.audio.float(), self.target(x_a, n_a, t))
        loss = video_mse + audio_mse
        metrics = {"video_mse": video_mse.detach(), "audio_mse": audio_mse.detach()}
        if self.cfg.contrastive_weight:
            nce, accuracy = info_nce(out.video_feat, out.audio_feat, self.cfg.contrastive_temperature)
            loss = loss + self.cfg.contrastive_weight * nce
            metrics |= {"infonce": nce.detach(), "av_retrieval": accuracy.detach()}
        return loss, metrics

"""The suite's audio-visual contrastive encoder: a frame encoder and an audio encoder in one space.

    frame  [N, 3, H, W] (CLIP-normalised) -> resized to image_size -> conv stem (stride 4) and
           stride-2 conv stages (GELU) -> [mean; max] over positions -> LayerNorm -> Linear -> D
    audio  wave [B, S] at 16 kHz -> log-mel [B, n_mels, F] (25 ms / 10 ms), each frame normalised
           over the bins -> Conv1d stride 2 -> lightning-attention blocks over time
           (x += LA(RMSNorm x); x += SwiGLU(RMSNorm x)) -> mean over time -> RMSNorm -> Linear -> D

Training (the ``av_encoder`` recipe) is a symmetric InfoNCE with a learned temperature τ
(s = 1/τ = exp(log_scale), capped at 100, as CLIP): with unit embeddings f_{b,t} (frame t of
clip b), a_b (its audio) and v_b = normalise(mean_t f_{b,t}),

    L = ½ [ CE_{(b,t)}(s · f_{b,t} · a_jᵀ, target b) + CE_b(s · a_b · v_jᵀ, target b) ]

so each frame is pulled towards its own clip's sound, which is what AVHScore measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from mm.layers.lightning_attention import LightningAttention
from mm.layers.norm import RMSNorm
from mm.layers.swiglu import SwiGLU

SAMPLE_RATE = 16000


@dataclass
class AVEncoderConfig:
    embed_dim: int = 64
    image_size: int = 64  # frames are resized to this side first (the metric hands over 224 crops)
    frame_channels: list[int] = field(default_factory=lambda: [32, 64, 128])  # stem, then stride-2 stages
    n_mels: int = 64
    audio_width: int = 128
    audio_layers: int = 1  # lightning-attention blocks over the mel frames (0: conv only)
    audio_heads: int = 2
    init_temperature: float = 0.07

    def __post_init__(self):
        if self.embed_dim < 1 or not self.frame_channels or min(self.frame_channels) < 1:
            raise ValueError(f"bad embed_dim={self.embed_dim} or frame_channels={self.frame_channels}")
        if self.image_size < 4 * 2 ** (len(self.frame_channels) - 1):
            raise ValueError(f"image_size {self.image_size} is too small for {len(self.frame_channels)} conv stages")
        if self.audio_heads < 1 or self.audio_width % self.audio_heads:
            raise ValueError(f"audio_width {self.audio_width} must be a multiple of audio_heads {self.audio_heads}")
        if self.audio_layers < 0 or self.n_mels < 1:
            raise ValueError(f"bad audio_layers={self.audio_layers} or n_mels={self.n_mels}")
        if not 0 < self.init_temperature < 1:
            raise ValueError(f"init_temperature must be in (0, 1), got {self.init_temperature}")


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class FrameEncoder(nn.Module):
    def __init__(self, cfg: AVEncoderConfig):
        super().__init__()
        self.image_size = cfg.image_size
        chans = cfg.frame_channels
        # GroupNorm after each conv: per image, so a frame's embedding never depends on its batch
        layers: list[nn.Module] = [nn.Conv2d(3, chans[0], 4, stride=4), _group_norm(chans[0]), nn.GELU()]
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), _group_norm(c_out), nn.GELU()]
        self.convs = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(2 * chans[-1])
        self.proj = nn.Linear(2 * chans[-1], cfg.embed_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [N, 3, H, W] -> [N, D] (not normalised)."""
        if frames.shape[-1] != self.image_size or frames.shape[-2] != self.image_size:
            frames = F.interpolate(frames, size=(self.image_size, self.image_size), mode="bilinear",
                                   antialias=True, align_corners=False)
        x = self.convs(frames).flatten(2)  # [N, C, positions]
        # mean and max over positions: a small object (its colour, its shape) is not averaged away
        return self.proj(self.norm(torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1)))


class AudioBlock(nn.Module):
    def __init__(self, width: int, heads: int, layer_idx: int, num_layers: int):
        super().__init__()
        self.norm_1 = RMSNorm(width)
        self.attn = LightningAttention(width, heads, width // heads, layer_idx, num_layers)
        self.norm_2 = RMSNorm(width)
        self.ffn = SwiGLU(width, 2 * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x))[0]
        return x + self.ffn(self.norm_2(x))


class AudioEncoder(nn.Module):
    def __init__(self, cfg: AVEncoderConfig):
        super().__init__()
        import torchaudio.transforms as T

        # 25 ms windows, 10 ms hop at 16 kHz; the filterbank is derived data, not saved.
        self.mel = T.MelSpectrogram(sample_rate=SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=cfg.n_mels)
        for name, buf in list(self.mel.named_buffers()):
            module, _, leaf = name.rpartition(".")
            owner = self.mel.get_submodule(module) if module else self.mel
            owner.register_buffer(leaf, buf, persistent=False)
        self.stem = nn.Conv1d(cfg.n_mels, cfg.audio_width, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList(AudioBlock(cfg.audio_width, cfg.audio_heads, i, cfg.audio_layers)
                                    for i in range(cfg.audio_layers))
        self.norm = RMSNorm(cfg.audio_width)
        self.proj = nn.Linear(cfg.audio_width, cfg.embed_dim)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """wave [B, S] at 16 kHz -> [B, D] (not normalised)."""
        with torch.autocast(wave.device.type, enabled=False):
            mel = torch.log(self.mel(wave.float()).clamp_min(1e-6))  # [B, n_mels, F]
            # each frame's spectrum to zero mean, unit variance over the mel bins: loudness-free shape
            mel = F.layer_norm(mel.transpose(1, 2), (mel.shape[1],)).transpose(1, 2)
        x = F.gelu(self.stem(mel)).transpose(1, 2)  # [B, F', W]
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x).mean(dim=1))


class AVEncoder(nn.Module):
    def __init__(self, cfg: AVEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.frame = FrameEncoder(cfg)
        self.audio = AudioEncoder(cfg)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] CLIP-normalised -> unit vectors [N, D]."""
        return F.normalize(self.frame(frames).float(), dim=-1)

    def embed_audio(self, wave: torch.Tensor) -> torch.Tensor:
        """[B, S] at 16 kHz -> unit vectors [B, D]."""
        return F.normalize(self.audio(wave).float(), dim=-1)

    def forward(self, video: torch.Tensor, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video [B, T, 3, H, W], wave [B, S] -> (frame embeddings [B, T, D], audio embeddings [B, D])."""
        B, T = video.shape[:2]
        frames = self.embed_frames(video.flatten(0, 1)).view(B, T, -1)
        return frames, self.embed_audio(wave)


def contrastive_loss(frames: torch.Tensor, audio: torch.Tensor, log_scale: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Symmetric InfoNCE of the module docstring. frames [B, T, D], audio [B, D], both unit vectors.

    Returns (loss, {"accuracy": audio->video retrieval accuracy in the batch, "temperature": τ})."""
    B, T, _ = frames.shape
    scale = log_scale.exp().clamp(max=100.0)
    targets = torch.arange(B, device=frames.device)
    frame_logits = scale * frames.flatten(0, 1) @ audio.T  # [B·T, B]
    video = F.normalize(frames.mean(dim=1), dim=-1)
    audio_logits = scale * audio @ video.T  # [B, B]
    loss = 0.5 * (F.cross_entropy(frame_logits, targets.repeat_interleave(T)) + F.cross_entropy(audio_logits, targets))
    accuracy = (audio_logits.argmax(dim=-1) == targets).float().mean()
    return loss, {"accuracy": accuracy.detach(), "temperature": (1.0 / scale).detach()}

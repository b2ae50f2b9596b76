"""Audio codec of TAVDiffusion: 16 kHz mono waves <-> the latents the audio stream denoises.

The mel spectrogram is AudioLDM's (DESIGN §6; ``audioldm/audio/stft.py`` ``TacotronSTFT``): a
centred STFT (reflect padding of n_fft/2, periodic Hann window of ``win`` = n_fft = 1024, hop 160),
its *magnitude* (power 1), librosa's default mel filterbank — Slaney mel scale (linear below
1 kHz, logarithmic above) with Slaney area normalisation, 0 to ``f_max`` = 8 kHz, 64 bins — and
the natural log of the values clamped at 1e-5::

    logmel = ln(max(mel_filters @ |STFT(wave)|, 1e-5))          # [F, M], time before mel

torchaudio's ``MelSpectrogram(power=1, norm="slaney", mel_scale="slaney")`` computes exactly this.
AudioLDM keeps the first ``target_length = S / hop`` of the ``S // hop + 1`` centred frames, so
``F = S // hop`` here too, and a decoded wave has ``F · hop`` samples.

Kinds (``AudioCodecConfig.kind``):

- ``mel`` (tiny runs): latents are the log-mel itself mapped affinely onto about ``[-1, 1]``:
  ``z = 2 (logmel - mel_min) / (mel_max - mel_min) - 1``, with ``mel_min = ln 1e-5 ≈ -11.513`` (the
  floor: silence is exactly -1) and ``mel_max = 2.5`` (a full-scale sine or square wave peaks at
  ln-mel 2.0–2.3 with these settings); ``Ca = 1``, latents ``[B, 1, F, 64]``.
- ``vae`` (AudioLDM's latents): the raw log-mel image ``[B, 1, F, M]`` (AudioLDM's VAE sees it
  unnormalised) through a diffusers ``AutoencoderKL`` with one input/output channel, posterior
  mean × ``scaling_factor`` (deterministic). F is padded with the silence floor to a multiple of
  the VAE's downsampling ``f``; ``decode(latents, num_samples=S)`` crops back to ``S // hop`` frames.

Waves come back from the log-mel by Griffin-Lim (default: ``InverseMelScale`` least squares to
the linear magnitude, then ``griffin_lim_iters`` iterations from zero phase — deterministic) or by
a HiFi-GAN vocoder from a local folder in the layout diffusers' AudioLDM pipelines use
(``transformers.SpeechT5HifiGan``: ``config.json`` + weights), which takes the same natural-log
magnitude mel ``[B, F, M]`` and upsamples each frame by ``hop`` samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mm.models.tavdiffusion.frozen import Frozen, load_autoencoder, require_path, vae_decode, vae_encode, vae_factor

KINDS = ("mel", "vae")
LOG_FLOOR = math.log(1e-5)  # AudioLDM's clamp before the log


@dataclass
class AudioCodecConfig:
    kind: str = "mel"  # mel | vae
    sample_rate: int = 16000  # AudioLDM's settings (DESIGN §6)
    n_mels: int = 64
    hop: int = 160  # 10 ms frames
    win: int = 1024  # window length = n_fft
    f_max: float = 8000.0
    vae: str | None = None  # kind=vae: a local diffusers AutoencoderKL folder with in/out channels 1
    vocoder: str = "griffin_lim"  # griffin_lim, or a local SpeechT5HifiGan folder (AudioLDM's vocoder layout)
    griffin_lim_iters: int = 32
    mel_min: float = LOG_FLOOR  # kind=mel: ln-mel value mapped to -1 (the 1e-5 floor: silence)
    mel_max: float = 2.5  # kind=mel: ln-mel value mapped to +1 (full-scale tones reach 2.0-2.3)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"model.audio.kind must be one of {KINDS}, got {self.kind!r}")
        for key in ("sample_rate", "n_mels", "hop", "win", "griffin_lim_iters"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.audio.{key} must be >= 1, got {getattr(self, key)}")
        if not 0 < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"model.audio.f_max must be in (0, sample_rate/2], got {self.f_max}")
        if self.mel_max <= self.mel_min:
            raise ValueError(f"model.audio.mel_max={self.mel_max} must be above mel_min={self.mel_min}")
        if self.kind == "vae" and not self.vae:
            raise ValueError("model.audio.vae must name a local AutoencoderKL folder when model.audio.kind=vae")
        if not self.vocoder:
            raise ValueError("model.audio.vocoder must be 'griffin_lim' or a local SpeechT5HifiGan folder, got ''")


def load_hifigan(path: str, cfg: AudioCodecConfig) -> nn.Module:
    """A ``transformers.SpeechT5HifiGan`` from a local folder, checked against the mel settings."""
    folder = require_path(path, key="model.audio.vocoder", must_contain="config.json")
    try:
        from transformers import SpeechT5HifiGan
    except ImportError:
        raise ValueError("model.audio.vocoder names a HiFi-GAN folder, which needs the transformers package "
                         "(pip install transformers); or set model.audio.vocoder=griffin_lim") from None
    try:
        vocoder = SpeechT5HifiGan.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"model.audio.vocoder={path!r}: not a SpeechT5HifiGan folder: {err}") from None
    vc = vocoder.config
    checks = {"model_in_dim": (vc.model_in_dim, cfg.n_mels), "sampling_rate": (vc.sampling_rate, cfg.sample_rate),
              "prod(upsample_rates)": (math.prod(vc.upsample_rates), cfg.hop)}
    for name, (got, want) in checks.items():
        if got != want:
            raise ValueError(f"model.audio.vocoder={path!r}: {name} is {got}, the audio codec needs {want}")
    vocoder.requires_grad_(False)
    return vocoder.eval()


class AudioCodec(Frozen):
    """``encode(float [B, S]) -> [B, Ca, F, M]`` with ``F = S // hop``; ``decode`` -> ``[B, F·hop]`` in [-1, 1]."""

    def __init__(self, cfg: AudioCodecConfig):
        super().__init__()
        import torchaudio.transforms as T

        self.cfg = cfg
        self.sample_rate = cfg.sample_rate
        self.mel = T.MelSpectrogram(sample_rate=cfg.sample_rate, n_fft=cfg.win, win_length=cfg.win,
                                    hop_length=cfg.hop, f_min=0.0, f_max=cfg.f_max, n_mels=cfg.n_mels,
                                    power=1.0, norm="slaney", mel_scale="slaney", center=True, pad_mode="reflect")
        self.vae = load_autoencoder(cfg.vae, key="model.audio.vae", channels=1) if cfg.kind == "vae" else None
        self.factor = vae_factor(self.vae) if self.vae is not None else 1
        if cfg.n_mels % self.factor:
            raise ValueError(f"model.audio.n_mels={cfg.n_mels} must be a multiple of the VAE's downsampling "
                             f"{self.factor}")
        self.channels = int(self.vae.config.latent_channels) if self.vae is not None else 1
        if cfg.vocoder == "griffin_lim":
            self.vocoder = None
            self.inverse_mel = T.InverseMelScale(n_stft=cfg.win // 2 + 1, n_mels=cfg.n_mels,
                                                 sample_rate=cfg.sample_rate, f_min=0.0, f_max=cfg.f_max,
                                                 norm="slaney", mel_scale="slaney")
            self.register_buffer("window", torch.hann_window(cfg.win), persistent=False)
        else:
            self.vocoder = load_hifigan(cfg.vocoder, cfg)
        self.freeze()

    def num_frames(self, num_samples: int) -> int:
        """``F = S // hop``; the STFT's reflect padding needs ``F·hop > win / 2`` (640 samples by default)."""
        least = (self.cfg.win // 2 // self.cfg.hop + 1) * self.cfg.hop
        if num_samples < least:
            raise ValueError(f"audio of {num_samples} samples is too short: the codec needs at least {least} "
                             f"(whole hops of {self.cfg.hop} spanning more than half the {self.cfg.win}-sample window)")
        return num_samples // self.cfg.hop

    def latent_shape(self, num_samples: int) -> tuple[int, int, int]:
        """``(Ca, F, M)`` of what ``encode`` makes from ``num_samples`` samples."""
        frames, f = self.num_frames(num_samples), self.factor
        return (self.channels, -(-frames // f), self.cfg.n_mels // f)

    def log_mel(self, wave: Tensor) -> Tensor:
        """``[B, S]`` -> AudioLDM's natural-log magnitude mel ``[B, 1, S // hop, M]``."""
        mel = self.mel(wave.float().clamp(-1.0, 1.0))  # [B, M, S // hop + 1]
        logmel = mel.clamp_min(1e-5).log().transpose(1, 2)  # [B, F + 1, M]
        return logmel[:, None, : self.num_frames(wave.shape[-1])]

    @torch.no_grad()
    def encode(self, wave: Tensor) -> Tensor:
        if wave.ndim != 2:
            raise ValueError(f"audio must be [B, S] mono, got {tuple(wave.shape)}")
        with torch.autocast(wave.device.type, enabled=False):  # the STFT and log want float32
            logmel = self.log_mel(wave)  # [B, 1, F, M]
        if self.vae is None:
            return 2.0 * (logmel - self.cfg.mel_min) / (self.cfg.mel_max - self.cfg.mel_min) - 1.0
        pad = -logmel.shape[2] % self.factor
        logmel = F.pad(logmel, (0, 0, 0, pad), value=LOG_FLOOR)  # silence up to a multiple of f frames
        return vae_encode(self.vae, logmel, batch=logmel.shape[0])  # [B, Ca, F/f, M/f]

    @torch.no_grad()
    def decode(self, latents: Tensor, num_samples: int | None = None) -> Tensor:
        """``[B, Ca, F, M]`` -> ``[B, F·hop]`` wave in [-1, 1]; ``num_samples`` (the encoded length)
        crops the mel back to ``num_samples // hop`` frames first (the VAE's padding)."""
        if latents.ndim != 4 or latents.shape[1] != self.channels:
            raise ValueError(f"audio latents must be [B, {self.channels}, F, M], got {tuple(latents.shape)}")
        if self.vae is None:
            logmel = (latents.float() + 1.0) * 0.5 * (self.cfg.mel_max - self.cfg.mel_min) + self.cfg.mel_min
        else:
            logmel = vae_decode(self.vae, latents, batch=latents.shape[0])  # [B, 1, F_pad, M]
        if num_samples is not None:
            frames = self.num_frames(num_samples)
            if frames > logmel.shape[2]:
                raise ValueError(f"num_samples={num_samples} needs {frames} frames, "
                                 f"the latents decode to {logmel.shape[2]}")
            logmel = logmel[:, :, :frames]
        with torch.autocast(latents.device.type, enabled=False):
            return self.mel_to_wave(logmel[:, 0].float())

    def mel_to_wave(self, logmel: Tensor) -> Tensor:
        """Natural-log magnitude mel ``[B, F, M]`` -> ``[B, F·hop]`` wave clipped to [-1, 1]."""
        import torchaudio.functional as AF

        frames = logmel.shape[1]
        if self.vocoder is not None:
            dtype = next(self.vocoder.parameters()).dtype
            wave = self.vocoder(logmel.to(dtype)).float()
        else:
            linear = self.inverse_mel(logmel.exp().transpose(1, 2))  # [B, n_fft/2 + 1, F]
            # F·hop centred samples span F + 1 STFT frames (encode dropped the last): repeat the final one
            linear = F.pad(linear, (0, 1), mode="replicate")
            wave = AF.griffinlim(linear, window=self.window, n_fft=self.cfg.win, hop_length=self.cfg.hop,
                                 win_length=self.cfg.win, power=1.0, n_iter=self.cfg.griffin_lim_iters,
                                 momentum=0.99, length=frames * self.cfg.hop, rand_init=False)
        return wave[:, : frames * self.cfg.hop].clamp(-1.0, 1.0)


def build_audio_codec(cfg: AudioCodecConfig) -> AudioCodec:
    return AudioCodec(cfg)

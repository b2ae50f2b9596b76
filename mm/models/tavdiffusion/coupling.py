"""Cross-stream coupling: bidirectional cross-attention between video and audio tokens at one UNet level.

With video tokens v [B, Nv, Cv] (one per frame × row × column) and audio tokens a [B, Na, Ca] (one
per audio frame × mel bin), each stream pre-normed (LayerNorm) and tagged with *when* it happens,

    v̂ = LN_v(v) + P_v(τ_v)        â = LN_a(a) + P_a(τ_a)
    v' = v + W_o^v · Attn(q = v̂, k = v = â)        (video looks at the sound)
    a' = a + W_o^a · Attn(q = â, k = v = v̂)        (audio looks at the picture)

both directions read the *input* tokens, so the exchange is symmetric. W_o (the attention's output
projection) starts at zero: an untrained coupling is exactly the identity, so coupling can be added
to a model without disturbing either stream at step 0.

τ is the token's time as a fraction of the clip, (index + ½) / count over its own stream's frame axis
(video frames, or audio frames at this level's resolution). Both streams cover the same clip, so
equal τ means the same instant, whatever the frame rates — the contract carries no seconds, and
fraction-of-clip is seconds rescaled by the clip length. P(τ) is a learned projection of the
sinusoid of 1000·τ (the DDPM timestep sinusoid of diffusers, 64 wide, the same frequencies for both
streams), so attention can learn to match a click to the frame of its bounce.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

TIME_DIM = 64  # width of the clip-time sinusoid (both streams, every level)
TIME_SCALE = 1000.0  # τ ∈ (0, 1) → 0..1000: the fastest sinusoid (1 rad per unit) resolves 1/1000 of a clip


def clip_time_embedding(tau: torch.Tensor) -> torch.Tensor:
    """tau [N] clip fractions -> [N, TIME_DIM] float32 sinusoid (cos first, as diffusers' UNets)."""
    return get_timestep_embedding(tau.float() * TIME_SCALE, TIME_DIM, flip_sin_to_cos=True, downscale_freq_shift=0)


def _cross_attention(query_dim: int, context_dim: int, heads: int) -> Attention:
    attn = Attention(query_dim=query_dim, cross_attention_dim=context_dim, heads=heads, dim_head=query_dim // heads,
                     out_bias=True)
    # zero output projection: the coupling starts as the identity (v' = v, a' = a)
    nn.init.zeros_(attn.to_out[0].weight)
    nn.init.zeros_(attn.to_out[0].bias)
    return attn


class StreamCoupling(nn.Module):
    """One level's video↔audio exchange (module docstring); widths may differ per stream."""

    def __init__(self, *, video_dim: int, audio_dim: int, heads: int):
        super().__init__()
        for name, dim in (("video_dim", video_dim), ("audio_dim", audio_dim)):
            if dim < 1 or dim % heads:
                raise ValueError(f"{name}={dim} must be a positive multiple of heads={heads}")
        self.video_norm = nn.LayerNorm(video_dim)
        self.audio_norm = nn.LayerNorm(audio_dim)
        self.video_time = nn.Linear(TIME_DIM, video_dim)
        self.audio_time = nn.Linear(TIME_DIM, audio_dim)
        self.video_from_audio = _cross_attention(video_dim, audio_dim, heads)
        self.audio_from_video = _cross_attention(audio_dim, video_dim, heads)

    def forward(self, video: torch.Tensor, video_tau: torch.Tensor, audio: torch.Tensor,
                audio_tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video [B, Nv, Cv], video_tau [Nv], audio [B, Na, Ca], audio_tau [Na] -> (video', audio'), same shapes."""
        v_in = self.video_norm(video) + self.video_time(clip_time_embedding(video_tau))  # [B, Nv, Cv]
        a_in = self.audio_norm(audio) + self.audio_time(clip_time_embedding(audio_tau))  # [B, Na, Ca]
        video_out = video + self.video_from_audio(v_in, encoder_hidden_states=a_in)
        audio_out = audio + self.audio_from_video(a_in, encoder_hidden_states=v_in)
        return video_out, audio_out

"""LightNetBackbone: a non-causal LightNet denoiser body for video (T×H×W) and audio (time × mel)
tokens with timestep and text inputs, for the audible-video diffusion model (DESIGN §5, §6).

    video [B, Cv, T, H, W] → 3-D patches ┐ one token sequence [video | audio] + modality embeddings
    audio [B, Ca, time, mel] → 2-D patches ┘ → `layers` blocks → per-modality linear heads →
                                              predictions of the inputs' shapes
    cond  [B, L, cond_dim] + mask [B, L]  → cross-attention in every block (text conditioning)
    t [B]                                 → adaLN-Zero modulation of every block

Coupling by the scan itself: LightNet's non-causal key normalisation is order-free, so at a coupled
block (`couple_layers`) ONE scan over [video | audio] is the whole exchange between the streams,
both directions (o_t = q_t Σ_s softmax_s(k)_s v_sᵀ with s over both streams' tokens). At every other
block, and at every block with `couple=False`, each stream is its own sequence: the same single op
call, with `cu_seqlens` cutting each row into [video] and [audio] so the keys are normalised
within a stream — then no path leads from one stream to the other (tested exactly).

Text enters by cross-attention (stream tokens → text tokens, padding masked, `mm.layers.
cross_attention`), not as tokens in the scan: a scan has no key mask (padding would enter every
token's state), and text tokens in two separate scans would get two outputs.

MD-LRPE uses 3 axes: video tokens (frame, row, column); audio tokens (time rescaled to video
tokens centre to centre, so that sound and picture at one moment share a time coordinate; mel bin;
0). Sides that are not multiples of the patch are zero-padded at the end and the predictions
cropped back, so any latent length works (e.g. F = S / hop audio frames). Each block:

    x += g1 · Mixer(n1(x)(1 + s1) + b1);  x += CrossAttn(n3(x), c);  x += g2 · GLU(n2(x)(1 + s2) + b2)

with (b, s, g) from the timestep (DiT's adaLN-Zero: sinusoidal embedding → MLP → per block,
zero-initialised) and the cross-attention's output projection zero-initialised (PixArt-α), so each
block starts as the identity. The pooled tokens of each stream after the middle block
(index (layers - 1) // 2) are returned too, for a contrastive loss between the streams.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from mm.layers.cross_attention import CrossAttention, check_cond_mask
from mm.layers.lightnet import LightNetBlock
from mm.layers.md_lrpe import LRPE_KINDS
from mm.layers.norm import RMSNorm
from mm.layers.patch_embed import PatchEmbed, grid_coords, unpatchify


@dataclass
class LightNetBackboneConfig:
    # Patches for the tiny codecs (32² pixel frames, 64-bin mel): 8 × 8 tokens a frame, 16 per 40 ms
    # of audio; on SD-style VAE latents (8× smaller) [1, 2, 2] and [2, 2] (DiT's patch 2).
    video_patch: list[int] = field(default_factory=lambda: [1, 4, 4])  # (frames, rows, columns)
    audio_patch: list[int] = field(default_factory=lambda: [4, 4])  # (time, mel)
    hidden: int = 96
    layers: int = 4
    heads: int = 4
    head_dim: int = 24  # 3 axes of MD-LRPE, each an even chunk: a multiple of 6
    ffn: int = 256
    # Blocks whose one scan covers video and audio together. None: every other block from the
    # second (1, 3, 5, ...; [0] for one block): the blocks between keep each stream's own spatial
    # mixing undiluted (a joint softmax over keys is dominated by the larger stream), and the first
    # block builds each stream's features before they meet.
    couple_layers: list[int] | None = None
    lrpe: str = "rotate"
    gate_rank: int = 16

    def __post_init__(self):
        for key in ("hidden", "layers", "heads", "head_dim", "ffn", "gate_rank"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")
        if len(self.video_patch) != 3 or min(self.video_patch) < 1:
            raise ValueError(f"video_patch must be 3 positive sizes (frames, rows, columns), got {self.video_patch}")
        if len(self.audio_patch) != 2 or min(self.audio_patch) < 1:
            raise ValueError(f"audio_patch must be 2 positive sizes (time, mel), got {self.audio_patch}")
        if self.lrpe not in LRPE_KINDS:
            raise ValueError(f"lrpe must be one of {LRPE_KINDS}, got {self.lrpe!r}")
        if self.lrpe != "none" and self.head_dim % 6:
            raise ValueError(f"head_dim must be a multiple of 6 (3 even MD-LRPE chunks), got {self.head_dim}")
        if self.couple_layers is None:
            self.couple_layers = list(range(1, self.layers, 2)) or [0]
        bad = [i for i in self.couple_layers if not 0 <= i < self.layers]
        if bad or len(set(self.couple_layers)) != len(self.couple_layers):
            raise ValueError(f"couple_layers must be distinct block indices in [0, {self.layers}), "
                             f"got {list(self.couple_layers)}")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps t [B] -> [B, dim] float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs
    return torch.cat([angles.cos(), angles.sin(), angles.new_zeros(t.shape[0], dim % 2)], dim=-1)


def audio_time_in_video_tokens(j: torch.Tensor, *, audio_frames: int, audio_patch: int, video_frames: int,
                               video_patch: int) -> torch.Tensor:
    """Time coordinates j of audio tokens -> video-token units, token centre to token centre.

    Audio token j covers the clip fraction [j, j + 1)·p_a/F and video token i [i, i + 1)·p_v/T (F
    audio frames and T video frames, before padding; both streams span the same clip), so the audio
    token centred at τ = (j + ½)·p_a/F gets the coordinate τ·T/p_v − ½ that a video token centred
    there would have.
    """
    tau = (j + 0.5) * audio_patch / audio_frames
    return tau * video_frames / video_patch - 0.5


@functools.lru_cache(maxsize=16)
def _stream_seqlens(batch: int, video_tokens: int, audio_tokens: int, device: torch.device) -> torch.Tensor:
    """cu_seqlens cutting each row of [video | audio] tokens (flattened over the batch) into its two
    streams. Cached: `host_bounds` then reads each shape's bounds from the device once, not per call."""
    n = video_tokens + audio_tokens
    bounds = [b * n + o for b in range(batch) for o in (0, video_tokens)] + [batch * n]
    with torch.inference_mode(False):  # a normal tensor even when first built while sampling
        return torch.tensor(bounds, dtype=torch.int32, device=device)


# Called eagerly under torch.compile: traced, the cache would be bypassed (a fresh tensor, and so a
# host read of its bounds, every call); the graph breaks at each LightNet op call anyway.
_stream_seqlens_eager = torch.compiler.disable(_stream_seqlens)


class _Modulated(nn.Module):
    """A LightNetBlock with adaLN-Zero and (when cond_dim > 0) text cross-attention (module docstring)."""

    def __init__(self, block: LightNetBlock, hidden: int, cond_dim: int, heads: int, head_dim: int):
        super().__init__()
        self.block = block
        self.ada = nn.Linear(hidden, 6 * hidden)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        self.cross_norm = RMSNorm(hidden) if cond_dim else None
        self.cross = CrossAttention(hidden, cond_dim, heads, head_dim) if cond_dim else None

    def forward(self, x, temb, theta, cu_seqlens, cond, cond_mask):
        b1, s1, g1, b2, s2, g2 = self.ada(temb)[:, None].chunk(6, dim=-1)  # each [B, 1, hidden]
        x = x + g1 * self.block.mixer(self.block.norm1(x) * (1 + s1) + b1, theta, cu_seqlens)
        if cond is not None:
            x = x + self.cross(self.cross_norm(x), cond, cond_mask)
        return x + g2 * self.block.glu(self.block.norm2(x) * (1 + s2) + b2)


class LightNetBackbone(nn.Module):
    def __init__(self, cfg: LightNetBackboneConfig, *, video_channels: int, audio_channels: int, cond_dim: int = 0):
        """video_channels / audio_channels: latent channels of each stream (0: no such stream);
        cond_dim: width of the condition (text) tokens (0: unconditional)."""
        super().__init__()
        if min(video_channels, audio_channels, cond_dim) < 0 or not (video_channels or audio_channels):
            raise ValueError(f"need video_channels or audio_channels > 0 and cond_dim >= 0, got "
                             f"{video_channels}, {audio_channels}, {cond_dim}")
        self.cfg, self.channels, self.cond_dim = cfg, {"video": video_channels, "audio": audio_channels}, cond_dim
        self.patch = {"video": tuple(cfg.video_patch), "audio": tuple(cfg.audio_patch)}
        H = cfg.hidden
        self.embed = nn.ModuleDict({name: PatchEmbed(c, H, self.patch[name])
                                    for name, c in self.channels.items() if c})
        self.modality = nn.Parameter(torch.zeros(2, H))  # video, audio
        self.time_mlp = nn.Sequential(nn.Linear(H, H), nn.SiLU(), nn.Linear(H, H))
        self.blocks = nn.ModuleList(
            _Modulated(LightNetBlock(H, cfg.heads, cfg.head_dim, cfg.ffn, mixer="lightnet", causal=False,
                                     lrpe=cfg.lrpe, num_axes=3, gate_rank=cfg.gate_rank),
                       H, cond_dim, cfg.heads, cfg.head_dim)
            for _ in range(cfg.layers))
        self.coupled = frozenset(cfg.couple_layers)
        self.mid = (cfg.layers - 1) // 2
        self.norm = RMSNorm(H)
        self.final_ada = nn.Linear(H, 2 * H)
        self.head = nn.ModuleDict({name: nn.Linear(H, c * math.prod(self.patch[name]))
                                   for name, c in self.channels.items() if c})
        for m in (self.final_ada, *self.head.values()):  # adaLN-Zero: the untrained network predicts zeros
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, t: torch.Tensor, video: torch.Tensor | None = None, audio: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, cond_mask: torch.Tensor | None = None, *,
                couple: bool = True) -> dict[str, torch.Tensor]:
        """t [B] timesteps; video [B, Cv, T, H, W]; audio [B, Ca, time, mel]; cond [B, L, cond_dim]
        with cond_mask [B, L] bool (True = real token; None: all real); couple=False: no exchange
        between the streams at any block.

        Returns, for each stream given: "video" [B, Cv, T, H, W] / "audio" [B, Ca, time, mel]
        predictions, and "video_mid" / "audio_mid" [B, hidden], the stream's tokens after the
        middle block, mean-pooled.
        """
        if cond is not None:
            if not self.cond_dim:
                raise ValueError("cond given but the model was built with cond_dim = 0")
            cond_mask = check_cond_mask(cond, cond_mask)
        elif cond_mask is not None:
            raise ValueError("cond_mask given without cond")
        parts, coords, spans = [], [], {}
        for m, (name, x) in enumerate((("video", video), ("audio", audio))):
            if x is None:
                continue
            if name not in self.embed:
                raise ValueError(f"{name} given but the model was built with {name}_channels = 0")
            sides, patch = tuple(x.shape[2:]), self.patch[name]
            if len(sides) != len(patch):
                raise ValueError(f"{name} must be [B, C, {len(patch)} sides], got {tuple(x.shape)}")
            pad = [-n % p for n, p in zip(sides, patch, strict=True)]
            if any(pad):  # zeros at the end of each side up to a multiple of the patch; cropped off the output
                x = nn.functional.pad(x, [n for p in reversed(pad) for n in (0, p)])
            tokens, grid = self.embed[name](x)  # [B, N, hidden]
            start = sum(p.shape[1] for p in parts)
            spans[name] = (start, start + tokens.shape[1], grid, sides)
            parts.append(tokens + self.modality[m])
            coords.append(grid_coords(grid, device=t.device))
        if not spans:
            raise ValueError("give video or audio (or both)")
        if "audio" in spans:  # audio coordinates (time, mel, 0)
            coords[-1] = nn.functional.pad(coords[-1], (0, 1))
        if len(spans) == 2:
            coords[1][:, 0] = audio_time_in_video_tokens(coords[1][:, 0], audio_frames=spans["audio"][3][0],
                                                         audio_patch=self.patch["audio"][0],
                                                         video_frames=spans["video"][3][0],
                                                         video_patch=self.patch["video"][0])
        x = torch.cat(parts, dim=1)  # [B, N_video + N_audio, hidden]
        separate = None  # cu_seqlens cutting every row into its streams (the uncoupled scans)
        if len(spans) == 2:
            separate = _stream_seqlens_eager(x.shape[0], spans["video"][1], x.shape[1] - spans["video"][1], x.device)
        theta = self.blocks[0].block.mixer.lrpe.angles(torch.cat(coords))
        temb = self.time_mlp(timestep_embedding(t, self.cfg.hidden).to(x.dtype))
        out = {}
        for i, block in enumerate(self.blocks):
            x = block(x, temb, theta, separate if not (couple and i in self.coupled) else None, cond, cond_mask)
            if i == self.mid:
                out.update({f"{name}_mid": x[:, a:b].mean(dim=1) for name, (a, b, *_) in spans.items()})
        shift, scale = self.final_ada(temb)[:, None].chunk(2, dim=-1)
        x = self.norm(x) * (1 + scale) + shift
        for name, (a, b, grid, sides) in spans.items():
            y = unpatchify(self.head[name](x[:, a:b]), grid, self.patch[name], self.channels[name])
            out[name] = y[(..., *(slice(0, n) for n in sides))]  # the padding cropped off
        return out

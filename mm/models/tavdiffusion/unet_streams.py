"""The two UNet streams of the TAVDiffusion denoiser, built from diffusers' UNet blocks.

Each stream is an SD-style UNet, conv_in → down blocks → mid block → up blocks → GroupNorm · SiLU ·
conv_out, with its own timestep embedding (diffusers' ``Timesteps`` sinusoid + ``TimestepEmbedding``
MLP, 4 × the first level's width, added inside every resnet). The denoiser drives the streams one
level at a time (``down``/``mid``/``up``) so the cross-stream couplings can sit between the levels.

- video [B, Cv, T, h, w]: diffusers' 3-D blocks (``unet_3d_blocks``, as ``UNet3DConditionModel``):
  frames are folded into the batch, [B·T, C, h, w]; each layer is a 2-D resnet, a temporal conv
  (3×1×1), spatial self- and text cross-attention (``Transformer2DModel``) and temporal
  self-attention (``TransformerTemporalModel``). Only h, w are ever downsampled, never T.
- audio [B, Ca, F, M]: diffusers' 2-D blocks (``unet_2d_blocks``) over the (time, mel) plane.

Text: both streams cross-attend to the same tokens [B, L, D]. The 2-D blocks take the text mask as
``encoder_attention_mask``; the 3-D blocks accept an ``attention_mask`` argument but never use it
(diffusers 0.42.1, "TODO ... attention mask is not used"), so the video stream hands the mask to its
attention processors through ``cross_attention_kwargs`` (:class:`TextMaskAttnProcessor`).

Any latent size is accepted: stride-2 downsampling rounds up, and every upsampler is told the size
of the skip it meets (as ``UNet2DConditionModel`` does for odd sizes).

Module names follow diffusers' UNets, so a stream's state dict has exactly the keys of the matching
``UNet2DConditionModel`` (audio) or ``UNet3DConditionModel`` less its ``transformer_in`` (video, which
has no temporal transformer before the first block); tests load one into the other and compare outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import TemporalConvLayer
from diffusers.models.unets import unet_2d_blocks, unet_3d_blocks
from torch import nn

RESNET_EPS = 1e-5  # UNet3DConditionModel's norm_eps


class TextMaskAttnProcessor(AttnProcessor2_0):
    """diffusers' SDPA processor that masks padded text tokens out of cross-attention.

    ``text_mask`` [N, L] bool (True = real token) arrives through ``cross_attention_kwargs``; it is
    applied only when keys come from the text (``encoder_hidden_states`` given), so the same
    processor serves the self- and temporal attentions, which ignore it.
    """

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 text_mask: torch.Tensor | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None and text_mask is not None:
            attention_mask = text_mask[:, None, :]  # [N, 1, L], bool: SDPA drops False keys
        return super().__call__(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                                attention_mask=attention_mask, temb=temb)


@dataclass
class StreamContext:
    """What every block of one stream needs besides its hidden state, for one forward call."""
    batch: int
    frames: int  # video: T (folded into the batch); audio: 1
    temb: torch.Tensor  # [B·frames, temb_dim]
    text: torch.Tensor  # [B·frames, L, D]
    text_mask: torch.Tensor  # [B·frames, L] bool


class _UNetStream(nn.Module):
    """conv_in → down blocks → mid → up blocks → out; subclasses pick the diffusers blocks and layout."""

    def __init__(self, *, in_channels: int, channels: list[int], layers_per_block: int, heads: int, norm_groups: int,
                 plain_levels: list[int], text_dim: int):
        super().__init__()
        self.channels = list(channels)
        temb_dim = 4 * channels[0]
        self.time_proj = Timesteps(channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(channels[0], temb_dim)
        self.conv_in = nn.Conv2d(in_channels, channels[0], kernel_size=3, padding=1)
        common = dict(temb_channels=temb_dim, resnet_eps=RESNET_EPS, resnet_act_fn="silu", resnet_groups=norm_groups,
                      cross_attention_dim=text_dim, use_linear_projection=True)
        levels = len(channels)
        self.down_blocks = nn.ModuleList()
        for i, out_c in enumerate(channels):
            in_c = channels[max(i - 1, 0)]
            self.down_blocks.append(self._down_block(
                plain=i in plain_levels, num_layers=layers_per_block, in_channels=in_c, out_channels=out_c,
                add_downsample=i < levels - 1, downsample_padding=1, heads=heads, **common))
        self.mid_block = self._mid_block(in_channels=channels[-1], heads=heads, **common)
        rev = channels[::-1]
        self.up_blocks = nn.ModuleList()
        for i, out_c in enumerate(rev):
            self.up_blocks.append(self._up_block(
                plain=levels - 1 - i in plain_levels, num_layers=layers_per_block + 1,
                in_channels=rev[min(i + 1, levels - 1)], out_channels=out_c, prev_output_channel=rev[max(i - 1, 0)],
                add_upsample=i < levels - 1, resolution_idx=i, heads=heads, **common))
        self.conv_norm_out = nn.GroupNorm(norm_groups, channels[0], eps=RESNET_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], in_channels, kernel_size=3, padding=1)

    # -- layout hooks ---------------------------------------------------------------------------
    def fold(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """input latents -> ([N, C, H, W] for the 2-D convs, frames folded into N)."""
        raise NotImplementedError

    def unfold(self, h: torch.Tensor, ctx: StreamContext) -> torch.Tensor:
        raise NotImplementedError

    def tokens(self, h: torch.Tensor, ctx: StreamContext) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden -> (tokens [B, N, C], their clip-time fractions τ [N])."""
        raise NotImplementedError

    def untokens(self, tokens: torch.Tensor, like: torch.Tensor, ctx: StreamContext) -> torch.Tensor:
        raise NotImplementedError

    def _block_kwargs(self, block: nn.Module, ctx: StreamContext) -> dict:
        raise NotImplementedError

    # -- the stream, level by level ------------------------------------------------------------
    def start(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
              text_mask: torch.Tensor) -> tuple[torch.Tensor, StreamContext]:
        h, frames = self.fold(x)
        batch = x.shape[0]
        temb = self.time_embedding(self.time_proj(t).to(dtype=x.dtype))  # [B, 4·C0]
        ctx = StreamContext(batch=batch, frames=frames, temb=temb.repeat_interleave(frames, dim=0),
                            text=text.repeat_interleave(frames, dim=0),
                            text_mask=text_mask.repeat_interleave(frames, dim=0))
        return self.conv_in(h), ctx

    def down(self, i: int, h: torch.Tensor, ctx: StreamContext) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        block = self.down_blocks[i]
        return block(h, ctx.temb, **self._block_kwargs(block, ctx))

    def mid(self, h: torch.Tensor, ctx: StreamContext) -> torch.Tensor:
        return self.mid_block(h, ctx.temb, **self._block_kwargs(self.mid_block, ctx))

    def up(self, i: int, h: torch.Tensor, skips: tuple[torch.Tensor, ...], ctx: StreamContext,
           size: tuple[int, int] | None) -> torch.Tensor:
        """skips: this block's res states (layers_per_block + 1); size: the spatial size to upsample to."""
        block = self.up_blocks[i]
        return block(h, skips, ctx.temb, upsample_size=size, **self._block_kwargs(block, ctx))

    def finish(self, h: torch.Tensor, ctx: StreamContext) -> torch.Tensor:
        return self.unfold(self.conv_out(self.conv_act(self.conv_norm_out(h))), ctx)

    def pool(self, h: torch.Tensor, ctx: StreamContext) -> torch.Tensor:
        """hidden -> [B, C]: mean over every token (frames, rows, columns / time, mel)."""
        return self.tokens(h, ctx)[0].mean(dim=1)


class VideoStream(_UNetStream):
    """3-D UNet over [B, Cv, T, h, w] (diffusers' ``unet_3d_blocks``)."""

    def __init__(self, *, temporal_dropout: float, **kwargs):
        super().__init__(**kwargs)
        for module in self.modules():
            if isinstance(module, Attention):
                module.set_processor(TextMaskAttnProcessor())
            if isinstance(module, TemporalConvLayer):  # diffusers hard-codes Dropout(0.1) in its 4 convs
                for sub in module.modules():
                    if isinstance(sub, nn.Dropout):
                        sub.p = temporal_dropout

    # diffusers' 3-D blocks call their second argument `num_attention_heads` but pass it to
    # Transformer2DModel / TransformerTemporalModel as the head *width*: give it C // heads
    @staticmethod
    def _down_block(*, plain: bool, heads: int, **kwargs) -> nn.Module:
        return unet_3d_blocks.get_down_block("DownBlock3D" if plain else "CrossAttnDownBlock3D",
                                             num_attention_heads=kwargs["out_channels"] // heads, **kwargs)

    @staticmethod
    def _mid_block(*, in_channels: int, heads: int, **kwargs) -> nn.Module:
        return unet_3d_blocks.UNetMidBlock3DCrossAttn(in_channels=in_channels, num_attention_heads=in_channels // heads,
                                                      **kwargs)

    @staticmethod
    def _up_block(*, plain: bool, heads: int, **kwargs) -> nn.Module:
        return unet_3d_blocks.get_up_block("UpBlock3D" if plain else "CrossAttnUpBlock3D",
                                           num_attention_heads=kwargs["out_channels"] // heads, **kwargs)

    def _block_kwargs(self, block: nn.Module, ctx: StreamContext) -> dict:
        if not getattr(block, "has_cross_attention", False):
            return {"num_frames": ctx.frames}
        return {"num_frames": ctx.frames, "encoder_hidden_states": ctx.text,
                "cross_attention_kwargs": {"text_mask": ctx.text_mask}}

    def fold(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        b, c, t, h, w = x.shape
        return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), t  # [B·T, C, h, w]

    def unfold(self, h: torch.Tensor, ctx: StreamContext) -> torch.Tensor:
        n, c, hh, ww = h.shape
        return h.view(ctx.batch, ctx.frames, c, hh, ww).permute(0, 2, 1, 3, 4)  # [B, C, T, h, w]

    def tokens(self, h: torch.Tensor, ctx: StreamContext) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, hh, ww = h.shape
        # [B·T, C, h, w] -> [B, T·h·w, C]
        tokens = h.view(ctx.batch, ctx.frames, c, hh, ww).permute(0, 1, 3, 4, 2).reshape(ctx.batch, -1, c)
        tau = (torch.arange(ctx.frames, device=h.device) + 0.5) / ctx.frames
        return tokens, tau.repeat_interleave(hh * ww)

    def untokens(self, tokens: torch.Tensor, like: torch.Tensor, ctx: StreamContext) -> torch.Tensor:
        n, c, hh, ww = like.shape
        # contiguous NCHW, the layout the uncoupled path has: convs then take the same kernels (and
        # round the same way), so an untrained coupling is exactly the identity
        return tokens.view(ctx.batch, ctx.frames, hh, ww, c).permute(0, 1, 4, 2, 3).reshape(n, c, hh, ww).contiguous()


class AudioStream(_UNetStream):
    """2-D UNet over the (time, mel) plane of [B, Ca, F, M] (diffusers' ``unet_2d_blocks``)."""

    @staticmethod
    def _down_block(*, plain: bool, heads: int, **kwargs) -> nn.Module:
        return unet_2d_blocks.get_down_block("DownBlock2D" if plain else "CrossAttnDownBlock2D",
                                             num_attention_heads=heads,
                                             attention_head_dim=kwargs["out_channels"] // heads, **kwargs)

    @staticmethod
    def _mid_block(*, in_channels: int, heads: int, **kwargs) -> nn.Module:
        return unet_2d_blocks.get_mid_block("UNetMidBlock2DCrossAttn", in_channels=in_channels,
                                            num_attention_heads=heads, attention_head_dim=in_channels // heads,
                                            **kwargs)

    @staticmethod
    def _up_block(*, plain: bool, heads: int, **kwargs) -> nn.Module:
        return unet_2d_blocks.get_up_block("UpBlock2D" if plain else "CrossAttnUpBlock2D",
                                           num_attention_heads=heads,
                                           attention_head_dim=kwargs["out_channels"] // heads, **kwargs)

    def _block_kwargs(self, block: nn.Module, ctx: StreamContext) -> dict:
        if not getattr(block, "has_cross_attention", False):
            return {}
        return {"encoder_hidden_states": ctx.text, "encoder_attention_mask": ctx.text_mask}

    def fold(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        return x, 1

    def unfold(self, h: torch.Tensor, ctx: StreamContext) -> torch.Tensor:
        return h

    def tokens(self, h: torch.Tensor, ctx: StreamContext) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, f, m = h.shape
        tau = (torch.arange(f, device=h.device) + 0.5) / f
        return h.permute(0, 2, 3, 1).reshape(b, f * m, c), tau.repeat_interleave(m)  # [B, F·M, C]

    def untokens(self, tokens: torch.Tensor, like: torch.Tensor, ctx: StreamContext) -> torch.Tensor:
        b, c, f, m = like.shape
        return tokens.view(b, f, m, c).permute(0, 3, 1, 2).contiguous()  # NCHW, as VideoStream.untokens

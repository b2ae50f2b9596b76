"""The vision and audio towers of ImageBind (Girdhar et al., 2023), with the published state-dict layout.

Each modality is preprocessor -> trunk -> head -> postprocessor (DESIGN §6)::

    vision  image [B, 3, 224, 224] -> repeated to 2 time steps [B, 3, 2, 224, 224]
            -> Conv3d kernel = stride = (2, 14, 14), no bias -> 256 patch tokens
            -> [cls; tokens] + learned pos_embed [1, 257, W] -> LayerNorm (pre_transformer_layer)
    audio   fbank [B, 1, 128, 204] -> Conv2d kernel 16, stride 10, no bias -> 12 x 19 = 228 tokens
            -> LayerNorm (eps 1e-5) -> [cls; tokens] + learned pos_embed [1, 229, W]
    trunk   pre-norm blocks: x += Attn(LN(x)); x += MLP(LN(x)), LN eps 1e-6, MLP W -> 4W -> W (exact
            GELU); audio attention appends learned bias_k / bias_v tokens to the keys and values
    head    LN(eps 1e-6) -> the cls token -> Linear(W, out, no bias)
    post    L2 normalisation; audio is then scaled by a fixed exp(log_logit_scale) = 20

Module and parameter names follow the published checkpoint exactly
(``modality_preprocessors.vision.rgbt_stem.proj.1.weight``, ``modality_trunks.audio.blocks.0.attn.bias_k``,
...), so its vision and audio keys load as they are (:mod:`mm.models.imagebind.checkpoint`).
ImageBind-huge: vision ViT-H (width 1280, 32 blocks, 16 heads), audio width 768 (12 blocks, 12 heads),
both heads project to 1024.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class ImageBindConfig:
    vision_width: int = 1280
    vision_layers: int = 32
    vision_heads: int = 16
    audio_width: int = 768
    audio_layers: int = 12
    audio_heads: int = 12
    embed_dim: int = 1024  # both heads project to this
    image_size: int = 224
    patch_size: int = 14
    mel_bins: int = 128
    audio_frames: int = 204  # fbank frames per 2 s clip (padded / cut)
    audio_kernel: int = 16
    audio_stride: int = 10
    audio_logit_scale: float = 20.0  # fixed scale of the audio postprocessor (cosines ignore it)

    def __post_init__(self):
        for name in ("vision", "audio"):
            width, heads = getattr(self, f"{name}_width"), getattr(self, f"{name}_heads")
            if heads < 1 or width % heads:
                raise ValueError(f"{name}_width {width} must be a multiple of {name}_heads {heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if min(self.mel_bins, self.audio_frames) < self.audio_kernel:
            raise ValueError(f"fbank {self.mel_bins}x{self.audio_frames} is smaller than "
                             f"audio_kernel {self.audio_kernel}")

    @property
    def vision_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1  # + cls

    @property
    def audio_grid(self) -> tuple[int, int]:
        k, s = self.audio_kernel, self.audio_stride
        return (self.mel_bins - k) // s + 1, (self.audio_frames - k) // s + 1


def imagebind_huge() -> ImageBindConfig:
    return ImageBindConfig()


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameters (packed in_proj, out_proj,
    optional bias_k / bias_v appended to the projected keys / values), computed batch-first with SDPA."""

    def __init__(self, width: int, heads: int, bias_kv: bool):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        if bias_kv:
            self.bias_k = nn.Parameter(torch.zeros(1, 1, width))
            self.bias_v = nn.Parameter(torch.zeros(1, 1, width))
        else:
            self.bias_k = self.bias_v = None
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, W = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)  # [B, L, W] each
        if self.bias_k is not None:  # one extra key/value position every query sees
            k = torch.cat([k, self.bias_k.expand(B, 1, W).to(k.dtype)], dim=1)
            v = torch.cat([v, self.bias_v.expand(B, 1, W).to(v.dtype)], dim=1)
        q, k, v = (t.unflatten(-1, (self.heads, W // self.heads)).transpose(1, 2) for t in (q, k, v))  # [B, H, ·, d]
        o = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(o.transpose(1, 2).reshape(B, L, W))


class Mlp(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, bias_kv: bool):
        super().__init__()
        self.attn = Attention(width, heads, bias_kv)
        self.norm_1 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width)
        self.norm_2 = nn.LayerNorm(width, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x))
        return x + self.mlp(self.norm_2(x))


class Trunk(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, pre_norm: bool, bias_kv: bool):
        super().__init__()
        # Sequential so the published key is pre_transformer_layer.0.*; the audio trunk has none.
        self.pre_transformer_layer = nn.Sequential(nn.LayerNorm(width, eps=1e-6)) if pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(width, heads, bias_kv) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_transformer_layer(x)
        for block in self.blocks:
            x = block(x)
        return x


class RepeatTime(nn.Module):
    """[B, 3, H, W] -> [B, 3, ntimes, H, W]: an image enters the video patch embedding as a still clip."""

    def __init__(self, ntimes: int):
        super().__init__()
        self.ntimes = ntimes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(2).expand(-1, -1, self.ntimes, -1, -1)


class PatchStem(nn.Module):
    """``proj`` (conv) then flatten to tokens [B, L, W], then ``norm_layer`` when given."""

    def __init__(self, proj: nn.Module, norm: nn.Module | None):
        super().__init__()
        self.proj = proj
        self.norm_layer = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)  # [B, W, *grid] -> [B, L, W]
        return self.norm_layer(x) if self.norm_layer is not None else x


class PosEmbed(nn.Module):
    def __init__(self, tokens: int, width: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)


class Preprocessor(nn.Module):
    """stem -> [cls; tokens] + pos_embed."""

    def __init__(self, stem: PatchStem, tokens: int, width: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.rgbt_stem = stem
        self.pos_embedding_helper = PosEmbed(tokens, width)
        nn.init.normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.rgbt_stem(x)  # [B, L, W]
        if tokens.shape[1] + 1 != self.pos_embedding_helper.pos_embed.shape[1]:
            raise ValueError(f"input {tuple(x.shape)} gives {tokens.shape[1]} patches; the model expects "
                             f"{self.pos_embedding_helper.pos_embed.shape[1] - 1}")
        cls = self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        return torch.cat([cls, tokens], dim=1) + self.pos_embedding_helper.pos_embed


class SelectCls(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


class Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


class LogitScale(nn.Module):
    """Multiply by exp(log_logit_scale) (a fixed buffer in the published audio postprocessor)."""

    def __init__(self, scale: float):
        super().__init__()
        self.register_buffer("log_logit_scale", torch.tensor(math.log(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_logit_scale.exp().clamp(max=100.0) * x


def _head(width: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(width, eps=1e-6), SelectCls(), nn.Linear(width, out, bias=False))


class ImageBindVisionAudio(nn.Module):
    """The vision and audio parts of ImageBind; ``embed_images`` / ``embed_audio_clips`` give the
    postprocessed embeddings (unit vectors; audio ×20)."""

    def __init__(self, cfg: ImageBindConfig):
        super().__init__()
        self.cfg = cfg
        vw, aw, p = cfg.vision_width, cfg.audio_width, cfg.patch_size
        vision_stem = PatchStem(nn.Sequential(RepeatTime(2), nn.Conv3d(3, vw, (2, p, p), (2, p, p), bias=False)), None)
        audio_conv = nn.Conv2d(1, aw, cfg.audio_kernel, cfg.audio_stride, bias=False)
        audio_stem = PatchStem(audio_conv, nn.LayerNorm(aw))  # default eps, as published
        rows, cols = cfg.audio_grid
        self.modality_preprocessors = nn.ModuleDict({
            "vision": Preprocessor(vision_stem, cfg.vision_tokens, vw),
            "audio": Preprocessor(audio_stem, rows * cols + 1, aw),
        })
        self.modality_trunks = nn.ModuleDict({
            "vision": Trunk(vw, cfg.vision_layers, cfg.vision_heads, pre_norm=True, bias_kv=False),
            "audio": Trunk(aw, cfg.audio_layers, cfg.audio_heads, pre_norm=False, bias_kv=True),
        })
        self.modality_heads = nn.ModuleDict({"vision": _head(vw, cfg.embed_dim), "audio": _head(aw, cfg.embed_dim)})
        self.modality_postprocessors = nn.ModuleDict({
            "vision": Normalize(),
            "audio": nn.Sequential(Normalize(), LogitScale(cfg.audio_logit_scale)),
        })

    def _embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        x = self.modality_preprocessors[modality](x)
        x = self.modality_trunks[modality](x)
        x = self.modality_heads[modality](x)
        return self.modality_postprocessors[modality](x)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, 224, 224] (CLIP-normalised) -> [N, embed_dim] unit vectors."""
        return self._embed("vision", images)

    def embed_audio_clips(self, fbank: torch.Tensor) -> torch.Tensor:
        """fbank [N, clips, 1, 128, 204] -> [N, embed_dim]: each clip embedded, then averaged (as published)."""
        n, clips = fbank.shape[:2]
        out = self._embed("audio", fbank.flatten(0, 1))  # [N·clips, D]
        return out.view(n, clips, -1).mean(dim=1)

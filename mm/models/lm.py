"""Decoder-only language model in the MiniMax-Text-01 layout (DESIGN §3).

Each layer: h = RMSNorm(x); x = α·h + β·attn(h); h = RMSNorm(x); x = α·h + β·ffn(h)
(MiniMax's post-norm residual, α = (2·layers)^(1/4), β = 1), then a final RMSNorm and the LM head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mm.layers.norm import RMSNorm
from mm.layers.packing import check_cu_seqlens, document_ids, document_positions
from mm.layers.rotary import rotary_cos_sin
from mm.layers.softmax_attention import SoftmaxAttention
from mm.layers.swiglu import SwiGLU

ATTN_TYPES = ("softmax",)


@dataclass
class LMConfig:
    vocab_size: int = 259  # the byte tokenizer's vocabulary
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4  # grouped-query attention in softmax layers
    head_dim: int = 32
    attn_type_list: list[str] = field(default_factory=list)  # per layer; empty: every layer softmax
    rotary_dim: int = 16  # NeoX RoPE on the first rotary_dim dims of each head (MiniMax: head_dim / 2)
    rope_theta: float = 10_000_000.0
    ffn: int = 344  # SwiGLU width
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02

    def __post_init__(self):
        if self.attn_type_list and len(self.attn_type_list) != self.layers:
            raise ValueError(f"model.attn_type_list has {len(self.attn_type_list)} entries for {self.layers} layers")
        for kind in self.layer_types:
            if kind not in ATTN_TYPES:
                raise ValueError(f"model.attn_type_list: unknown attention type {kind!r}; known: {ATTN_TYPES}")
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim:
            raise ValueError(f"model.rotary_dim must be even and in (0, head_dim={self.head_dim}], got {self.rotary_dim}")
        if self.heads % self.kv_heads:
            raise ValueError(f"model.heads ({self.heads}) must be a multiple of model.kv_heads ({self.kv_heads})")

    @property
    def layer_types(self) -> list[str]:
        """The attention type of each layer (``attn_type_list``, or softmax everywhere when empty)."""
        return list(self.attn_type_list) or ["softmax"] * self.layers

    @property
    def residual_alpha(self) -> float:
        return (2 * self.layers) ** 0.25


@dataclass
class LMOutput:
    logits: torch.Tensor  # [B, T, vocab]
    loss: torch.Tensor | None = None  # mean cross-entropy over labels != -100 (0 when there are none)
    num_tokens: int = 0  # tokens that entered the loss


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LMConfig, index: int):
        super().__init__()
        self.alpha = cfg.residual_alpha
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.self_attn = SoftmaxAttention(cfg.hidden, cfg.heads, cfg.kv_heads, cfg.head_dim)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.hidden, cfg.ffn)

    def forward(self, x, rope, doc_ids):
        h = self.input_layernorm(x)
        x = self.alpha * h + self.self_attn(h, rope, doc_ids)
        h = self.post_attention_layernorm(x)
        return self.alpha * h + self.mlp(h)


class LM(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        self.apply(self._init)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.cfg.init_std)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> LMOutput:
        """input_ids, labels [B, T] (labels already shifted: the target of position t; -100 = ignore);
        cu_seqlens [N + 1] over the flattened B·T tokens for packed documents (see mm.layers.packing)."""
        B, T = input_ids.shape
        if cu_seqlens is None:
            doc_ids = None
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        else:
            check_cu_seqlens(cu_seqlens, B, T)
            doc_ids = document_ids(cu_seqlens, B, T)
            positions = document_positions(cu_seqlens, B, T)
        rope = rotary_cos_sin(positions, self.cfg.rotary_dim, self.cfg.rope_theta)
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, rope, doc_ids)
        logits = self.lm_head(self.norm(x))
        if labels is None:
            return LMOutput(logits)
        return LMOutput(logits, *token_cross_entropy(logits, labels))


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over labels != -100, in float32; 0 (not NaN) when every label is ignored."""
    losses = nn.functional.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=-100, reduction="sum")
    count = int((labels != -100).sum())
    return losses / max(count, 1), count

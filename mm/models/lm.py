"""Decoder-only language model in the MiniMax-Text-01 layout (DESIGN §3).

Each layer: h = RMSNorm(x); x = α·h + β·attn(h); h = RMSNorm(x); x = α·h + β·ffn(h)
(MiniMax's post-norm residual, α = (2·layers)^(1/4), β = 1), then a final RMSNorm and the LM head.
Checkpoints in the Hugging Face ``minimax`` format load with :func:`from_hf` and save with :func:`to_hf`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mm.layers.lightnet import TokenMixer
from mm.layers.lightning_attention import LightningAttention
from mm.layers.moe import MoE, RouterStats
from mm.layers.norm import RMSNorm
from mm.layers.packing import check_cu_seqlens, document_ids, document_positions
from mm.layers.rotary import rotary_cos_sin
from mm.layers.softmax_attention import SoftmaxAttention
from mm.layers.swiglu import SwiGLU
from mm.ops.linear_cross_entropy import linear_cross_entropy

ATTN_TYPES = ("lightning", "softmax", "lightnet")  # lightnet: causal LightNet (DESIGN §5)


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
    ffn: int = 344  # SwiGLU width (of each expert when experts > 0)
    experts: int = 0  # 0: a dense SwiGLU per layer; E > 0: a top-k mixture of E SwiGLU experts
    top_k: int = 2
    shared_ffn: int = 0  # width of an always-on shared expert (0: none)
    capacity_factor: float = 0.0  # > 0: drop assignments beyond ceil(cf·N·k/E) per expert; 0: dropless
    router_aux_coef: float = 0.001  # load-balance loss weight (MiniMax 0.001)
    router_z_coef: float = 0.0  # router z-loss weight
    norm_eps: float = 1e-5
    residual_alpha: float | None = None  # α of x = α·h + β·f(h); None: (2·layers)^(1/4) as MiniMax
    residual_beta: float = 1.0
    tie_embeddings: bool = False
    init_std: float = 0.02

    def __post_init__(self):
        if self.attn_type_list and len(self.attn_type_list) != self.layers:
            raise ValueError(f"model.attn_type_list has {len(self.attn_type_list)} entries for {self.layers} layers")
        for kind in self.layer_types:
            if kind not in ATTN_TYPES:
                raise ValueError(f"model.attn_type_list: unknown attention type {kind!r}; known: {ATTN_TYPES}")
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim:
            raise ValueError(
                f"model.rotary_dim must be even and in (0, head_dim={self.head_dim}], got {self.rotary_dim}"
            )
        if self.experts and not 1 <= self.top_k <= self.experts:
            raise ValueError(f"model.top_k must be in [1, experts={self.experts}], got {self.top_k}")
        if self.heads % self.kv_heads:
            raise ValueError(f"model.heads ({self.heads}) must be a multiple of model.kv_heads ({self.kv_heads})")

    @property
    def layer_types(self) -> list[str]:
        """The attention type of each layer (``attn_type_list``, or softmax everywhere when empty)."""
        return list(self.attn_type_list) or ["softmax"] * self.layers

    @property
    def alpha(self) -> float:
        return (2 * self.layers) ** 0.25 if self.residual_alpha is None else self.residual_alpha


@dataclass
class LMOutput:
    logits: torch.Tensor | None  # [B, T, vocab]; None when forward ran with return_logits=False
    loss: torch.Tensor | None = None  # training objective: lm_loss + aux_coef·aux_loss + z_coef·z_loss
    lm_loss: torch.Tensor | None = None  # mean cross-entropy over labels != -100 (0 when there are none)
    num_tokens: torch.Tensor | int = 0  # tokens that entered lm_loss (a device scalar: reading it waits)
    aux_loss: torch.Tensor | None = None  # load-balance loss, mean over MoE layers
    z_loss: torch.Tensor | None = None  # router z-loss, mean over MoE layers
    tokens_per_expert: torch.Tensor | None = None  # [layers with MoE, E] routed assignments
    dropped: torch.Tensor | None = None  # assignments dropped by the capacity limit, all layers


@dataclass
class Packing:
    """What every layer needs to know about the token layout of one forward."""

    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin [B, T, rotary_dim/2]
    cu_seqlens: torch.Tensor | None = None  # [N + 1] over the flattened B·T tokens, or None
    doc_ids: torch.Tensor | None = None  # [B, T] document of each token (packed), or None


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LMConfig, index: int):
        super().__init__()
        self.kind = cfg.layer_types[index]
        self.alpha, self.beta = cfg.alpha, cfg.residual_beta
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.norm_eps)
        if self.kind == "lightning":
            self.self_attn = LightningAttention(cfg.hidden, cfg.heads, cfg.head_dim, index, cfg.layers)
        elif self.kind == "lightnet":  # prefix-normalised keys carry the order: no positional encoding
            self.self_attn = TokenMixer(cfg.hidden, cfg.heads, cfg.head_dim, mixer="lightnet", causal=True,
                                        lrpe="none", num_axes=1)
        else:
            self.self_attn = SoftmaxAttention(cfg.hidden, cfg.heads, cfg.kv_heads, cfg.head_dim)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.norm_eps)
        if cfg.experts:
            self.mlp = MoE(cfg.hidden, cfg.ffn, cfg.experts, cfg.top_k, cfg.shared_ffn, cfg.capacity_factor)
        else:
            self.mlp = SwiGLU(cfg.hidden, cfg.ffn)

    def attend(self, h: torch.Tensor, packing: Packing) -> torch.Tensor:
        if self.kind == "lightning":
            return self.self_attn(h, cu_seqlens=packing.cu_seqlens)[0]
        if self.kind == "lightnet":
            return self.self_attn(h, None, packing.cu_seqlens)
        return self.self_attn(h, packing.rope, packing.cu_seqlens, packing.doc_ids)

    def feed_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats | None]:
        h = self.post_attention_layernorm(x)
        out = self.mlp(h)
        y, stats = out if isinstance(out, tuple) else (out, None)
        return self.residual(h, y), stats

    def residual(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """α·h + β·y in one kernel when β = 1 (MiniMax)."""
        return torch.add(y if self.beta == 1 else self.beta * y, h, alpha=self.alpha)

    def forward(self, x: torch.Tensor, packing: Packing) -> tuple[torch.Tensor, RouterStats | None]:
        h = self.input_layernorm(x)
        return self.feed_forward(self.residual(h, self.attend(h, packing)))


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
        self.summed_cross_entropy = summed_cross_entropy  # compile_layers swaps in a compiled one

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.cfg.init_std)
        elif isinstance(module, MoE):
            nn.init.normal_(module.gate_up, std=self.cfg.init_std)
            nn.init.normal_(module.down, std=self.cfg.init_std)

    def packing(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None) -> Packing:
        B, T = input_ids.shape
        if cu_seqlens is not None and cu_seqlens.numel() == B + 1:
            check_cu_seqlens(cu_seqlens, B, T)
            cu_seqlens = None  # one document per row: plain causal rows
        if cu_seqlens is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
            return Packing(rotary_cos_sin(positions, self.cfg.rotary_dim, self.cfg.rope_theta))
        check_cu_seqlens(cu_seqlens, B, T)
        positions = document_positions(cu_seqlens, B, T)
        rope = rotary_cos_sin(positions, self.cfg.rotary_dim, self.cfg.rope_theta)
        return Packing(rope, cu_seqlens, document_ids(cu_seqlens, B, T))

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        return_logits: bool = True,
        inputs_embeds: torch.Tensor | None = None,
    ) -> LMOutput:
        """input_ids, labels [B, T] (labels already shifted: the target of position t; -100 = ignore);
        cu_seqlens [N + 1] over the flattened B·T tokens for packed documents (see mm.layers.packing).
        With labels and ``return_logits=False`` the loss comes from :func:`linear_cross_entropy`,
        which never keeps the [B, T, vocab] logits (training takes this path). ``inputs_embeds``
        [B, T, hidden] replaces the token embeddings (the VLM splices image tokens into them)."""
        packing = self.packing(input_ids, cu_seqlens)
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        stats = []
        for layer in self.layers:
            x, layer_stats = layer(x, packing)
            if layer_stats is not None:
                stats.append(layer_stats)
        x = self.norm(x)
        out = LMOutput(self.lm_head(x) if return_logits or labels is None else None)
        if stats:
            out.aux_loss = torch.stack([s.aux_loss for s in stats]).mean()
            out.z_loss = torch.stack([s.z_loss for s in stats]).mean()
            out.tokens_per_expert = torch.stack([s.tokens_per_expert for s in stats])
            out.dropped = torch.stack([s.dropped for s in stats]).sum()
        if labels is not None:
            if out.logits is None:
                summed = linear_cross_entropy(x.flatten(0, -2), self.lm_head.weight, labels.flatten())
            else:
                summed = self.summed_cross_entropy(out.logits, labels)
            out.num_tokens = (labels != -100).sum()  # stays on the device: the host does not wait here
            out.lm_loss = summed / out.num_tokens.clamp(min=1)
            out.loss = out.lm_loss
            if stats:
                out.loss = out.loss + self.cfg.router_aux_coef * out.aux_loss + self.cfg.router_z_coef * out.z_loss
        return out

    def generate(self, prompts: list[list[int]], cfg=None) -> list[list[int]]:
        """Continue token-id prompts (see :func:`mm.models.lm_generate.generate`)."""
        from mm.models.lm_generate import generate

        return generate(self, prompts, cfg)


def compile_layers(model: LM) -> LM:
    """``torch.compile`` each decoder layer and the loss in place; parameter names and the state dict
    are unchanged.

    Per layer rather than the whole model, so layers of one kind share their compiled code and the
    lightning-attention op stays outside the graphs (see :mod:`mm.layers.lightning_attention`).
    Shapes start static; one that changes (the document count of packed batches) turns symbolic
    after one recompile rather than recompiling for every batch. The compiled cross-entropy (the loss
    of a forward that returns logits; training's, without them, is :func:`linear_cross_entropy`)
    reads the bf16 logits once, without eager's float32 copy of them and the float32
    log-probabilities it keeps for backward (8 bytes per logit: 8 GiB for 32K tokens of a 32K vocabulary).

    Dynamo resumes after the lightning op inside the attention module rather than restarting at each
    enclosing call (``nested_graph_breaks``): a lightning layer is two graphs, not five, and the
    gradient of the normalised input is summed in one eager add per layer instead of two. The
    setting is process-wide; it changes where compiled code resumes, not what it computes."""
    torch._dynamo.config.nested_graph_breaks = True
    for layer in model.layers:
        layer.compile()
    model.summed_cross_entropy = torch.compile(summed_cross_entropy)
    return model


def from_hf(path) -> LM:
    """Load a Hugging Face ``minimax`` directory (config.json + safetensors, sharded or not)."""
    from mm.models.lm_hf import load_hf

    return load_hf(path)


def to_hf(model: LM, path, max_shard_bytes: int = 5 * 2**30) -> None:
    """Write ``model`` as a Hugging Face ``minimax`` directory that transformers loads."""
    from mm.models.lm_hf import save_hf

    save_hf(model, path, max_shard_bytes)


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropy over labels != -100, computed in float32."""
    return nn.functional.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=-100,
                                       reduction="sum")

"""Decoding for :class:`mm.models.lm.LM`: packed prefill, then one token at a time from caches.

Lightning layers carry one [H, d, d] state per sequence (memory constant in context length),
causal LightNet layers their (z [H, d], S [H, d, d]) state (:mod:`mm.ops.lightnet_attn.decode`);
softmax layers a KV cache. Prompts of different lengths are prefilled packed (no padding enters
any state), then each row decodes at its own position. A decoding step updates the cache in place
and never waits on the device, so on CUDA it can be recorded once as a CUDA graph and replayed
(``GenerationConfig.cuda_graph``): one token's few hundred small kernels are otherwise all launch
overhead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from mm.cuda_graph import StepGraph
from mm.layers.rotary import rotary_cos_sin
from mm.models.lm import LM


@dataclass
class GenerationConfig:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0  # nucleus sampling: the smallest set of tokens whose probability reaches top_p
    eos_id: int | None = None  # a row stops after producing it
    seed: int | None = None  # sampling generator seed (None: torch's global RNG)
    cuda_graph: bool = False  # CUDA: replay the decoding step as a CUDA graph (the model in bf16/fp16)
    num_beams: int = 1  # > 1: beam search (mm.models.lm_beam_search), greedy only (temperature 0)
    length_penalty: float = 1.0  # beam search: hypotheses ranked by sum log p / new_tokens ** length_penalty

    def __post_init__(self):
        if self.max_new_tokens < 0 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"bad generation settings: max_new_tokens={self.max_new_tokens}, "
                             f"temperature={self.temperature}, top_p={self.top_p}")
        if self.num_beams < 1 or not math.isfinite(self.length_penalty):
            raise ValueError(f"bad beam search settings: num_beams={self.num_beams} (want >= 1), "
                             f"length_penalty={self.length_penalty} (want a finite number)")
        if self.num_beams > 1 and self.temperature != 0:
            raise ValueError(f"num_beams={self.num_beams} with temperature={self.temperature}: beam search is "
                             "greedy here (temperature 0); sample with num_beams=1")


@dataclass
class DecodeCache:
    lengths: torch.Tensor  # [B] tokens seen per row
    steps_left: int  # tokens the KV caches can still take (capacity - longest prompt), checked without a sync
    states: dict[int, torch.Tensor] = field(default_factory=dict)  # lightning layer -> [B, H, d, d] fp32
    # lightnet layer -> (z [B, H, d], S [B, H, d, d]) fp32: log Δ and diag(Δ)^{-1} S̃ of DESIGN §5
    lightnet: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    keys: dict[int, torch.Tensor] = field(default_factory=dict)  # softmax layer -> [B, H_kv, capacity, d]
    values: dict[int, torch.Tensor] = field(default_factory=dict)


@torch.no_grad()
def prefill(model: LM, prompts: list[list[int]], capacity: int,
            inputs_embeds: torch.Tensor | None = None) -> tuple[DecodeCache, torch.Tensor]:
    """Run the prompts packed in one row; return the caches and each prompt's last logits [B, V].
    ``inputs_embeds`` [1, total, hidden]: the packed prompts' embeddings (the VLM's, with images)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = model.embed_tokens.weight.device
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    ids = torch.tensor([t for p in prompts for t in p], device=device)[None]  # [1, total]
    cu_seqlens = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
    packing = model.packing(ids, cu_seqlens)
    doc = torch.repeat_interleave(torch.arange(len(prompts), device=device), lengths)  # [total] prompt of each token
    pos = torch.arange(ids.shape[1], device=device) - cu_seqlens[doc]  # position inside its prompt
    cache = DecodeCache(lengths.clone(), steps_left=capacity - max(len(p) for p in prompts))
    x = model.embed_tokens(ids) if inputs_embeds is None else inputs_embeds
    for i, layer in enumerate(model.layers):
        h = layer.input_layernorm(x)
        if layer.kind == "lightning":
            attn, cache.states[i] = layer.self_attn(h, cu_seqlens=cu_seqlens, return_state=True)
        elif layer.kind == "lightnet":  # no positional encoding (mm.models.lm.DecoderLayer)
            attn, cache.lightnet[i] = layer.self_attn.prefill(h, None, cu_seqlens)
        else:
            attn, (k, v) = layer.self_attn(h, packing.rope, packing.cu_seqlens, packing.doc_ids, return_kv=True)
            shape = (len(prompts), k.shape[1], capacity, k.shape[3])  # k [1, H_kv, total, d]
            cache.keys[i], cache.values[i] = k.new_zeros(shape), v.new_zeros(shape)
            cache.keys[i][doc, :, pos] = k[0].transpose(0, 1)
            cache.values[i][doc, :, pos] = v[0].transpose(0, 1)
        x, _ = layer.feed_forward(layer.residual(h, attn))
    last = cu_seqlens[1:] - 1
    logits = model.lm_head(model.norm(x[0, last]))
    return cache, logits


class Decoder:
    """``decoder(tokens)`` feeds one token per row (tokens [B]) at each row's own position and returns
    the logits [B, V]; the cache is updated in place. With ``cuda_graph`` the second call is recorded
    as a CUDA graph and later calls replay it: the logits are then the graph's buffer, overwritten by
    the next call."""

    def __init__(self, model: LM, cache: DecodeCache, cuda_graph: bool = False):
        self.model, self.cache = model, cache
        hint = "a float32 model's experts read their group sizes on the host: decode in bfloat16"
        self.graph = StepGraph(self._advance, switch_off="cuda_graph=False", hint=hint) if cuda_graph else None

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        cache = self.cache
        if cache.keys and cache.steps_left <= 0:
            raise ValueError(f"decode cache full: {next(iter(cache.keys.values())).shape[2]} tokens per row")
        cache.steps_left -= 1
        return self.graph(tokens) if self.graph is not None else self._advance(tokens)

    def _advance(self, tokens: torch.Tensor) -> torch.Tensor:
        """The device work of one step: no host reads, every cache tensor written in place."""
        model, cache = self.model, self.cache
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        positions = cache.lengths
        rope = rotary_cos_sin(positions[:, None], model.cfg.rotary_dim, model.cfg.rope_theta)  # [B, 1, r/2]
        x = model.embed_tokens(tokens)[:, None]  # [B, 1, hidden]
        for i, layer in enumerate(model.layers):
            h = layer.input_layernorm(x)
            if layer.kind == "lightning":
                attn, state = layer.self_attn.step(h[:, 0], cache.states[i])
                cache.states[i].copy_(state)
                attn = attn[:, None]
            elif layer.kind == "lightnet":
                attn, state = layer.self_attn.step(h[:, 0], cache.lightnet[i])
                for kept, new in zip(cache.lightnet[i], state, strict=True):
                    kept.copy_(new)
                attn = attn[:, None]
            else:
                q, k, v = layer.self_attn.qkv(h, rope)  # q [B, H, 1, d], k/v [B, Hkv, 1, d]
                keys, values = cache.keys[i], cache.values[i]
                keys[rows, :, positions] = k[:, :, 0]
                values[rows, :, positions] = v[:, :, 0]
                valid = torch.arange(keys.shape[2], device=x.device)[None] <= positions[:, None]  # [B, capacity]
                attn = layer.self_attn.output(q, keys, values, valid[:, None])
            x, _ = layer.feed_forward(layer.residual(h, attn))
        cache.lengths += 1
        return model.lm_head(model.norm(x[:, 0]))


def sample(logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] -> next tokens [B] (greedy, or temperature + top-p sampling)."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    probs = (logits.float() / cfg.temperature).softmax(-1)
    if cfg.top_p < 1:
        sorted_probs, order = probs.sort(-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= cfg.top_p  # mass before this token already enough
        sorted_probs = sorted_probs.masked_fill(outside, 0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(model: LM, prompts: list[list[int]], cfg: GenerationConfig | None = None,
             inputs_embeds: torch.Tensor | None = None) -> list[list[int]]:
    """Continue each prompt; returns the new tokens of each row (up to and including eos_id): sampled
    or greedy, or by beam search when ``cfg.num_beams > 1`` (:func:`mm.models.lm_beam_search.beam_search`).
    ``inputs_embeds``: the packed prompts' embeddings, see :func:`prefill`."""
    from mm.models.lm_beam_search import beam_search

    cfg = cfg or GenerationConfig()
    was_training = model.training
    model.eval()
    cache, logits = prefill(model, prompts, capacity=max(map(len, prompts)) + cfg.max_new_tokens,
                            inputs_embeds=inputs_embeds)
    out = (beam_search if cfg.num_beams > 1 else _sample_tokens)(model, cache, logits, cfg)
    model.train(was_training)
    return out


def _sample_tokens(model: LM, cache: DecodeCache, logits: torch.Tensor, cfg: GenerationConfig) -> list[list[int]]:
    """Sampled or greedy decoding from the prefilled ``cache`` and last ``logits`` [B, V]."""
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(model.embed_tokens.weight.device).manual_seed(cfg.seed)
    decode = Decoder(model, cache, cuda_graph=cfg.cuda_graph)
    out: list[list[int]] = [[] for _ in range(len(cache.lengths))]
    done = torch.zeros(len(out), dtype=torch.bool, device=logits.device)
    for step in range(cfg.max_new_tokens):
        tokens = sample(logits, cfg, generator)
        for row in (~done).nonzero()[:, 0].tolist():
            out[row].append(int(tokens[row]))
        if cfg.eos_id is not None:
            done |= tokens == cfg.eos_id
        if bool(done.all()) or step == cfg.max_new_tokens - 1:
            break
        logits = decode(tokens)
    return out

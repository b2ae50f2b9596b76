"""Decoding for :class:`mm.models.vlm.VLM`: the prompts (with their image placeholders) are embedded
packed, the visual tokens spliced in, and the LM's decoder (:mod:`mm.models.lm_generate`) continues
from those embeddings: packed prefill, then one token at a time from caches."""

from __future__ import annotations

import torch

from mm.models.lm_generate import GenerationConfig
from mm.models.lm_generate import generate as lm_generate
from mm.models.vlm import VLM


@torch.no_grad()
def generate(model: VLM, prompts: list[list[int]], pixel_values: torch.Tensor | None = None,
             image_sizes: torch.Tensor | None = None, cfg: GenerationConfig | None = None) -> list[list[int]]:
    """Continue each prompt; the images (tiles as for :meth:`VLM.encode_images`) fill the prompts'
    placeholders in order. Returns the new tokens of each row (greedy unless ``cfg`` samples)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    was_training = model.training
    model.eval()
    device = model.lm.embed_tokens.weight.device
    packed = torch.tensor([t for p in prompts for t in p], device=device)[None]  # [1, total]
    embeds = model.embed(packed, pixel_values, image_sizes)
    out = lm_generate(model.lm, prompts, cfg, inputs_embeds=embeds)
    model.train(was_training)
    return out

"""Beam search for :class:`mm.models.lm.LM` (``GenerationConfig.num_beams > 1``), with the semantics of
Hugging Face transformers' ``generate(num_beams=K, do_sample=False)`` and its defaults
(``early_stopping=False``, ``length_penalty=1.0``; transformers 5.23, ``GenerationMixin._beam_search``).

Each prompt keeps K live beams, all starting as the prompt. At each step the 2K best continuations of
its live beams by total log-probability are taken (2K, so that K stay live even if K of them end in
eos). Of these, the ones among the first K that end in eos — at the last step (``max_new_tokens``)
every one of the first K — are finished hypotheses, scored

    score(y) = sum_t log p(y_t | prompt, y_<t) / |y| ** length_penalty                        (1)

with |y| the generated tokens, eos included and the prompt excluded; a prompt keeps its K best. The
K best continuations that do not end in eos live on, and the cache rows of every kind (lightning
states, KV caches, any other per-row state of :class:`~mm.models.lm_generate.DecodeCache`) are
gathered to follow them. A prompt stops taking hypotheses once it holds K and its best live beam's
total log-probability over its current length ** length_penalty does not beat the worst of them
(transformers' test for ``early_stopping=False``: an exact bound for length_penalty <= 0, a heuristic
above, where a longer continuation could still score higher); the search ends when every prompt has
stopped, or at ``max_new_tokens``. The result is each prompt's best hypothesis under (1).
"""

from __future__ import annotations

from dataclasses import fields, replace

import torch
from torch.utils._pytree import tree_leaves, tree_map_only

from mm.models.lm import LM
from mm.models.lm_generate import DecodeCache, Decoder, GenerationConfig


def select_rows(cache: DecodeCache, rows: torch.Tensor) -> DecodeCache:
    """A new cache holding the rows ``rows`` [B'] of ``cache`` (rows may repeat)."""
    return replace(cache, **{f.name: tree_map_only(torch.Tensor, lambda t: t.index_select(0, rows),
                                                   getattr(cache, f.name)) for f in fields(cache)})


def reorder_rows_(cache: DecodeCache, rows: torch.Tensor) -> None:
    """Make row i of every cache tensor its row ``rows[i]``, in place (the storage a recorded CUDA graph
    of the decoding step reads)."""
    for f in fields(cache):
        for t in tree_leaves(getattr(cache, f.name)):
            if isinstance(t, torch.Tensor):
                t.copy_(t.index_select(0, rows))


@torch.no_grad()
def beam_search(model: LM, cache: DecodeCache, logits: torch.Tensor, cfg: GenerationConfig) -> list[list[int]]:
    """Continue the prefilled prompts (``cache`` and their last ``logits`` [P, V] from
    :func:`~mm.models.lm_generate.prefill`) by beam search; returns each prompt's best hypothesis under
    (1) (its new tokens, eos included)."""
    num_prompts, vocab = logits.shape
    k, steps, device = cfg.num_beams, cfg.max_new_tokens, logits.device
    if steps == 0:
        return [[] for _ in range(num_prompts)]
    offsets = torch.arange(num_prompts, device=device)[:, None] * k  # [P, 1] first row of each prompt's beams
    decode = Decoder(model, select_rows(cache, torch.arange(num_prompts, device=device).repeat_interleave(k)),
                     cuda_graph=cfg.cuda_graph)
    logits = logits.repeat_interleave(k, 0)  # [P*K, V]
    # live beams: total log-probability and tokens; copies of the prompt count once (the others -inf)
    live = torch.full((num_prompts, k), float("-inf"), device=device)
    live[:, 0] = 0
    live_tokens = torch.zeros((num_prompts, k, 0), dtype=torch.long, device=device)
    # finished hypotheses: score (1), tokens (padded to max_new_tokens), length; best first
    done = torch.full((num_prompts, k), float("-inf"), device=device)
    done_tokens = torch.zeros((num_prompts, k, steps), dtype=torch.long, device=device)
    done_lengths = torch.zeros((num_prompts, k), dtype=torch.long, device=device)
    taking = torch.ones(num_prompts, dtype=torch.bool, device=device)  # the prompt still takes hypotheses
    first_k = torch.arange(2 * k, device=device) < k
    for length in range(1, steps + 1):
        total = live[:, :, None] + logits.float().log_softmax(-1).view(num_prompts, k, vocab)
        top, index = total.view(num_prompts, k * vocab).topk(2 * k)  # [P, 2K], best first
        beam, token = index // vocab, index % vocab
        tokens = torch.cat([live_tokens.gather(1, beam[:, :, None].expand(-1, -1, length - 1)), token[:, :, None]], 2)
        ends = torch.full_like(token, length == steps, dtype=torch.bool)
        if cfg.eos_id is not None:
            ends |= token == cfg.eos_id
        finished = torch.where(ends & first_k & taking[:, None], top / length ** cfg.length_penalty, float("-inf"))
        done, best = torch.cat([done, finished], 1).topk(k)
        padded = torch.nn.functional.pad(tokens, (0, steps - length))
        done_tokens = torch.cat([done_tokens, padded], 1).gather(1, best[:, :, None].expand(-1, -1, steps))
        done_lengths = torch.cat([done_lengths, torch.full_like(token, length)], 1).gather(1, best)
        if length == steps:
            break
        live, keep = torch.where(ends, float("-inf"), top).topk(k)  # at most K of the 2K end: K live on
        live_tokens = tokens.gather(1, keep[:, :, None].expand(-1, -1, length))
        reorder_rows_(decode.cache, (beam.gather(1, keep) + offsets).flatten())
        # done[:, -1] is the worst hypothesis kept, -inf while fewer than K
        taking &= live[:, 0] / length ** cfg.length_penalty > done[:, -1]
        if not bool(taking.any()):
            break
        logits = decode(token.gather(1, keep).flatten())
    lengths = done_lengths[:, 0].tolist()
    return [row[:n] for row, n in zip(done_tokens[:, 0].tolist(), lengths, strict=True)]

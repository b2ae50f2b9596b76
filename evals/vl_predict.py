"""Predictions of a trained VLM over eval shards, in the line formats of :mod:`evals.records`.

    captions  {"id": key, "prediction": str, "references": [every caption of the sample]}
    vqa       {"id": "key/i", "prediction": str, "answers": [10 str], "answer_type": str}
              (one record per question of the sample; a sample with fewer than ten human answers
              — the synthetic set has one — has them repeated in turn up to ten, so the official
              leave-one-out accuracy of an exact match is 1)

Generation is greedy, or beam search with ``num_beams`` > 1 (:mod:`mm.models.lm_beam_search`), from
the prompt template of the run's config, batched; ``blind`` blanks the images (every tile the mean
colour) with the same token layout: the blind baseline. Images are decoded with the run's first
source's ``image`` settings: with ``resize: none`` each keeps its own size and is tiled by its own
any-res grid pinpoint, as in training. Under
torchrun each rank generates every world_size-th item and the records are gathered on every rank.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from data_pipelines.decode.image import decode_image
from data_pipelines.errors import SampleError
from data_pipelines.readers.image_text import IMAGE_EXTS, load_json
from data_pipelines.stateful import ResumableLoader, ShardStream, fixed_batches, require
from data_pipelines.stream import one_pass
from data_pipelines.tokenizers import load_tokenizer
from mm.models.lm_generate import GenerationConfig
from mm.models.vlm import VLM
from mm.models.vlm_generate import generate
from mm.models.vlm_prompt import VLBatcher

TASKS = ("caption", "vqa")
NUM_ANSWERS = 10


class _EvalReader:
    """Every caption / every question of a sample (the training readers pick one per visit)."""

    def __init__(self, task: str, image_cfg):
        self.task, self.image_cfg = task, image_cfg
        self.wanted = {*IMAGE_EXTS, "json", "txt"}

    def decode(self, sample: dict, rng: random.Random) -> tuple:
        image = decode_image(require(sample, *IMAGE_EXTS), self.image_cfg)
        meta = load_json(sample)
        if self.task == "caption":
            refs = meta.get("captions") or [require(sample, "txt").decode("utf-8", errors="replace")]
            return sample["__key__"], image, [str(r) for r in refs]
        pairs = meta.get("qa", [meta] if "question" in meta else [])
        if not pairs:
            raise SampleError("missing_key", "json has no question")
        return sample["__key__"], image, pairs

    def batches(self, items, batch_size: int, carry: int, finite: bool):
        return fixed_batches(items, batch_size, list, finite)


def load_vlm(model_path: str | Path, device: torch.device):
    """(VLM in eval mode, tokenizer, run config) of a run directory (latest complete checkpoint) or a
    checkpoint directory of the ``vl`` recipe."""
    from mm.train.checkpoint import CONFIG, CheckpointManager, is_complete, load_weights
    from mm.train.recipe import load_recipe_config

    path = Path(model_path)
    if (path / "checkpoints").is_dir():
        latest = CheckpointManager(path / "checkpoints").latest()
        if latest is None:
            raise ValueError(f"{path}: the run has no complete checkpoint")
        path = latest.path
    if not is_complete(path):
        raise ValueError(f"{model_path}: neither a run nor a complete checkpoint (config.yaml + COMPLETE)")
    cfg = load_recipe_config(path / CONFIG)
    if cfg.recipe != "vl":
        raise ValueError(f"{path / CONFIG}: recipe {cfg.recipe!r} is not a vision-language model (want 'vl')")
    cfg.model.vision.checkpoint = None  # the weights come from the checkpoint, not the tower's source file
    model = VLM(cfg.model)
    load_weights(path, model)
    return model.to(device).eval(), load_tokenizer(cfg.tokenizer, cfg.tokenizer_eos), cfg


def _items(task: str, shards, image_cfg, batch_size: int) -> list[tuple]:
    """(id, uint8 image, question or None, references/answers, answer type) in shard order."""
    stream = one_pass(shards, batch_size, rank=0, world_size=1)
    reader = ResumableLoader(ShardStream(stream, _EvalReader(task, image_cfg)))
    items = []
    for batch in reader:
        for key, image, extra in batch:
            if task == "caption":
                items.append((key, image, None, extra, None))
                continue
            for i, qa in enumerate(extra):
                answers = [str(a) for a in (qa.get("answers") or [qa.get("answer", "")])]
                if len(answers) < NUM_ANSWERS:
                    answers = [answers[j % len(answers)] for j in range(NUM_ANSWERS)]
                kind = qa.get("answer_type", qa.get("type"))
                items.append((f"{key}/{i}", image, str(qa.get("question", "")), answers, kind))
    return items


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def predict(model_path, shards, task: str, *, batch_size: int, max_new_tokens: int, num_beams: int = 1,
            blind: bool = False, device=None) -> list[dict]:
    """Records (see the module docstring) for every caption sample / VQA question of ``shards``."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if batch_size < 1 or max_new_tokens < 1 or num_beams < 1:
        raise ValueError(f"batch_size, max_new_tokens and num_beams must be >= 1, got {batch_size}, "
                         f"{max_new_tokens}, {num_beams}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, tokenizer, cfg = load_vlm(model_path, device)
    batcher = VLBatcher(tokenizer, cfg.prompt, cfg.model.image, cfg.model.image_token_id, model.tokens_per_side)
    decode_cfg = cfg.data.sources[0].image
    rank, world = _world()
    items = _items(task, shards, decode_cfg, batch_size)
    mine = items[rank::world]
    gen = GenerationConfig(max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id, num_beams=num_beams)
    records = []
    for start in range(0, len(mine), batch_size):
        chunk = mine[start:start + batch_size]
        texts = [batcher.text(task, question) for _, _, question, _, _ in chunk]
        processed, prompts = batcher.prompts([image for _, image, _, _, _ in chunk], texts, blind=blind)
        outs = generate(model, prompts, processed.pixel_values.to(device), processed.image_sizes, gen)
        for (key, _, _, truth, answer_type), out in zip(chunk, outs, strict=True):
            text = tokenizer.decode([t for t in out if t != tokenizer.eos_id]).strip()
            if task == "caption":
                records.append({"id": key, "prediction": text, "references": truth})
            else:
                records.append({"id": key, "prediction": text, "answers": truth, "answer_type": answer_type})
    if world > 1:
        import torch.distributed as dist

        gathered = [None] * world
        dist.all_gather_object(gathered, records)
        records = [r for i in range(len(items)) for r in [gathered[i % world][i // world]]]
    return records

"""Recipe `vl`: vision-language continued training (MiniMax-VL-01 style, DESIGN §4).

Data: image-text (caption) and VQA shards, streamed by the readers of ``data_pipelines`` and mixed
batch by batch with fixed weights (:class:`data_pipelines.mix.WeightedMix`). Each sample becomes a
prompt with its image's placeholders (:mod:`mm.models.vlm_prompt`) and is trained on its answer.
With ``image.resize: none`` a source's images keep their own sizes and any-res tiles each one by its
own grid pinpoint: one batch mixes images of different tile and visual-token counts.

Stages: ``stages`` is a list of ``{steps, train}``; ``train`` names the parts that learn in that
stage (``adapter`` = projector + image_newline, ``lm``, ``vision``), the others are frozen
(``requires_grad`` off, so no gradient is computed for them and AdamW leaves them and their
moments alone). The classic schedule: adapter-only warm-up, then adapter + LM. Per-part learning
rates come from ``optim.lr_scale`` (e.g. ``{adapter: 10}``). A part no stage trains is frozen
from the start and stays out of the optimizer.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from data_pipelines.decode.image import ImageDecodeConfig
from data_pipelines.mix import WeightedMix
from data_pipelines.readers.image_text import ImageTextReaderConfig, build_image_text_reader
from data_pipelines.readers.vqa import VQAReaderConfig, build_vqa_reader
from data_pipelines.stream import StreamConfig, one_pass
from data_pipelines.tokenizers import load_tokenizer
from mm.config import ConfigError
from mm.models.vlm import VLM, VLMConfig
from mm.models.vlm_prompt import PromptConfig, VLBatcher, to_uint8
from mm.train.config import RecipeConfig
from mm.train.recipe import Recipe, StepOutput

KINDS = ("caption", "vqa")
PARTS = {"vision": ("vision.",), "adapter": ("adapter.", "image_newline"), "lm": ("lm.",)}


@dataclass
class VLSourceConfig:
    name: str = "caption"
    kind: str = "caption"  # caption (image-text shards) | vqa (image + question/answers shards)
    weight: float = 1.0  # share of the batches drawn from this source (weight / sum of weights)
    stream: StreamConfig = field(default_factory=StreamConfig)
    # decoding: a fixed size (center_crop/squash), or resize: none to keep each image's own size, so
    # that any-res (model.image.anyres) tiles every image by its own best-fitting grid pinpoint
    image: ImageDecodeConfig = field(default_factory=ImageDecodeConfig)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"data.sources[{self.name}].kind must be one of {KINDS}, got {self.kind!r}")
        if not self.weight >= 0:
            raise ValueError(f"data.sources[{self.name}].weight must be >= 0, got {self.weight}")


@dataclass
class VLDataConfig:
    sources: list[VLSourceConfig] = field(default_factory=list)
    seed: int = 0  # seeds the choice of source for each batch

    def __post_init__(self):
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data.sources: names must be unique, got {names}")


@dataclass
class VLStageConfig:
    steps: int = 0  # optimizer steps of this stage; 0 in the last stage: until train.steps
    train: list[str] = field(default_factory=lambda: ["adapter", "lm"])  # parts that learn: adapter, lm, vision

    def __post_init__(self):
        unknown = sorted(set(self.train) - set(PARTS))
        if unknown or not self.train:
            raise ValueError(f"stages[].train must name some of {sorted(PARTS)}, got {self.train}")
        if self.steps < 0:
            raise ValueError(f"stages[].steps must be >= 0, got {self.steps}")


@dataclass
class VLEvalConfig:
    caption_shards: list[str] = field(default_factory=list)  # held-out image-text shards (loss)
    vqa_shards: list[str] = field(default_factory=list)  # held-out VQA shards (loss)
    batches: int = 4  # held-out batches per kind (of the first source's batch size)

    def __post_init__(self):
        if self.batches < 1:
            raise ValueError(f"eval.batches must be >= 1, got {self.batches}")


@dataclass
class VLRecipeConfig(RecipeConfig):
    recipe: str = "vl"
    tokenizer: str = "byte"  # "byte" or a tokenizer.json
    tokenizer_eos: str | None = None
    init: str | None = None  # start from a LLaVA-NeXT folder (mm.models.vlm.from_hf) whose shapes fit model
    init_lm: str | None = None  # start the LM from a Hugging Face minimax folder (mm.models.lm.from_hf)
    model: VLMConfig = field(default_factory=VLMConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    data: VLDataConfig = field(default_factory=VLDataConfig)
    stages: list[VLStageConfig] = field(default_factory=lambda: [VLStageConfig()])
    eval: VLEvalConfig = field(default_factory=VLEvalConfig)
    # share of training samples whose image is blanked (every tile the mean colour, as the blind
    # baseline blanks them): the model learns the text prior for a blank image, so the blind
    # baseline is that prior rather than the model's guess on an input it never saw
    blank_images: float = 0.0
    # > 0: training samples packed whole into rows of at most this many tokens, attention kept per
    # sample (mm.models.vlm_packing); pays when sample lengths vary (README: "Packing"). 0: one a row
    pack_tokens: int = 0

    def __post_init__(self):
        if not 0 <= self.blank_images < 1:
            raise ValueError(f"blank_images must be in [0, 1), got {self.blank_images}")
        if self.pack_tokens and self.pack_tokens < self.prompt.max_tokens:
            raise ValueError(f"pack_tokens={self.pack_tokens} must be 0 (off) or >= prompt.max_tokens="
                             f"{self.prompt.max_tokens}, so that every sample fits a row")
        if not self.data.sources:
            raise ValueError("data.sources: give at least one image-text or VQA source")
        if not self.stages:
            raise ValueError("stages: give at least one stage")
        if any(s.steps == 0 for s in self.stages[:-1]):
            raise ValueError("stages: only the last stage may have steps: 0 (until the end)")
        if self.train.cuda_graph:
            raise ValueError("train.cuda_graph is not supported by the vl recipe (image token counts vary)")


def stage_at(stages: list[VLStageConfig], step: int) -> VLStageConfig:
    """The stage that optimizer step ``step`` (0-based) belongs to; the last one goes on."""
    end = 0
    for stage in stages:
        end += stage.steps
        if step < end:
            return stage
    return stages[-1]


def _unit_hash(seed: int, key: str, text: str) -> float:
    """A number in [0, 1) fixed by (seed, key, text)."""
    digest = hashlib.blake2b(f"{seed}:{key}:{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def set_trainable(model: VLM, parts: set[str]) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(any(name.startswith(PARTS[p]) for p in parts))


class VLRecipe(Recipe):
    config_cls = VLRecipeConfig
    unit = "samples"
    shard_keys = ("data.sources.*.stream.shards", "eval.caption_shards", "eval.vqa_shards")

    def __init__(self, cfg: VLRecipeConfig):
        super().__init__(cfg)
        try:
            self.tokenizer = load_tokenizer(cfg.tokenizer, cfg.tokenizer_eos)
        except ValueError as err:
            raise ConfigError(f"tokenizer: {err}") from None
        vocab = max(self.tokenizer.vocab_size, cfg.model.image_token_id + 1)
        if cfg.model.lm.vocab_size < vocab:
            raise ConfigError(f"model.lm.vocab_size {cfg.model.lm.vocab_size} cannot hold the tokenizer's "
                             f"{self.tokenizer.vocab_size} ids and image_token_id {cfg.model.image_token_id}")
        if cfg.model.image_token_id < self.tokenizer.vocab_size:
            raise ConfigError(f"model.image_token_id {cfg.model.image_token_id} is a token of the tokenizer "
                             f"({cfg.tokenizer}, {self.tokenizer.vocab_size} ids): text could forge image tokens")
        self.batcher: VLBatcher | None = None

    def build_model(self) -> nn.Module:
        try:
            model = VLM(self.cfg.model)
        except (ValueError, FileNotFoundError) as err:  # a vision tower name, file or size that does not fit
            raise ConfigError(f"model: {err}") from None
        starts = ((self.cfg.init, model, "mm.models.vlm"), (self.cfg.init_lm, model.lm, "mm.models.lm"))
        for path, target, load in starts:
            if path:
                start = importlib.import_module(load).from_hf(path)
                try:
                    target.load_state_dict(start.state_dict())
                except RuntimeError as err:
                    raise ConfigError(f"{path}: does not fit the configured model: {err}") from None
        set_trainable(model, {p for s in self.cfg.stages for p in s.train})  # the optimizer takes these
        self.batcher = VLBatcher(self.tokenizer, self.cfg.prompt, self.cfg.model.image,
                                 self.cfg.model.image_token_id, model.tokens_per_side)
        return model

    def start_step(self, model: nn.Module, step: int) -> None:
        set_trainable(model, set(stage_at(self.cfg.stages, step).train))

    def parallelize(self, model: nn.Module, parallel, device: torch.device):
        """DDP that looks for unused trainable parameters each step: what a step uses depends on its
        batch (one without images runs neither the tower nor the adapter) and on the config
        (``image_newline`` only with any-res tiles; a trained tower's blocks after ``vision.layer``,
        and its final norm, never). FSDP2 (``parallel.fsdp``) needs no such search: parameters
        without a gradient on every rank alike are left out of the reduce-scatter; it does need
        every rank to run the tower each step, which holds as every training sample has an image."""
        from mm.train.parallel import data_parallel

        return data_parallel(model, parallel, device, find_unused_parameters=True)

    def _reader(self, source: VLSourceConfig, stream: StreamConfig):
        if source.kind == "caption":
            return build_image_text_reader(ImageTextReaderConfig(stream=stream, image=source.image, normalize="none"))
        return build_vqa_reader(VQAReaderConfig(stream=stream, image=source.image, normalize="none"))

    def build_train_data(self):
        sources = {s.name: self._reader(s, s.stream) for s in self.cfg.data.sources}
        return WeightedMix(sources, {s.name: s.weight for s in self.cfg.data.sources}, seed=self.cfg.data.seed)

    def device_batch(self, batch: dict) -> dict:
        """Training batch -> model inputs, a ``blank_images`` share of the images blanked (chosen by
        a hash of sample key and answer: the same on every run and after a resume)."""
        share = self.cfg.blank_images
        blank = [_unit_hash(self.cfg.run.seed, key, answer) < share
                 for key, answer in zip(batch["key"], batch.get("answer", batch.get("text")), strict=True)]
        return self.inputs(batch, blank if share else None, self.cfg.pack_tokens)

    def inputs(self, batch: dict, blank: list[bool] | None = None, pack_tokens: int = 0) -> dict:
        """Reader batch -> model inputs (tiles, prompt ids with placeholders, answer-only labels;
        packed rows with ``cu_seqlens`` when ``pack_tokens`` > 0)."""
        if "question" in batch:
            texts = [self.batcher.text("vqa", q) for q in batch["question"]]
            answers = batch["answer"]
        else:
            texts, answers = [self.batcher.text("caption")] * len(batch["text"]), batch["text"]
        return self.batcher.training_batch(to_uint8(batch["image"]), texts, answers, blank, pack_tokens)

    def loss(self, model: nn.Module, batch: dict) -> StepOutput:
        out = model(batch["input_ids"], batch["pixel_values"], batch["image_sizes"], labels=batch["labels"],
                    return_logits=False, cu_seqlens=batch.get("cu_seqlens"))
        samples = batch["image_sizes"].shape[0]  # one image a sample; packed rows hold several samples
        return StepOutput(out.loss, samples, {"answer_tokens": out.num_tokens.float()})

    def _heldout(self, kind: str, shards: list[str]):
        first = self.cfg.data.sources[0]
        stream = one_pass(shards, first.stream.batch_size, rank=0, world_size=1)
        for i, batch in enumerate(self._reader(VLSourceConfig(name=kind, kind=kind, image=first.image), stream)):
            if i == self.cfg.eval.batches:
                break
            yield batch

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Held-out answer loss per kind, with the images and blind (images blanked): the gap is what
        the model reads off the image."""
        metrics = {}
        for kind, shards in (("caption", self.cfg.eval.caption_shards), ("vqa", self.cfg.eval.vqa_shards)):
            if not shards:
                continue
            for blind in (False, True):
                nll, n = 0.0, 0
                for batch in self._heldout(kind, shards):
                    inputs = self.inputs(batch)
                    if blind:
                        inputs["pixel_values"].zero_()
                    inputs = {k: v.to(device) for k, v in inputs.items()}
                    out = model(inputs["input_ids"], inputs["pixel_values"], inputs["image_sizes"],
                                labels=inputs["labels"], return_logits=False)
                    count = int(out.num_tokens)
                    nll += out.lm_loss.item() * count
                    n += count
                metrics[f"{kind}/{'blind_' if blind else ''}loss"] = nll / max(n, 1) if n else math.nan
        return metrics

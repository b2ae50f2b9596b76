"""Recipe `lm`: next-token language modelling on packed text shards."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from data_pipelines.readers.text import TextReaderConfig, build_text_reader
from data_pipelines.stream import one_pass
from data_pipelines.tokenizers import load_tokenizer
from mm.config import ConfigError
from mm.distributed.mesh import ParallelConfig, parallelize_lm
from mm.models.lm import LM, LMConfig, compile_layers
from mm.train.config import RecipeConfig
from mm.train.recipe import Recipe, StepOutput, nothing_to_evaluate


@dataclass
class LMEvalConfig:
    shards: list[str] = field(default_factory=list)  # held-out text shards; empty: no evaluation
    batches: int = 16  # held-out batches (of data.stream.batch_size rows of data.seq_len tokens)

    def __post_init__(self):
        if self.batches < 1:
            raise ValueError(f"eval.batches must be >= 1, got {self.batches}")


@dataclass
class LMRecipeConfig(RecipeConfig):
    recipe: str = "lm"
    tokenizer: str = "byte"  # "byte" (no files needed) or a tokenizer.json (e.g. from `mm tokenizer train`)
    tokenizer_eos: str | None = None  # end-of-text token of a tokenizer.json (default: <eos>, </s>, ...)
    compile: bool = False  # torch.compile each decoder layer (GPU: fuses the elementwise work; slow start)
    # true: packed documents neither attend nor pass state across their boundaries (cu_seqlens);
    # false: each row is one causal stream with EOS between documents (as GPT-2 and Llama pretraining),
    # which keeps every batch's shapes fixed, as train.cuda_graph needs
    document_masking: bool = True
    model: LMConfig = field(default_factory=LMConfig)
    data: TextReaderConfig = field(default_factory=TextReaderConfig)
    eval: LMEvalConfig = field(default_factory=LMEvalConfig)

    def __post_init__(self):
        if self.train.cuda_graph and self.document_masking:
            raise ValueError("train.cuda_graph needs document_masking: false: the boundaries of packed "
                             "documents change from batch to batch and the kernels read them on the host")


def router_metrics(out) -> dict[str, torch.Tensor]:
    """Load figures of the MoE layers: worst expert's load over the mean (averaged over layers), each
    expert's share of the assignments (over all layers), dropped share, aux losses.
    Device scalars: the trainer reads them after queueing the backward."""
    if out.tokens_per_expert is None:
        return {}
    load = out.tokens_per_expert.float()  # [layers, E]
    assigned = load.sum().clamp(min=1)
    share = load.sum(0) / assigned
    return {
        "lm_loss": out.lm_loss.detach().float(), "router/aux_loss": out.aux_loss.detach(),
        "router/z_loss": out.z_loss.detach(),
        "router/max_load": (load.max(-1).values / load.mean(-1).clamp(min=1e-9)).mean(),
        "router/dropped_frac": out.dropped.float() / assigned,
        **{f"router/expert_share/{e}": share[e] for e in range(share.numel())},
    }


class LMRecipe(Recipe):
    config_cls = LMRecipeConfig
    unit = "tok"
    shard_keys = ("data.stream.shards", "eval.shards")

    def __init__(self, cfg: LMRecipeConfig):
        super().__init__(cfg)
        self.tokenizer = load_tokenizer(cfg.tokenizer, cfg.tokenizer_eos)
        if cfg.model.vocab_size < self.tokenizer.vocab_size:
            raise ValueError(f"model.vocab_size {cfg.model.vocab_size} is below the tokenizer's vocabulary "
                             f"({self.tokenizer.vocab_size}, {cfg.tokenizer})")
        self._unigram_loss: float | None = None
        self._sp: tuple[int, int] | None = None  # (sp rank, sp size) under sequence parallelism
        self._dp: tuple[int, int] | None = None  # (dp rank, dp size): the data split when sp > 1

    def build_model(self) -> nn.Module:
        model = LM(self.cfg.model)
        return compile_layers(model) if self.cfg.compile else model

    def parallelize(self, model: nn.Module, parallel: ParallelConfig, device: torch.device):
        """DDP/FSDP when sp = ep = 1; otherwise :func:`mm.distributed.mesh.parallelize_lm`: LASP sequence
        parallelism (the sp ranks of one replica read the same rows and each feeds its contiguous chunk
        of data.seq_len / sp tokens) and/or expert parallelism (each rank of an ep block keeps E / ep
        experts of every MoE layer; tokens travel by all_to_all; everything else is replicated)."""
        if parallel.sp == 1 and parallel.ep == 1:
            return super().parallelize(model, parallel, device)
        if self.cfg.compile:
            raise ConfigError(f"compile: true is not supported with parallel.sp={parallel.sp}, "
                              f"parallel.ep={parallel.ep} yet; set compile=false")
        experts = self.cfg.model.experts
        if parallel.ep > 1 and (experts == 0 or experts % parallel.ep):
            raise ConfigError(f"parallel.ep={parallel.ep} needs an MoE model whose model.experts is a multiple "
                              f"of it, got model.experts={experts}")
        if parallel.sp > 1:
            if self.cfg.document_masking:
                raise ConfigError("parallel.sp > 1 needs document_masking: false (sequence parallelism takes "
                                  "unpacked rows, no cu_seqlens)")
            if self.cfg.data.seq_len % parallel.sp:
                raise ConfigError(f"data.seq_len={self.cfg.data.seq_len} must be a multiple of "
                                  f"parallel.sp={parallel.sp}")
        model, layout = parallelize_lm(model, parallel, device_type=device.type)
        mesh = layout.mesh
        if parallel.sp > 1:
            self._sp = (mesh.get_local_rank("sp"), mesh.size(1))
            self._dp = (mesh.get_local_rank("dp"), mesh.size(0))
        return model, layout

    def build_train_data(self):
        data = self.cfg.data
        if self._dp is not None:  # the sp ranks of one replica read the same rows: split by dp rank only
            rank, world = self._dp
            data = dataclasses.replace(data, stream=dataclasses.replace(data.stream, rank=rank, world_size=world))
        return build_text_reader(data, self.tokenizer)

    def loss(self, model: nn.Module, batch: dict) -> StepOutput:
        out = model(batch["input_ids"], labels=batch["labels"], cu_seqlens=batch.get("cu_seqlens"), return_logits=False)
        return StepOutput(out.loss, out.num_tokens, router_metrics(out))

    def device_batch(self, batch: dict) -> dict:
        """Without document masking the documents' boundaries are not used (nor recorded by a CUDA graph).
        Under sequence parallelism: this rank's chunk of tokens (labels are already shifted)."""
        if self.cfg.document_masking:
            return batch
        if self._sp is None:
            return {k: v for k, v in batch.items() if k != "cu_seqlens"}
        rank, size = self._sp
        chunk = batch["input_ids"].shape[1] // size
        return {k: batch[k][:, rank * chunk:(rank + 1) * chunk] for k in ("input_ids", "labels")}

    def _heldout_batches(self):
        """The first ``eval.batches`` batches of one ordered pass over the held-out shards."""
        stream = one_pass(self.cfg.eval.shards, self.cfg.data.stream.batch_size, rank=0, world_size=1)
        reader = build_text_reader(TextReaderConfig(stream=stream, seq_len=self.cfg.data.seq_len,
                                                    text_key=self.cfg.data.text_key), self.tokenizer)
        for i, batch in enumerate(reader):
            if i == self.cfg.eval.batches:
                break
            yield batch

    def unigram_loss(self) -> float:
        """Cross-entropy (nats/token) of held-out labels under add-one unigram counts of training text."""
        if self._unigram_loss is None:
            counts: Counter[int] = Counter()
            train = iter(build_text_reader(self.cfg.data, self.tokenizer))
            for _ in range(self.cfg.eval.batches):
                counts.update(next(train)["input_ids"].flatten().tolist())
            total = sum(counts.values()) + self.cfg.model.vocab_size
            nll, n = 0.0, 0
            for batch in self._heldout_batches():
                labels = batch["labels"][batch["labels"] != -100].tolist()
                nll -= sum(math.log((counts[t] + 1) / total) for t in labels)
                n += len(labels)
            self._unigram_loss = nll / n  # evaluate() asks only once it has seen held-out tokens
        return self._unigram_loss

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        if not self.cfg.eval.shards:
            return {}
        nll, n = 0.0, 0
        for batch in self._heldout_batches():
            batch = {k: v.to(device) for k, v in self.device_batch(batch).items()}
            out = model(batch["input_ids"], labels=batch["labels"], cu_seqlens=batch.get("cu_seqlens"),
                        return_logits=False)
            count = int(out.num_tokens)
            nll += out.lm_loss.item() * count  # the language-model loss alone, without the router's terms
            n += count
        if dist.is_available() and dist.is_initialized():
            # every rank evaluated the same held-out rows (its sp chunk of them): the sums over the world
            # are (dp copies of) the full sums, so their ratio is the single-process figure
            totals = torch.tensor([nll, float(n)], dtype=torch.float64, device=device)
            dist.all_reduce(totals)
            nll, n = totals[0].item(), int(totals[1].item())
        if n == 0:
            return nothing_to_evaluate(self.cfg.eval.shards,
                                       f"no held-out document with text under the {self.cfg.data.text_key!r} key")
        loss = nll / n
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "unigram_loss": self.unigram_loss()}

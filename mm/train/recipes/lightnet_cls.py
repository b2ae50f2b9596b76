"""Recipe `lightnet_cls`: image classification with LightNetClassifier (or its same-size softmax ViT,
``model.mixer: softmax``) on image + label shards; top-1 accuracy on held-out shards.

The blind baseline is the accuracy of always answering the most frequent training label (read from
``eval.batches`` training batches): what a model that ignores the pixels reaches.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from data_pipelines.readers.image_label import ImageLabelReaderConfig, build_image_label_reader
from data_pipelines.stream import one_pass
from mm.models.lightnet import LightNetClassifier, LightNetConfig
from mm.train.config import RecipeConfig
from mm.train.recipe import Recipe, StepOutput, nothing_to_evaluate


@dataclass
class ClsEvalConfig:
    shards: list[str] = field(default_factory=list)  # held-out image shards; empty: no evaluation
    batches: int = 0  # held-out batches to score; 0: one whole pass

    def __post_init__(self):
        if self.batches < 0:
            raise ValueError(f"eval.batches must be >= 0, got {self.batches}")


@dataclass
class LightNetClsRecipeConfig(RecipeConfig):
    recipe: str = "lightnet_cls"
    model: LightNetConfig = field(default_factory=LightNetConfig)
    data: ImageLabelReaderConfig = field(default_factory=ImageLabelReaderConfig)
    eval: ClsEvalConfig = field(default_factory=ClsEvalConfig)
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.model.num_classes != self.data.count:
            raise ValueError(f"model.num_classes ({self.model.num_classes}) must equal the number of "
                             f"classes of the data ({self.data.count})")
        if self.data.image.size != self.model.image_size:
            raise ValueError(f"data.image.size ({self.data.image.size}) must equal model.image_size "
                             f"({self.model.image_size})")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


class LightNetClsRecipe(Recipe):
    config_cls = LightNetClsRecipeConfig
    unit = "img"
    shard_keys = ("data.stream.shards", "eval.shards")

    def build_model(self) -> nn.Module:
        return LightNetClassifier(self.cfg.model)

    def build_train_data(self):
        return build_image_label_reader(self.cfg.data)

    def device_batch(self, batch: dict) -> dict:
        return {"image": batch["image"], "label": batch["label"]}

    def loss(self, model: nn.Module, batch: dict) -> StepOutput:
        logits = model(batch["image"])
        loss = nn.functional.cross_entropy(logits.float(), batch["label"], label_smoothing=self.cfg.label_smoothing)
        acc = (logits.argmax(-1) == batch["label"]).float().mean()
        return StepOutput(loss, batch["label"].numel(), {"train_acc": acc.detach()})

    def _heldout_batches(self):
        stream = one_pass(self.cfg.eval.shards, self.cfg.data.stream.batch_size, rank=0, world_size=1)
        data = self.cfg.data
        reader = build_image_label_reader(ImageLabelReaderConfig(
            stream=stream, image=data.image, normalize=data.normalize, label=data.label, classes=data.classes,
            num_classes=data.num_classes))
        for i, batch in enumerate(reader):
            if i == self.cfg.eval.batches and self.cfg.eval.batches:
                break
            yield batch

    def majority_label(self) -> int:
        counts: Counter[int] = Counter()
        train = iter(build_image_label_reader(self.cfg.data))
        for _ in range(max(1, self.cfg.eval.batches or 8)):
            counts.update(next(train)["label"].tolist())
        return counts.most_common(1)[0][0]

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        if not self.cfg.eval.shards:
            return {}
        majority = self.majority_label()
        correct, blind, n, nll = 0, 0, 0, 0.0
        for batch in self._heldout_batches():
            labels = batch["label"].to(device)
            logits = model(batch["image"].to(device)).float()
            nll += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(-1) == labels).sum())
            blind += int((labels == majority).sum())
            n += labels.numel()
        if n == 0:
            return nothing_to_evaluate(self.cfg.eval.shards)
        return {"top1": correct / n, "loss": nll / n, "blind_top1": blind / n, "samples": float(n)}

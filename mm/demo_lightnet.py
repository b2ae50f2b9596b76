"""`mm demo` stage `lightnet`: a tiny LightNet image classifier on the synthetic shape/colour labels
(one object per image, 18 classes "<colour> <shape>"), beside the same-size softmax-attention ViT
trained the same way (same config, ``model.mixer=softmax``) and the blind baseline (always the most
frequent training label). Passed when LightNet reaches 90 % top-1 on held-out images.
"""

from __future__ import annotations

import time
from pathlib import Path

from mm.demo import CONFIGS, StageResult

IMAGE_SIZE = 48


def write_shapes_data(root: Path, train: int, heldout: int) -> tuple[Path, Path]:
    """Synthetic `vl` images with exactly one object each (the label is its colour and shape)."""
    from data_pipelines.shards.writer import ShardWriterConfig
    from data_pipelines.synthetic.vl import VLSynthConfig
    from data_pipelines.synthetic.write import write_synthetic

    out = []
    for split, num, seed in (("train", train, 0), ("heldout", heldout, 1)):
        path = root / split
        write_synthetic("vl", VLSynthConfig(num_samples=num, seed=seed, image_size=IMAGE_SIZE, max_objects=1),
                        ShardWriterConfig(out_dir=str(path), maxcount=2000))
        out.append(path)
    return out[0], out[1]


def train_classifier(run_dir: Path, train: Path, heldout: Path, overrides: list[str]):
    """Train ``configs/lightnet_cls_tiny.yaml`` on the given shards; returns (result, parameter count)."""
    from mm.train.recipe import get_recipe, load_recipe_config
    from mm.train.trainer import Trainer

    cfg = load_recipe_config(CONFIGS / "lightnet_cls_tiny.yaml", [
        f"run.dir={run_dir}", f"data.stream.shards=[{train}]", f"eval.shards=[{heldout}]", *overrides])
    trainer = Trainer(get_recipe(cfg.recipe)(cfg))
    result = trainer.fit()
    return result, sum(p.numel() for p in trainer.model.parameters())


def lightnet_stage(out: Path, fast: bool) -> StageResult:
    from mm.threads import one_thread

    with one_thread():  # the data loader's worker has the other core
        return _run(out, fast)


def _run(out: Path, fast: bool) -> StageResult:
    train, heldout = write_shapes_data(out / "data" / "shapes", train=200 if fast else 4000,
                                       heldout=50 if fast else 500)
    overrides = ["train.steps=4", "train.log_every=2"] if fast else []
    figures, top1 = {}, {}
    for mixer in ("lightnet", "softmax"):
        start = time.perf_counter()
        result, params = train_classifier(out / f"lightnet_cls_{mixer}", train, heldout,
                                          [f"model.mixer={mixer}", *overrides])
        top1[mixer] = result.eval_metrics["top1"]
        name = "LightNet" if mixer == "lightnet" else "softmax ViT (same size)"
        figures[f"{name} held-out top-1"] = f"{top1[mixer]:.3f}"
        figures[f"{name} params / train time"] = f"{params / 1e3:.0f}K / {time.perf_counter() - start:.0f} s"
    figures["blind baseline (most frequent label)"] = f"{result.eval_metrics['blind_top1']:.3f}"
    figures["chance (18 classes)"] = f"{1 / 18:.3f}"
    figures["steps / held-out images"] = f"{result.step} / {int(result.eval_metrics['samples'])}"
    figures["run"] = str(out / "lightnet_cls_lightnet")
    return StageResult("lightnet", figures, passed=top1["lightnet"] >= 0.9)

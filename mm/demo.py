"""`mm demo`: the end-to-end tour on synthetic data the suite makes itself.

Each capability adds a stage: a function that builds its data under the demo directory, trains
with a recipe config from ``configs/``, evaluates, and returns the figures for the summary.
"""

from __future__ import annotations

import importlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class StageResult:
    name: str
    figures: dict[str, str] = field(default_factory=dict)  # label -> formatted value, in display order
    passed: bool = True  # the stage showed what it is meant to show (e.g. loss below a baseline)
    seconds: float = 0.0


def _train(config: str, run_dir: Path, overrides: list[str]):
    """Train a recipe config; returns (the trainer, with its model, and the result)."""
    from mm.train.recipe import get_recipe, load_recipe_config
    from mm.train.trainer import Trainer

    cfg = load_recipe_config(CONFIGS / config, [f"run.dir={run_dir}", *overrides])
    trainer = Trainer(get_recipe(cfg.recipe)(cfg))
    return trainer, trainer.fit()


def addition_accuracy(model, tokenizer, pairs: list[tuple[int, int]]) -> tuple[float, str]:
    """Greedy completions of "a plus b is " checked against a + b; also one sample to show."""
    from mm.models.lm_generate import GenerationConfig

    prompts = [f"{a} plus {b} is " for a, b in pairs]
    outs = model.generate([tokenizer.encode(p) for p in prompts], GenerationConfig(max_new_tokens=4))
    answers = [tokenizer.decode(o).split(".")[0].strip() for o in outs]
    correct = sum(ans == str(a + b) for ans, (a, b) in zip(answers, pairs, strict=True))
    return correct / len(pairs), prompts[0] + tokenizer.decode(outs[0])


def lm_stage(out: Path, fast: bool) -> StageResult:
    """Byte-level LM on the synthetic text corpus; held-out loss against the unigram baseline."""
    from data_pipelines.shards.writer import ShardWriterConfig
    from data_pipelines.synthetic.text import TextSynthConfig
    from data_pipelines.synthetic.write import write_synthetic

    data = out / "data" / "text"
    docs = 400 if fast else 4000
    for split, num, seed in (("train", docs, 0), ("heldout", max(100, docs // 10), 1)):
        write_synthetic("text", TextSynthConfig(num_samples=num, seed=seed),
                        ShardWriterConfig(out_dir=str(data / split), maxcount=1000))
    overrides = [f"data.stream.shards=[{data / 'train'}]", f"eval.shards=[{data / 'heldout'}]"]
    if fast:
        overrides += ["train.steps=20", "train.eval_every=0", "checkpoint.every=0", "eval.batches=2"]
    trainer, result = _train("lm_tiny.yaml", out / "lm", overrides)
    loss, unigram = result.eval_metrics["loss"], result.eval_metrics["unigram_loss"]
    rng = random.Random(0)
    pairs = [(rng.randrange(10), rng.randrange(10)) for _ in range(100)]
    accuracy, sample = addition_accuracy(trainer.model, trainer.recipe.tokenizer, pairs)
    return StageResult(
        "lm",
        {
            "steps": str(result.step),
            "held-out loss (nats/byte)": f"{loss:.3f}",
            "unigram baseline": f"{unigram:.3f}",
            "loss / baseline": f"{loss / unigram:.2f}",
            "'a plus b is' greedy accuracy (chance ≈ 0.05)": f"{accuracy:.2f}",
            "sample": repr(sample),
            "run": str(result.run_dir),
            "continue text with": f"mm generate {result.run_dir} --prompt '3 plus 4 is '",
        },
        passed=loss < 0.8 * unigram and accuracy > 0.2,  # well below the baseline, well above chance
    )


# name -> "module:function(out, fast) -> StageResult", in the order `mm demo` runs them; each stage's
# module is imported only when it runs.
STAGES: dict[str, str] = {
    "lm": "mm.demo:lm_stage",
    "vl": "mm.demo_vl:vl_stage",
    "lightnet": "mm.demo_lightnet:lightnet_stage",
    "av": "mm.demo_av:av_stage",
    "tav": "mm.demo_tav:tav_stage",
}


# What `mm demo` runs without --stages: every stage.
DEFAULT_STAGES = tuple(STAGES)


def stage_function(name: str) -> Callable[[Path, bool], StageResult]:
    module, _, function = STAGES[name].partition(":")
    return getattr(importlib.import_module(module), function)


def run_demo(out: Path, stages: list[str], fast: bool = False) -> list[StageResult]:
    results = []
    for name in stages:
        start = time.perf_counter()
        print(f"== demo stage: {name}", flush=True)
        result = stage_function(name)(out, fast)
        result.seconds = time.perf_counter() - start
        results.append(result)
    return results


def device_description() -> str:
    """Where the stages train: the trainer's `run.device: auto` picks the GPU when there is one."""
    import os

    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name()})"
    return f"cpu ({os.cpu_count()} cores)"


def summary_table(results: list[StageResult]) -> str:
    lines = ["| stage | figure | value |", "|---|---|---|", f"| all | device | {device_description()} |"]
    for r in results:
        status = "ok" if r.passed else "BELOW EXPECTATION"
        lines.append(f"| {r.name} | status | {status} ({r.seconds:.0f} s) |")
        lines += [f"| | {label} | {value} |" for label, value in r.figures.items()]
    return "\n".join(lines)

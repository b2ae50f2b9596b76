"""`mm demo` stage `vl`: a tiny VLM trained on the synthetic `vl` shards, then captioning (CIDEr-D)
and VQA (official accuracy) on held-out shards, each against the same model with its images
blanked (the blind baseline, which can only use the text prior). Passed when the image clearly helps.
"""

from __future__ import annotations

import time
from pathlib import Path

from mm.demo import CONFIGS, StageResult
from mm.threads import one_thread

IMAGE_SIZE = 48
# Generation budgets in tokens, i.e. bytes (the byte tokenizer): the set's longest caption is 140
# characters and its longest answer ("bottom right") 12, each after the one-space answer prefix.
# Too short a budget truncates both runs alike (at 8, "top left" came out "top lef": 0 % position).
MAX_NEW_TOKENS = (160, 16)  # (caption, VQA answer)
# One object per image: with up to three, 300-600 CPU steps never got past the text prior (VQA
# 33-42 % with the images vs 32-42 % blind); one object is what this budget learns to read.
MAX_OBJECTS = 1


def write_vl_data(root: Path, train: int, heldout: int, max_objects: int = 3) -> tuple[Path, Path]:
    from data_pipelines.shards.writer import ShardWriterConfig
    from data_pipelines.synthetic.vl import VLSynthConfig
    from data_pipelines.synthetic.write import write_synthetic

    out = []
    for split, num, seed in (("train", train, 0), ("heldout", heldout, 1)):
        path = root / split
        write_synthetic("vl", VLSynthConfig(num_samples=num, seed=seed, image_size=IMAGE_SIZE, max_objects=max_objects),
                        ShardWriterConfig(out_dir=str(path), maxcount=1000))
        out.append(path)
    return out[0], out[1]


def train_vl(run_dir: Path, train: Path, heldout: Path, overrides: list[str], warmup_steps: int | None = None):
    """Train ``configs/vl_tiny.yaml`` on the given shards (and ``warmup_steps`` of adapter-only
    warm-up instead of the config's); returns the trainer's result."""
    from mm.train.recipe import get_recipe, load_recipe_config
    from mm.train.trainer import Trainer

    cfg = load_recipe_config(CONFIGS / "vl_tiny.yaml", [f"run.dir={run_dir}", *overrides])
    for source in cfg.data.sources:
        source.stream.shards = [str(train)]
    cfg.eval.caption_shards, cfg.eval.vqa_shards = [str(heldout)], [str(heldout)]
    if warmup_steps is not None:
        cfg.stages[0].steps = warmup_steps
    return Trainer(get_recipe(cfg.recipe)(cfg)).fit()


def caption_metrics_missing() -> str | None:
    """Why the COCO caption metrics cannot run here (they need pycocoevalcap and Java), or None."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("pycocoevalcap") is None:
        return "pycocoevalcap is not installed"
    return None if shutil.which("java") else "no java on PATH"


def vision_helps(run_dir: Path, heldout: Path, max_new_tokens: tuple[int, int], tasks=("caption", "vqa"),
                 ) -> dict[str, dict]:
    """Caption and VQA scores of the run with its images and blind (tokens generated per caption, per
    answer), on the GPU when there is one."""
    from evals.caption import caption_scores
    from evals.vl_predict import predict
    from evals.vqa import vqa_scores

    scores = {}
    for task, score, tokens in (("caption", caption_scores, max_new_tokens[0]), ("vqa", vqa_scores, max_new_tokens[1])):
        if task not in tasks:
            continue
        for blind in (False, True):
            records = predict(run_dir, [str(heldout)], task, batch_size=50, max_new_tokens=tokens, blind=blind)
            scores[f"{task}{'/blind' if blind else ''}"] = {"scores": score(records), "sample": records[0]}
    return scores


def vl_stage(out: Path, fast: bool) -> StageResult:
    train, heldout = write_vl_data(out / "data" / "vl", train=200 if fast else 4000, heldout=4 if fast else 100,
                                   max_objects=MAX_OBJECTS)
    overrides = ["train.steps=3", "eval.batches=1"] if fast else []
    start = time.perf_counter()
    with one_thread():
        result = train_vl(out / "vl", train, heldout, overrides, warmup_steps=1 if fast else None)
        seconds = time.perf_counter() - start
        missing = caption_metrics_missing()
        s = vision_helps(result.run_dir, heldout, max_new_tokens=(4, 2) if fast else MAX_NEW_TOKENS,
                         tasks=("vqa",) if missing else ("caption", "vqa"))
    acc, blind_acc = s["vqa"]["scores"]["accuracy"], s["vqa/blind"]["scores"]["accuracy"]
    per_type = s["vqa"]["scores"]["per_answer_type"]
    blind_type = s["vqa/blind"]["scores"]["per_answer_type"]
    figures = {"steps (train time)": f"{result.step} ({seconds:.0f} s), {MAX_OBJECTS} object per image"}
    if missing:  # said in the summary, and the stage cannot pass without its caption figure
        figures["held-out CIDEr-D (images / blind)"] = f"not measured: {missing}"
        cider_helps = False
    else:
        cider, blind_cider = s["caption"]["scores"]["CIDEr-D"], s["caption/blind"]["scores"]["CIDEr-D"]
        figures["held-out CIDEr-D (images / blind)"] = f"{cider:.3f} / {blind_cider:.3f}"
        cider_helps = cider > blind_cider + 0.3
    figures["held-out VQA accuracy % (images / blind)"] = f"{acc:.1f} / {blind_acc:.1f}"
    figures["VQA accuracy % by type (images / blind)"] = ", ".join(
        f"{t} {per_type[t]:.0f}/{blind_type.get(t, 0):.0f}" for t in per_type)
    if not missing:
        caption = s["caption"]["sample"]
        figures["sample caption"] = f"{caption['prediction']!r} (a reference: {caption['references'][-1]!r})"
    figures["run"] = str(result.run_dir)
    figures["evaluate with"] = f"mm eval vqa {result.run_dir} --shards {heldout}"
    # the image clearly helps on both tasks
    return StageResult("vl", figures, passed=cider_helps and acc > blind_acc + 10)

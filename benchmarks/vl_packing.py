"""Does packing pay for the `vl` recipe? Token positions and train-step time, packed vs unpacked.

    python benchmarks/vl_packing.py --shards data/vl_anyres/train --out benchmarks/results
    python benchmarks/vl_packing.py --shards DIR --config configs/vl_clip_l336.yaml --pack 0 4096 8192

The same training batches (the recipe's reader mix, ``--batches`` of them) are turned into model
inputs unpacked (one padded row a sample) and packed with each ``--pack`` row length
(``pack_tokens``; the batcher keeps a batch unpacked where packing saves no positions); then
forward + backward of them all is timed (bf16 autocast on CUDA, float32 on CPU), the settings in
turn for ``--repeat`` rounds (medians), speed-up against the first ``--pack``. Columns: positions
= B·T summed over the batches, real = share of positions that hold sample tokens (the rest is
padding), packed = share of batches packed. The full-size config needs its tower file and a
tokenizer (set them as overrides, e.g. ``tokenizer=... model.vision.checkpoint=...``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.common import markdown_table, time_ms, write_results  # noqa: E402
from mm.train.recipe import load_recipe_config  # noqa: E402
from mm.train.recipes.vl import VLRecipe  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/vl_anyres_tiny.yaml")
    p.add_argument("--shards", required=True, help="training shards for every source of the config")
    p.add_argument("--pack", type=int, nargs="+", default=[0, 1024, 4096], help="pack_tokens (0: unpacked)")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=None, help="write vl_packing.md/.json here")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_recipe_config(args.config, ["blank_images=0", *args.overrides])
    for source in cfg.data.sources:
        source.stream.shards = [args.shards]
    torch.manual_seed(0)
    recipe = VLRecipe(cfg)
    model = recipe.build_model().to(device)
    model.requires_grad_(True)
    raw = list(itertools.islice(recipe.build_train_data(), args.batches))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    settings = {}
    for pack in args.pack:
        if pack and pack < cfg.prompt.max_tokens:
            raise SystemExit(f"--pack {pack}: must be 0 or >= prompt.max_tokens={cfg.prompt.max_tokens}")
        settings[pack] = [{k: v.to(device) for k, v in recipe.inputs(b, pack_tokens=pack).items()} for b in raw]

    def step(batches):
        for batch in batches:
            with autocast:
                out = recipe.loss(model, batch)
            out.loss.backward()

    # rounds of every setting in turn, the median per setting: load that comes and goes (a shared
    # machine) hits every setting alike
    times = {pack: [] for pack in settings}
    for round_ in range(args.repeat + 1):
        for pack, batches in settings.items():
            ms = time_ms(lambda batches=batches: step(batches), warmup=0, repeat=1)
            if round_:  # the first round warms up
                times[pack].append(ms)
    base_ms = statistics.median(times[args.pack[0]])
    rows = []
    for pack, batches in settings.items():
        ms = statistics.median(times[pack])
        positions = sum(b["input_ids"].numel() for b in batches)
        tokens = sum(_sample_tokens(b) for b in batches)
        rows.append({"pack_tokens": pack or "off", "positions": positions, "real": tokens / positions,
                     "packed": sum("cu_seqlens" in b for b in batches) / len(batches),
                     "ms / batch": ms / len(batches), "speed-up": base_ms / ms})
    if args.out:
        print(write_results(args.out, "vl_packing", "vl recipe: packing vs one padded row a sample",
                            {f"{args.config}, {args.batches} batches": (rows, list(rows[0]))}))
    else:
        print(markdown_table(rows, list(rows[0])))


def _sample_tokens(batch: dict) -> int:
    """Positions that hold sample tokens: all but each row's trailing padding (in a packed row, the
    last segment when it has no labels; unpacked, what follows a row's last label)."""
    labels = batch["labels"]
    last = torch.where(labels != -100, torch.arange(labels.shape[1], device=labels.device), -1).amax(dim=1)
    return int((last + 2).clamp(max=labels.shape[1]).sum())


if __name__ == "__main__":
    main()

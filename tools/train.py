"""mm train: train a recipe from a YAML config with dotted overrides."""

from __future__ import annotations

import argparse
import sys

from tools.cli import UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a recipe from a YAML config",
        description="Train the recipe a YAML config names. Example: "
        "mm train configs/lm_tiny.yaml optim.lr=3e-4 train.steps=200. Under torchrun (e.g. "
        "torchrun --nproc_per_node=2 -m tools.cli train CONFIG parallel.sp=2) it trains data/sequence "
        "parallel per the config's parallel section; rank 0 writes metrics and checkpoints.",
    )
    p.add_argument("config", help="YAML recipe, e.g. configs/lm_tiny.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=3e-4")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--resume", metavar="latest|PATH",
                   help="continue from the run's latest complete checkpoint, or from a checkpoint directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mm.config import ConfigError, check_shard_keys, to_yaml
    from mm.train.checkpoint import CheckpointError
    from mm.train.parallel import shutdown
    from mm.train.recipe import get_recipe, load_recipe_config
    from mm.train.trainer import Trainer, TrainingDiverged

    try:
        cfg = load_recipe_config(args.config, args.overrides)
        recipe = get_recipe(cfg.recipe)
        if not args.print_config:  # printing a config needs no data
            check_shard_keys(cfg, recipe.shard_keys)
    except ConfigError as err:
        raise UsageError(str(err)) from None
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    try:
        trainer = Trainer(recipe(cfg))  # under torchrun: checks the world size against parallel.*, joins
        result = trainer.fit(resume=args.resume)
    except ConfigError as err:  # e.g. a world size that does not factor into parallel.dp × parallel.sp
        raise UsageError(str(err)) from None
    except (CheckpointError, TrainingDiverged) as err:
        print(f"mm train: error: {err}", file=sys.stderr)
        return 1
    finally:
        shutdown()
    if not trainer.main:  # rank 0 reports
        return 0 if result.interrupted_by is None else 128 + result.interrupted_by
    if result.already_complete:
        others = [o for o in args.overrides if not o.startswith("train.steps=")]
        print(f"run {result.run_dir} is already complete at step {result.step} (train.steps={cfg.train.steps}; "
              f"checkpoint {result.checkpoint}); nothing to do.\n"
              f"to train on, raise train.steps: mm train {' '.join([args.config, *others])} "
              f"train.steps=<more than {result.step}> --resume latest")
        return 0
    if result.interrupted_by is not None:
        print(f"stopped by signal {result.interrupted_by} at step {result.step}; checkpoint {result.checkpoint}\n"
              f"continue with: mm train {args.config} {' '.join(args.overrides)} --resume latest", file=sys.stderr)
        return 128 + result.interrupted_by
    print(f"run: {result.run_dir}  steps: {result.step}  train loss: {result.train_loss:.4f}")
    for key, value in result.eval_metrics.items():
        print(f"  eval {key}: {value:.4f}")
    print(f"checkpoint: {result.checkpoint}\ncurves: {result.run_dir / 'curves.png'}")
    return 0


if __name__ == "__main__":  # torchrun -m tools.train CONFIG [KEY=VALUE ...] (= mm train)
    from tools.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))

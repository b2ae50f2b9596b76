"""mm generate: continue text prompts with a trained LM (a run, a checkpoint or a Hugging Face folder)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tools.cli import UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="continue text prompts with a trained LM",
        description="Continue prompts with the LM of a run directory (its latest complete checkpoint), of a "
        "checkpoint directory, or of a Hugging Face `minimax` folder. Example: "
        "mm generate runs/lm_tiny --prompt '3 plus 4 is ' --max-new-tokens 8",
    )
    p.add_argument("model", metavar="RUN|CHECKPOINT|HF_DIR", help="where the weights are")
    p.add_argument("--prompt", action="append", required=True, help="a prompt; repeat it for a batch")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --temperature > 0)")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampling generator")
    p.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (greedy only)")
    p.add_argument("--length-penalty", type=float, default=1.0,
                   help="beam search: hypotheses ranked by total log-probability / new_tokens ** this")
    p.add_argument("--tokenizer", default=None,
                   help="for a Hugging Face folder: 'byte' or a tokenizer.json (default: the folder's tokenizer.json)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (on CUDA the model runs in bf16)")
    p.add_argument("--cuda-graph", action="store_true", help="CUDA: replay each decoding step as a CUDA graph")
    p.set_defaults(func=run)


def checkpoint_of(path: Path) -> Path | None:
    """A checkpoint directory, or a run's latest complete one; None when ``path`` is neither."""
    from mm.train.checkpoint import CONFIG, CheckpointManager, is_complete

    if (path / CONFIG).is_file() and is_complete(path):
        return path
    if (path / "checkpoints").is_dir():
        latest = CheckpointManager(path / "checkpoints").latest()
        if latest is None:
            raise UsageError(f"{path}: the run has no complete checkpoint under {path / 'checkpoints'}")
        return latest.path
    return None


def load_model(path: Path, tokenizer: str | None):
    """(LM, tokenizer) from a checkpoint of the lm recipe, a run directory or a Hugging Face folder.
    Unreadable files raise CheckpointError or ValueError naming them."""
    from data_pipelines.tokenizers import load_tokenizer
    from mm.config import ConfigError
    from mm.models.lm import LM, from_hf
    from mm.train.checkpoint import CONFIG, load_weights
    from mm.train.recipe import load_recipe_config

    if not path.is_dir():
        raise UsageError(f"{path}: no such directory (want a run, a checkpoint or a Hugging Face folder)")
    checkpoint = checkpoint_of(path)
    if checkpoint is not None:
        try:
            cfg = load_recipe_config(checkpoint / CONFIG)
        except ConfigError as err:
            raise UsageError(str(err)) from None
        if cfg.recipe != "lm":
            raise UsageError(f"{checkpoint / CONFIG}: recipe {cfg.recipe!r} is not a language model (want 'lm')")
        model = LM(cfg.model)
        load_weights(checkpoint, model)
        return model, load_tokenizer(tokenizer or cfg.tokenizer, cfg.tokenizer_eos)
    if not (path / "config.json").is_file():
        raise UsageError(f"{path}: neither a run, a checkpoint (config.yaml + COMPLETE) nor a Hugging Face "
                         "folder (config.json)")
    spec = tokenizer or str(path / "tokenizer.json")
    if spec != "byte" and not Path(spec).is_file():
        raise UsageError(f"{path}: no tokenizer.json; name one with --tokenizer (a tokenizer.json or 'byte')")
    return from_hf(path), load_tokenizer(spec)


def run(args: argparse.Namespace) -> int:
    import torch

    from mm.models.lm_generate import GenerationConfig
    from mm.train.checkpoint import CheckpointError
    from mm.train.trainer import resolve_device

    device = resolve_device(args.device)
    if args.cuda_graph and device.type != "cuda":
        raise UsageError(f"--cuda-graph needs a CUDA device, got --device {args.device} ({device})")
    try:
        model, tokenizer = load_model(Path(args.model), args.tokenizer)
    except CheckpointError as err:
        print(f"mm generate: error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:  # a Hugging Face folder or tokenizer file that cannot be read (names the file)
        raise UsageError(str(err)) from None
    try:
        cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                               eos_id=tokenizer.eos_id, seed=args.seed, cuda_graph=args.cuda_graph,
                               num_beams=args.num_beams, length_penalty=args.length_penalty)
    except ValueError as err:
        raise UsageError(str(err)) from None
    prompts = [tokenizer.encode(p) for p in args.prompt]
    for text, ids in zip(args.prompt, prompts, strict=True):
        if not ids:
            raise UsageError(f"--prompt {text!r} encodes to no tokens")
        if max(ids) >= model.cfg.vocab_size:
            raise UsageError(f"--prompt {text!r}: token id {max(ids)} is past the model's vocabulary "
                             f"({model.cfg.vocab_size}): a tokenizer other than the model's?")
    model = model.to(device, torch.bfloat16 if device.type == "cuda" else torch.float32).eval()
    start = time.perf_counter()
    outs = model.generate(prompts, cfg)
    seconds = time.perf_counter() - start
    for prompt, out in zip(args.prompt, outs, strict=True):
        print(prompt + tokenizer.decode([t for t in out if t != tokenizer.eos_id]))
    tokens = sum(map(len, outs))
    print(f"{tokens} tokens in {seconds:.2f} s ({tokens / seconds:.1f} tokens/s, {device})", file=sys.stderr)
    return 0

"""mm tokenizer: train a byte-level BPE tokenizer on your text."""

from __future__ import annotations

import argparse

from tools.cli import UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser("tokenizer", help="train a BPE tokenizer (tokenizer.json)",
                              description="Tokenizers for the LM recipe (its `tokenizer:` key takes the file).")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", parser_class=type(p))
    sub.required = True
    t = sub.add_parser("train", help="byte-level BPE from .txt files, folders of them, or text shards",
                       description="Example: mm tokenizer train data/text/train --vocab-size 8192 -o tok.json")
    t.add_argument("inputs", nargs="+", metavar="PATH",
                   help=".txt files, folders of .txt, .tar shards or folders of them")
    t.add_argument("-o", "--out", required=True, help="tokenizer.json to write")
    t.add_argument("--vocab-size", type=int, default=8192)
    t.add_argument("--min-frequency", type=int, default=2, help="merges need pairs seen at least this often")
    t.add_argument("--text-key", default="txt", help="member extension holding the text inside shards")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from data_pipelines.errors import SkipCounter
    from data_pipelines.text_sources import iter_texts
    from data_pipelines.tokenizers import train_bpe

    counter = SkipCounter()
    try:
        texts = iter_texts(args.inputs, args.text_key, counter)
        tok = train_bpe(texts, args.vocab_size, args.out, args.min_frequency, progress=not args.quiet)
    except ValueError as err:
        raise UsageError(str(err)) from None
    snap = counter.snapshot()
    if not snap["good"]:
        raise UsageError(f"no text found in {' '.join(args.inputs)}")
    skipped = sum(snap["errors"].values())
    print(f"{args.out}: vocab {tok.vocab_size}, trained on {snap['good']} texts"
          + (f", skipped {skipped} ({snap['errors']})" if skipped else ""))
    return 0

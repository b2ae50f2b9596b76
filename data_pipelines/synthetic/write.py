"""Write a synthetic set into shards (``mm shards synth``)."""

from __future__ import annotations

import functools

from ..shards.writer import ShardSink, ShardWriterConfig
from .av import AVSynthConfig, make_av_sample
from .text import TextSynthConfig, make_text_sample
from .vl import VLSynthConfig, make_vl_sample

KINDS = {
    "vl": (VLSynthConfig, make_vl_sample),
    "av": (AVSynthConfig, make_av_sample),
    "text": (TextSynthConfig, make_text_sample),
}


def write_synthetic(
    kind: str, cfg, writer: ShardWriterConfig, progress: bool = False, workers: int = 1
) -> dict[str, int]:
    """Generate ``cfg.num_samples`` samples of ``kind`` into ``writer.out_dir``; returns sizes.json.

    Sample i depends only on (cfg, i), so ``workers`` processes give the same shards as one.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic set {kind!r}; expected one of {sorted(KINDS)}")
    cfg_type, make = KINDS[kind]
    if not isinstance(cfg, cfg_type):
        raise ValueError(f"{kind} needs a {cfg_type.__name__}, got {type(cfg).__name__}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    job = functools.partial(make, cfg)
    pool = None
    if workers > 1 and cfg.num_samples >= 64:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(workers)
        samples = pool.imap(job, range(cfg.num_samples), chunksize=16)
    else:
        samples = map(job, range(cfg.num_samples))
    if progress:
        from tqdm import tqdm

        samples = tqdm(samples, total=cfg.num_samples, desc=f"synth {kind}", unit="sample")
    try:
        with ShardSink(writer) as sink:
            for sample in samples:
                sink.write(sample)
    finally:
        if pool is not None:
            pool.terminate()
    return sink.sizes

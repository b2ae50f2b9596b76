"""Fixtures shared by the training tests."""

import pytest

from data_pipelines.shards.writer import ShardWriterConfig
from data_pipelines.synthetic.text import TextSynthConfig
from data_pipelines.synthetic.write import write_synthetic


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    for split, n, seed in (("train", 300, 0), ("heldout", 40, 1)):
        write_synthetic("text", TextSynthConfig(num_samples=n, seed=seed),
                        ShardWriterConfig(out_dir=str(root / split), maxcount=100))
    return [f"data.stream.shards=[{root / 'train'}]", f"eval.shards=[{root / 'heldout'}]"]

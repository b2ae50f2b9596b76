"""Data positions across world sizes (data_pipelines/positions.py): a stream saved by R ranks and
resumed by R' ranks yields exactly the batches the uninterrupted run had still to yield, dealt out
over the new ranks (issue 20, "Launch and config": save at 2, resume at 1; and 1 -> 2)."""

import io
import json
from collections import Counter

import pytest
from PIL import Image

from data_pipelines.decode.image import ImageDecodeConfig
from data_pipelines.errors import merge_counts
from data_pipelines.positions import DataResumeError
from data_pipelines.readers.image_text import ImageTextReaderConfig, build_image_text_reader
from data_pipelines.stream import StreamConfig
from data_pipelines.testing import same_batch, write_samples

BATCH = 2


def jpeg(i):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i * 9 % 256, 40, 90)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("reshard")
    samples = [{"__key__": f"r{i:03d}", "jpg": jpeg(i) if i % 7 else b"bad", "txt": f"c{i}"} for i in range(37)]
    write_samples(root, samples, maxcount=4)  # bad images: the streams' raw positions drift apart
    return root


def loader(shards, rank, world, workers=0, samples_per_epoch=24):
    """Without resampling (a seeded shard permutation per round, split over the global streams) so
    that a repeated key could only come from a position error; 6 batches per stream and epoch."""
    stream = StreamConfig(shards=[str(shards)], batch_size=BATCH, resample=False, samples_per_epoch=samples_per_epoch,
                          shuffle_buffer=4, num_workers=workers, seed=3, rank=rank, world_size=world)
    return build_image_text_reader(ImageTextReaderConfig(stream=stream, image=ImageDecodeConfig(size=8)))


def take(source, n):
    it = iter(source)
    return [next(it) for _ in range(n)]


def saved(sources, steps):
    """Each rank's batches for ``steps`` steps and its state after them (through JSON, as checkpoints)."""
    batches = [take(s, steps) for s in sources]
    return batches, [json.loads(json.dumps(s.state_dict())) for s in sources]


def interleave(per_rank):
    """Batches of all ranks, step by step: global step k = batch k of rank 0, of rank 1, ..."""
    return [b for step in zip(*per_rank, strict=True) for b in step]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("cut", [3, 6])  # inside epoch 0, on its end (the rest crosses into epoch 1)
def test_two_ranks_resume_on_one_exactly(shards, cut):
    total = 10
    sources = [loader(shards, r, 2) for r in range(2)]
    reference = interleave([take(source, total) for source in sources])
    keys = Counter(k for b in reference for k in b["key"])
    assert len(keys) > 12 and max(keys.values()) <= 2  # the keys of ~1.5 passes

    before, states = saved([loader(shards, r, 2) for r in range(2)], cut)
    one = loader(shards, 0, 1, workers=2)  # the two saved streams, one per loader worker
    one.load_world_state(states)
    after = take(one, 2 * (total - cut))
    got = interleave(before) + after
    assert all(same_batch(a, b) for a, b in zip(reference, got, strict=True))
    assert Counter(k for b in got for k in b["key"]) == keys  # none twice, none missing
    assert one.state_dict()["streams_per_rank"] == 2
    if cut == 3:  # mid-epoch the two streams stand at different raw positions (bad images skipped)
        assert len({tuple(p) for s in states for p in s["positions"]}) == 2
    # good samples and skips by reason: the two saved ranks' totals carried into the one process
    assert one.counts() == merge_counts([s.counts() for s in sources]) and one.counts()["errors"]["bad_image"] > 0


def test_one_rank_resumes_on_two_and_back(shards):
    """1 process with 2 streams (num_workers=2) -> 2 ranks (one stream each, in-process) -> 1 process
    reading both streams in its main process (num_workers=0)."""
    total = 9
    reference = take(loader(shards, 0, 1, workers=2), 2 * total)
    (first,), states = saved([loader(shards, 0, 1, workers=2)], 4)  # 2 steps of 2 ranks' worth
    two = [loader(shards, r, 2) for r in range(2)]
    for source in two:
        source.load_world_state(states)
    middle, states = saved(two, 3)
    back = loader(shards, 0, 1, workers=0)
    back.load_world_state(states)
    got = first + interleave(middle) + take(back, 2 * total - 4 - 6)
    assert all(same_batch(a, b) for a, b in zip(reference, got, strict=True))


def test_moves_that_cannot_be_exact_are_refused(shards):
    _, two_ranks = saved([loader(shards, r, 2) for r in range(2)], 1)
    with pytest.raises(DataResumeError, match="do not split over world size 4"):
        loader(shards, 0, 4).load_world_state(two_ranks)
    with pytest.raises(DataResumeError, match="num_workers=3"):
        loader(shards, 0, 1, workers=3).load_world_state(two_ranks)
    with pytest.raises(DataResumeError, match="batches per epoch"):  # 26 // 2 = 13 batches: 7 + 6 per stream
        loader(shards, 0, 1, samples_per_epoch=26).load_world_state(two_ranks)
    with pytest.raises(DataResumeError, match="seed"):
        loader(shards, 0, 1).load_world_state([{**s, "seed": 4} for s in two_ranks])
    with pytest.raises(DataResumeError, match="ranks \\[0\\] of a world of 2"):
        loader(shards, 0, 1).load_world_state(two_ranks[:1])
    # a version 1 state (before this module: no rank, streams counted as num_workers) still resumes
    # on its own world size, and only there
    v1 = [{**{k: v for k, v in s.items() if k not in ("rank", "streams_per_rank", "batches_per_epoch")},
           "version": 1} for s in two_ranks]
    old = loader(shards, 1, 2)
    old.load_state_dict(v1[1])
    assert old.state_dict()["positions"] == two_ranks[1]["positions"]
    with pytest.raises(DataResumeError, match="version 1"):
        loader(shards, 0, 1).load_world_state(v1)
    # one process after one batch: stream 0 has yielded a batch, stream 1 none; two ranks cannot
    # both start at the same batch count of the epoch
    _, odd = saved([loader(shards, 0, 1, workers=2)], 1)
    with pytest.raises(DataResumeError, match="different batch counts"):
        loader(shards, 0, 2).load_world_state(odd)



def test_same_world_with_fewer_workers_continues_the_rotation(shards):
    """Own state, same world size: num_workers may change to a divisor of the saved stream count;
    after 3 batches of 2 streams the main process continues with stream 1."""
    reference = take(loader(shards, 0, 1, workers=2), 8)
    (first,), own = saved([loader(shards, 0, 1, workers=2)], 3)
    assert own[0]["next_worker"] == 1
    same = loader(shards, 0, 1, workers=0)
    same.load_state_dict(own[0])
    assert same.state_dict()["streams_per_rank"] == 2
    assert all(same_batch(a, b) for a, b in zip(reference, first + take(same, 5), strict=True))

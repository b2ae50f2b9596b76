"""Loader workers next to a running process group start from a forkserver, not by fork
(data_pipelines.stateful.worker_context; issue 20): same batches as reading in-process."""

import io

from PIL import Image

from data_pipelines.decode.image import ImageDecodeConfig
from data_pipelines.readers.image_text import ImageTextReaderConfig, build_image_text_reader
from data_pipelines.stateful import worker_context
from data_pipelines.stream import StreamConfig
from data_pipelines.testing import same_batch, write_samples
from tests.distributed.spawn import spawn


def _loader(root, workers):
    stream = StreamConfig(shards=[str(root)], batch_size=2, samples_per_epoch=8, shuffle_buffer=2,
                          num_workers=workers, seed=1, rank=0, world_size=2)
    return build_image_text_reader(ImageTextReaderConfig(stream=stream, image=ImageDecodeConfig(size=8)))


def _in_group(rank, world, root):
    assert worker_context().get_start_method() == "forkserver"
    it_worker, it_main = iter(_loader(root, 1)), iter(_loader(root, 0))  # both: one stream
    for _ in range(3):  # 2 batches per epoch: a second worker from the same forkserver
        assert same_batch(next(it_worker), next(it_main))


def test_workers_start_from_a_forkserver_under_a_process_group(tmp_path):
    assert worker_context() is None  # no process group here: plain fork
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (20, 40, 90)).save(buf, format="JPEG")
    write_samples(tmp_path / "shards", [{"__key__": f"k{i}", "jpg": buf.getvalue(), "txt": f"c{i}"}
                                        for i in range(12)], maxcount=3)
    spawn(_in_group, 1, tmp_path, tmp_path / "shards")

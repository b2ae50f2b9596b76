"""Two gloo processes: every rank yields the same number of batches, also with uneven shards."""

import io
import json
from datetime import timedelta

import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from data_pipelines.decode.image import ImageDecodeConfig
from data_pipelines.readers.image_text import ImageTextReaderConfig, build_image_text_reader
from data_pipelines.stream import StreamConfig
from data_pipelines.testing import write_samples


def _rank_main(rank, world, folder, out):
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        import torch

        result = {}
        for resample in (True, False):
            cfg = ImageTextReaderConfig(
                # rank and world size come from torch.distributed (None in the config)
                stream=StreamConfig(
                    shards=[f"{folder}/shards"],
                    batch_size=3,
                    samples_per_epoch=40,
                    resample=resample,
                    shuffle_buffer=4,
                    num_workers=1,
                    seed=5,
                ),
                image=ImageDecodeConfig(size=8),
            )
            reader = build_image_text_reader(cfg)
            keys, epochs = [], []
            for _, batch in zip(range(2 * len(reader)), reader, strict=False):  # two epochs
                # a DDP step: a collective per batch, which hangs if one rank runs out first
                t = torch.ones(1)
                dist.all_reduce(t)
                keys += batch["key"]
                epochs.append(reader.state_dict()["epoch"])
            result[str(resample)] = {"batches": len(reader), "keys": keys, "epochs": epochs}
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_batches(tmp_path):
    samples = []
    for i in range(21):  # shards of 10, 7 and 4 samples: they cannot be split evenly over 2 ranks
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (i * 10, 0, 0)).save(buf, format="JPEG")
        samples.append({"__key__": f"k{i:02d}", "jpg": buf.getvalue(), "txt": "c"})
    write_samples(tmp_path / "shards", samples[:10], maxcount=10)
    with open(tmp_path / "shards" / "sizes.json") as f:
        first = json.load(f)
    # append two more, smaller shards by writing to a second folder and moving them in
    sizes = dict(first)
    for j, part in enumerate((samples[10:17], samples[17:])):
        sub = tmp_path / f"tmp{j}"
        write_samples(sub, part, maxcount=10)
        (sub / "shard-000000.tar").rename(tmp_path / "shards" / f"shard-00000{j + 1}.tar")
        sizes[f"shard-00000{j + 1}.tar"] = len(part)
    (tmp_path / "shards" / "sizes.json").write_text(json.dumps(sizes))

    mp.spawn(_rank_main, args=(2, str(tmp_path), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    n = 40 // (2 * 3)
    for mode in ("True", "False"):
        assert r0[mode]["batches"] == r1[mode]["batches"] == n
        # both ranks cross into epoch 1 after exactly n batches and finish 2n steps in lockstep
        assert r0[mode]["epochs"] == r1[mode]["epochs"] == [0] * (n - 1) + [1] * n + [2]
    assert r0["True"]["keys"] != r1["True"]["keys"]  # ranks read different streams

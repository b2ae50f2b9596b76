"""CPU benchmark of the streaming readers against plain decode loops over the same files (issue 5).

    python benchmarks/data_pipelines.py --out benchmarks/results

Image-text: JPEG 256x256 (photo-like texture) -> 224x224 normalised float tensors, batches of 32.
Baseline: a plain-PIL folder loader (open, RGB, bicubic resize of the shorter side, centre crop,
to tensor, normalise, stack) in one process. Ours: ``build_image_text_reader`` over shards built
from the same folder with ``mm shards build``, with 0 workers (the main process: the per-worker
speed) and with 1 and 2 DataLoader workers.

Audible video: 4 s mp4 clips (H.264 128x128 at 16 fps + AAC 16 kHz) -> 16 frames at 8 fps
(2 s, resized to 112x112) + 2 s of 16 kHz mono audio. Baseline: a direct decord loop
(``VideoReader.get_batch`` + ``AudioReader``) over the files. Ours: ``build_video_reader`` with
0, 1 and 2 workers. Samples/s are measured after a warm-up batch; everything runs in this one
process tree on this machine. Writes data_pipelines.md and data_pipelines.json to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from data_pipelines.collate import NORMALIZATIONS  # noqa: E402
from data_pipelines.decode.image import ImageDecodeConfig  # noqa: E402
from data_pipelines.readers.image_text import ImageTextReaderConfig, build_image_text_reader  # noqa: E402
from data_pipelines.readers.video import VideoReaderConfig, build_video_reader  # noqa: E402
from data_pipelines.shards.build import BuildConfig, build_shards  # noqa: E402
from data_pipelines.shards.writer import ShardWriterConfig  # noqa: E402
from data_pipelines.stream import StreamConfig  # noqa: E402
from data_pipelines.synthetic.av import AVSynthConfig, make_av_sample  # noqa: E402


# -- data -------------------------------------------------------------------------------------
def photo_like(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour fields plus grain: decodes like a photo, unlike flat synthetic shapes."""
    from PIL import Image

    low = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC)).astype(np.int16)
    grain = rng.normal(0, 12, (size, size, 3))
    return np.clip(base + grain, 0, 255).astype(np.uint8)


def make_image_folder(folder: str, n: int) -> None:
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(photo_like(rng, 256)).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)
        with open(os.path.join(folder, f"{i:05d}.txt"), "w") as f:
            f.write(f"picture number {i}")


def make_video_files(folder: str, n: int) -> None:
    os.makedirs(folder, exist_ok=True)
    cfg = AVSynthConfig(seconds=4.0, fps=16, size=128)
    with open(os.path.join(folder, "videos.jsonl"), "w") as index:
        for i in range(n):
            s = make_av_sample(cfg, i)
            with open(os.path.join(folder, f"{i:04d}.mp4"), "wb") as f:
                f.write(s["mp4"])
            index.write(json.dumps({"video": f"{i:04d}.mp4", "caption": s["txt"]}) + "\n")


# -- baselines ----------------------------------------------------------------------------------
def plain_pil_loader(folder: str, batch_size: int):
    """The folder loader people write first: PIL per file, normalise, stack."""
    from PIL import Image

    mean = torch.tensor(NORMALIZATIONS["clip"][0]).view(1, 3, 1, 1)
    std = torch.tensor(NORMALIZATIONS["clip"][1]).view(1, 3, 1, 1)
    files = sorted(f for f in os.listdir(folder) if f.endswith(".jpg"))
    batch, captions = [], []
    for name in files:
        img = Image.open(os.path.join(folder, name)).convert("RGB")
        w, h = img.size
        s = 224 / min(w, h)
        img = img.resize((max(224, round(w * s)), max(224, round(h * s))), Image.BICUBIC)
        left, top = (img.width - 224) // 2, (img.height - 224) // 2
        img = img.crop((left, top, left + 224, top + 224))
        batch.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
        with open(os.path.join(folder, name[:-4] + ".txt")) as f:
            captions.append(f.read())
        if len(batch) == batch_size:
            yield {"image": (torch.stack(batch).float() / 255 - mean) / std, "text": captions}
            batch, captions = [], []


def direct_decord_loop(folder: str, batch_size: int):
    """decord straight over the files: 16 frames at 8 fps from a random start + 2 s of audio."""
    import decord

    rng = np.random.default_rng(0)
    files = sorted(f for f in os.listdir(folder) if f.endswith(".mp4"))
    frames, audio = [], []
    for name in files:
        path = os.path.join(folder, name)
        vr = decord.VideoReader(path, ctx=decord.cpu(0), width=112, height=112, num_threads=1)
        fps, n = vr.get_avg_fps(), len(vr)
        start = rng.uniform(0, max(0.0, n / fps - 2.0))
        idx = [min(int(round((start + i / 8) * fps)), n - 1) for i in range(16)]
        frames.append(torch.from_numpy(vr.get_batch(idx).asnumpy()).permute(0, 3, 1, 2))
        ar = decord.AudioReader(path, ctx=decord.cpu(0), sample_rate=16000, mono=True)
        a = ar[int(start * 16000) : int(start * 16000) + 32000].asnumpy()[0]
        audio.append(torch.from_numpy(np.pad(a, (0, 32000 - len(a)))))
        del vr, ar
        if len(frames) == batch_size:
            yield {"video": torch.stack(frames), "audio": torch.stack(audio)}
            frames, audio = [], []


# -- measurement --------------------------------------------------------------------------------
def rate(batches, batch_size: int, n_batches: int) -> float:
    """Samples/s over ``n_batches`` after one warm-up batch."""
    it = iter(batches)
    next(it)
    t = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * batch_size / (time.perf_counter() - t)


def stream_cfg(shards: str, batch_size: int, workers: int, samples: int) -> StreamConfig:
    return StreamConfig(
        shards=[shards],
        batch_size=batch_size,
        samples_per_epoch=samples,
        shuffle_buffer=100,
        num_workers=workers,
        seed=0,
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--videos", type=int, default=128)
    args = p.parse_args()
    # One intra-op thread, as in a DataLoader worker: on a small shared machine torch's default
    # thread pool makes a [32, 3, 224, 224] normalisation 20x slower in the main process.
    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="bench_data_")
    results: dict = {"image_text": {}, "video": {}}

    t = time.perf_counter()
    make_image_folder(f"{work}/images", args.images)
    t_build = time.perf_counter()
    build_shards(
        BuildConfig(
            kind="image-text",
            input=f"{work}/images",
            writer=ShardWriterConfig(out_dir=f"{work}/image_shards", maxcount=100),
        )
    )
    results["image_text"]["build_samples_per_s"] = args.images / (time.perf_counter() - t_build)
    bs, nb = 32, (args.images - 64) // 32 - 1
    r = results["image_text"]
    r["plain_pil_folder"] = rate(plain_pil_loader(f"{work}/images", bs), bs, nb)
    for w in (0, 1, 2):
        cfg = ImageTextReaderConfig(
            stream=stream_cfg(f"{work}/image_shards", bs, w, 10**6), image=ImageDecodeConfig(size=224)
        )
        r[f"ours_workers_{w}"] = rate(build_image_text_reader(cfg), bs, nb)
    r["ratio_ours_w0_vs_plain"] = r["ours_workers_0"] / r["plain_pil_folder"]
    print("image-text", json.dumps(r, indent=1), f"({time.perf_counter() - t:.0f} s)", flush=True)

    t = time.perf_counter()
    make_video_files(f"{work}/videos", args.videos)
    build_shards(
        BuildConfig(
            kind="video",
            input=f"{work}/videos/videos.jsonl",
            writer=ShardWriterConfig(out_dir=f"{work}/video_shards", maxcount=16),
        )
    )
    bs, nb = 8, args.videos // 8 - 2
    v = results["video"]
    v["direct_decord_loop"] = rate(direct_decord_loop(f"{work}/videos", bs), bs, nb)
    for w in (0, 1, 2):
        cfg = VideoReaderConfig(stream=stream_cfg(f"{work}/video_shards", bs, w, 10**6))
        cfg.video.num_frames, cfg.video.fps, cfg.video.size = 16, 8.0, 112
        v[f"ours_workers_{w}"] = rate(build_video_reader(cfg), bs, nb)
    v["ratio_ours_w0_vs_decord"] = v["ours_workers_0"] / v["direct_decord_loop"]
    v["scaling_w2_vs_w1"] = v["ours_workers_2"] / v["ours_workers_1"]
    print("video", json.dumps(v, indent=1), f"({time.perf_counter() - t:.0f} s)", flush=True)

    import decord
    import PIL

    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"CPU: {cpu}, {os.cpu_count()} cores",
        "command": "python benchmarks/data_pipelines.py " + " ".join(sys.argv[1:]),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pillow": PIL.__version__,
            "decord": decord.__version__,
        },
        "images": args.images,
        "videos": args.videos,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "data_pipelines.json"), "w") as f:
        json.dump({**meta, "results": results}, f, indent=1)
    md = render(meta, results)
    with open(os.path.join(args.out, "data_pipelines.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


def render(meta: dict, res: dict) -> str:
    i, v = res["image_text"], res["video"]
    lines = [
        "# Data pipelines, CPU throughput",
        "",
        f"- date: {meta['date']}",
        f"- device: {meta['device']}",
        f"- command: `{meta['command']}`",
        f"- versions: {meta['versions']}",
        "",
        "Samples/s (higher is better). `workers 0` runs in the main process (torch set to 1 thread,",
        "like a worker): the per-worker speed.",
        "",
        "| path | baseline (same files, same run) | ours, workers 0 | workers 1 | workers 2 | ours w0 / baseline |",
        "|---|---|---|---|---|---|",
        f"| image-text: JPEG 256² → 224² float, batch 32 ({meta['images']} images) | plain-PIL folder loader "
        f"{i['plain_pil_folder']:.0f} | {i['ours_workers_0']:.0f} | {i['ours_workers_1']:.0f} | "
        f"{i['ours_workers_2']:.0f} | {i['ratio_ours_w0_vs_plain']:.2f} |",
        f"| audible video: 16 frames 112² + 2 s 16 kHz audio, batch 8 ({meta['videos']} clips) | direct decord "
        f"loop {v['direct_decord_loop']:.1f} | {v['ours_workers_0']:.1f} | {v['ours_workers_1']:.1f} | "
        f"{v['ours_workers_2']:.1f} | {v['ratio_ours_w0_vs_decord']:.2f} |",
        "",
        f"Video scaling, 2 workers / 1 worker: {v['scaling_w2_vs_w1']:.2f}x "
        f"(on {meta['device'].split(', ')[-1]}; the main process also needs CPU).",
        f"Shard building (`mm shards build image-text`, full decode check): {i['build_samples_per_s']:.0f} images/s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

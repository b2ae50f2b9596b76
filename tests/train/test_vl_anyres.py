"""Any-res from shards: images of mixed aspect ratios keep their own sizes through the readers, each is
tiled by its own grid pinpoint in the `vl` recipe's batches, and a run trains, resumes and evaluates."""

import io
import itertools
import json

import pytest
import torch

from data_pipelines.decode.image import ImageDecodeConfig, decode_image
from data_pipelines.errors import SampleError
from data_pipelines.readers.vqa import VQAReaderConfig, build_vqa_reader
from data_pipelines.shards.writer import ShardSink, ShardWriterConfig
from data_pipelines.stream import one_pass
from data_pipelines.synthetic.shapes import COLOURS, POSITIONS
from data_pipelines.synthetic.vl import VLSynthConfig, make_vl_sample
from data_pipelines.synthetic.write import write_synthetic
from mm.demo import CONFIGS
from mm.models.anyres import num_image_tokens, process_images, tile_grid
from mm.train.recipe import load_recipe_config
from mm.train.recipes.vl import VLRecipe
from mm.train.trainer import Trainer

SIZES = [[64, 48], [48, 64], [96, 32], [32, 32]]  # width x height: 2x2, 2x2, 1x3 and 1x1 tile grids
TINY = ["model.lm.hidden=32", "model.lm.heads=2", "model.lm.kv_heads=2", "model.lm.head_dim=16",
        "model.lm.rotary_dim=8", "model.lm.ffn=32", "model.lm.experts=2", "model.vision.options.embed_dim=16",
        "train.progress=false", "train.log_every=1", "eval.batches=1", "schedule.warmup_steps=0",
        "schedule.name=constant", "blank_images=0"]


def synth(num, seed):
    return VLSynthConfig(num_samples=num, seed=seed, max_objects=2, sizes=SIZES)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("vl_anyres")
    for split, num, seed in (("train", 32, 0), ("heldout", 6, 1)):
        write_synthetic("vl", synth(num, seed), ShardWriterConfig(out_dir=str(root / split), maxcount=1000))
    return root / "train", root / "heldout"


def config(run_dir, shards, steps, extra=()):
    cfg = load_recipe_config(CONFIGS / "vl_anyres_tiny.yaml",
                             [f"run.dir={run_dir}", f"train.steps={steps}", *TINY, *extra])
    for source in cfg.data.sources:
        source.stream.shards, source.stream.batch_size, source.stream.shuffle_buffer = [str(shards[0])], 4, 8
    cfg.eval.caption_shards, cfg.eval.vqa_shards = [str(shards[1])], [str(shards[1])]
    cfg.stages[0].steps = 1
    return cfg


def test_synthetic_sizes_take_turns_and_keep_the_answers_in_place():
    """Sample i has size SIZES[i % 4] and each large object's colour is at its stretched cell (small
    ones on a 32-pixel side are 2 px wide: JPEG blurs them)."""
    cfg = VLSynthConfig(num_samples=24, seed=0, max_objects=3, sizes=SIZES)
    checked = 0
    for i in range(24):
        sample = make_vl_sample(cfg, i)
        image = decode_image(sample["jpg"], ImageDecodeConfig(resize="none")).int()
        w, h = SIZES[i % len(SIZES)]
        assert image.shape == (3, h, w)
        for o in json.loads(sample["json"])["objects"]:
            if o["size"] != "large":
                continue
            c, r = POSITIONS.index(o["position"]), min(w, h) / 3 * 0.42
            pixel = image[:, int((c // 3 + 0.5) * h / 3 + 0.3 * r), int((c % 3 + 0.5) * w / 3)]
            assert min(COLOURS, key=lambda k: (torch.tensor(COLOURS[k]) - pixel).abs().sum()) == o["colour"], (i, o)
            checked += 1
    assert checked >= 10
    with pytest.raises(ValueError, match=r"sizes entry \[64, 8\]"):
        VLSynthConfig(sizes=[[64, 8]])


def test_shards_synth_sizes_option(tmp_path, capsys):
    from data_pipelines.errors import SkipCounter
    from data_pipelines.shards.tar_stream import iter_shard
    from tools.cli import main

    out = tmp_path / "mixed"
    assert main(["shards", "synth", "vl", "-o", str(out), "-n", "3", "--sizes", "64x48, 24x40", "--quiet",
                 "--workers", "1"]) == 0
    got = list(iter_shard(str(out / "shard-000000.tar"), None, SkipCounter()))
    sizes = [tuple(decode_image(s["jpg"], ImageDecodeConfig(resize="none")).shape[1:]) for s in got]
    assert sizes == [(48, 64), (40, 24), (48, 64)]
    assert main(["shards", "synth", "vl", "-o", str(out), "--sizes", "64by48"]) == 2
    assert "--sizes: '64by48' is not WIDTHxHEIGHT" in capsys.readouterr().err
    assert main(["shards", "synth", "text", "-o", str(out), "--sizes", "64x48"]) == 2
    assert main(["shards", "synth", "vl", "-o", str(out), "--sizes", "64x20"]) == 2
    assert "sizes entry [64, 20]" in capsys.readouterr().err
    assert main(["shards", "synth", "vl", "-o", str(out), "--max-objects", "0"]) == 2
    assert "max_objects must be in [1, 9], got 0" in capsys.readouterr().err
    assert main(["shards", "synth", "av", "-o", str(out), "--max-objects", "1"]) == 2
    assert "--max-objects does not apply to the av set" in capsys.readouterr().err
    one = tmp_path / "one"
    assert main(["shards", "synth", "vl", "-o", str(one), "-n", "4", "--max-objects", "1", "--quiet",
                 "--workers", "1"]) == 0
    captions = [s["txt"].decode() for s in iter_shard(str(one / "shard-000000.tar"), None, SkipCounter())]
    assert len(captions) == 4 and not any(" and " in c for c in captions), captions  # one shape each


def test_batches_mix_tile_counts_and_equal_the_processor_on_each_image_alone(tmp_path, shards):
    cfg = config(tmp_path, shards, steps=1)
    recipe = VLRecipe(cfg)
    model = recipe.build_model()
    by_key = {s["__key__"]: s for s in (make_vl_sample(synth(32, 0), i) for i in range(32))}
    mixed = 0
    for batch in itertools.islice(recipe.build_train_data(), 4):
        assert isinstance(batch["image"], list) and len(batch["image"]) == 4
        inputs = recipe.device_batch(batch)
        sizes = inputs["image_sizes"].tolist()
        tiles = [1 + gh * gw for gh, gw in (tile_grid(h, w, cfg.model.image) for h, w in sizes)]
        mixed += len(set(tiles)) > 1  # one batch, different tile counts
        assert inputs["pixel_values"].shape[0] == sum(tiles)
        for key, (h, w), mine, ids in zip(batch["key"], sizes, inputs["pixel_values"].split(tiles),
                                          inputs["input_ids"], strict=True):
            alone = process_images([decode_image(by_key[key]["jpg"], ImageDecodeConfig(resize="none"))],
                                   cfg.model.image)
            assert alone.image_sizes.tolist() == [[h, w]]
            assert torch.equal(mine, alone.pixel_values)
            placeholders = int((ids == cfg.model.image_token_id).sum())
            assert placeholders == num_image_tokens(h, w, cfg.model.image, model.tokens_per_side)
        out = model(inputs["input_ids"], inputs["pixel_values"], inputs["image_sizes"], labels=inputs["labels"])
        assert torch.isfinite(out.loss)
    assert mixed >= 2, mixed


def test_bad_images_are_counted_by_reason(tmp_path, caplog):
    from PIL import Image

    def png(w, h):
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="PNG")
        return buf.getvalue()

    qa = json.dumps({"question": "what colour?", "answers": ["red"]})
    good = [{"__key__": f"ok{i}", "png": png(*SIZES[i]), "json": qa} for i in range(4)]
    bad = [{"__key__": "sliver", "png": png(64, 8), "json": qa},
           {"__key__": "huge", "png": png(300, 300), "json": qa},
           {"__key__": "corrupt", "png": png(40, 40)[:50], "json": qa}]
    with ShardSink(ShardWriterConfig(out_dir=str(tmp_path / "bad"), maxcount=100)) as sink:
        for sample in good[:2] + bad + good[2:]:
            sink.write(sample)
    image = ImageDecodeConfig(resize="none", min_side=16, max_pixels=200 * 200)
    with pytest.raises(SampleError, match=r"image_too_small: 64x8: a side < min_side=16"):
        decode_image(bad[0]["png"], image)
    reader = build_vqa_reader(VQAReaderConfig(stream=one_pass(tmp_path / "bad", 8), image=image, normalize="none"))
    with caplog.at_level("WARNING", logger="data_pipelines"):
        batches = list(reader)
    assert [tuple(i.shape) for i in batches[0]["image"]] == [(3, h, w) for w, h in SIZES]
    assert reader.counts() == {"good": 4, "errors": {"image_too_small": 1, "image_too_large": 1, "bad_image": 1}}
    assert "skipped (image_too_small) sliver in " in caplog.text and "64x8: a side < min_side=16" in caplog.text
    assert "skipped (image_too_large) huge in " in caplog.text and "300x300 > max_pixels=40000" in caplog.text
    with pytest.raises(ValueError, match="min_side must be >= 1, got 0"):
        ImageDecodeConfig(min_side=0)


def test_own_size_images_are_normalised_as_a_stacked_batch():
    from data_pipelines.collate import collate_images

    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8, generator=g) for _ in range(3)]
    for normalize in ("clip", "imagenet", "none"):
        stacked = collate_images(images, normalize, own_sizes=False)
        listed = collate_images(images, normalize, own_sizes=True)
        assert isinstance(listed, list) and all(torch.equal(a, b) for a, b in zip(listed, stacked, strict=True))
    odd = collate_images([images[0], images[1][:, :3]], "clip", own_sizes=True)
    assert [tuple(i.shape) for i in odd] == [(3, 5, 7), (3, 3, 7)]


def test_train_resume_and_evaluate_from_mixed_aspect_shards(tmp_path, shards, monkeypatch):
    """4 steps straight equal 2 steps + a resume to 4 (weights bit for bit); the run's held-out losses
    and `mm eval vqa` from the same mixed-size shards work with the checkpoint."""
    from evals import vl_predict
    from mm.models.vlm_generate import generate as vl_predict_generate
    from tools.cli import main

    def trainer(run, steps, every=0):
        return Trainer(VLRecipe(config(tmp_path / run, shards, steps, [f"checkpoint.every={every}"])))

    whole = trainer("a", 4)
    result = whole.fit()
    assert {"caption/loss", "caption/blind_loss", "vqa/loss", "vqa/blind_loss"} <= set(result.eval_metrics)
    assert all(torch.isfinite(torch.tensor(v)) for v in result.eval_metrics.values())
    trainer("b", 2, every=2).fit()
    resumed = trainer("b", 4)
    resumed.fit(resume=str(tmp_path / "b" / "checkpoints" / "step_00000002"))
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a.cpu(), b.cpu()), name

    seen = []

    def generate(model, prompts, pixel_values, image_sizes, gen):
        seen.extend(tuple(hw) for hw in image_sizes.tolist())
        return vl_predict_generate(model, prompts, pixel_values, image_sizes, gen)

    monkeypatch.setattr(vl_predict, "generate", generate)
    records = vl_predict.predict(tmp_path / "b", [str(shards[1])], "caption", batch_size=4, max_new_tokens=3,
                                 device="cpu")
    assert len(records) == 6 and all(len(r["references"]) == 2 for r in records)
    assert seen == [(h, w) for w, h in (SIZES * 2)[:6]]  # each held-out image at its own size
    out = tmp_path / "vqa.json"
    assert main(["eval", "vqa", str(tmp_path / "b"), "--shards", str(shards[1]), "--batch-size", "5",
                 "--max-new-tokens", "3", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    questions = sum(len(json.loads(make_vl_sample(synth(6, 1), i)["json"])["qa"]) for i in range(6))
    assert report["items"] == questions and 0 <= report["scores"]["accuracy"] <= 100

"""The `lightnet_cls` recipe: labels from shards, the model switch, and a short learning check."""

from __future__ import annotations

import io
import json

import pytest
import torch

from data_pipelines.errors import SampleError
from data_pipelines.readers.image_label import ImageLabelReader, ImageLabelReaderConfig, shape_colour_classes
from mm.models.lightnet import LightNetClassifier, LightNetConfig
from tools.cli import main


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from mm.demo_lightnet import write_shapes_data

    train, heldout = write_shapes_data(tmp_path_factory.mktemp("shapes"), train=600, heldout=120)
    return [f"data.stream.shards=[{train}]", f"eval.shards=[{heldout}]"]


def test_short_learning_check(tmp_path, shapes):
    """150 steps: well above the blind baseline (colour is learned first; shapes take longer: the demo
    trains 300 steps for its 90 %). One torch thread, as the demo stage: faster for a model this small."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run = tmp_path / "run"
    assert main(["train", "configs/lightnet_cls_tiny.yaml", *shapes, f"run.dir={run}", "train.steps=150",
                 "train.progress=false", "data.stream.batch_size=32", "data.stream.num_workers=0",
                 "schedule.warmup_steps=10", "model.layers=2"]) == 0
    torch.set_num_threads(threads)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in evals if r["split"] == "eval"][-1]
    assert final["top1"] > max(0.3, 4 * final["blind_top1"]), final


def _sample(meta=None, **members):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    sample = {"__key__": "k", "png": buf.getvalue(), **{k: v.encode() for k, v in members.items()}}
    if meta is not None:
        sample["json"] = json.dumps(meta).encode()
    return sample


def test_label_sources():
    objects = ImageLabelReader(ImageLabelReaderConfig())
    classes = shape_colour_classes()
    assert len(classes) == 18
    one = {"objects": [{"colour": "red", "shape": "circle"}]}
    assert objects.label(_sample(one)) == classes.index("red circle")
    with pytest.raises(SampleError, match="ambiguous_label"):
        objects.label(_sample({"objects": one["objects"] * 2}))
    txt = ImageLabelReader(ImageLabelReaderConfig(label="txt", classes=["cat", "dog"]))
    assert txt.label(_sample(txt="dog\n")) == 1
    with pytest.raises(SampleError, match="unknown_label"):
        txt.label(_sample(txt="bird"))
    cls = ImageLabelReader(ImageLabelReaderConfig(label="cls", classes=["cat", "dog"]))
    assert cls.label(_sample(cls="0")) == 0 and cls.label(_sample(cls="dog")) == 1
    with pytest.raises(ValueError, match="needs the list of classes"):
        ImageLabelReaderConfig(label="txt")


def test_config_checks_name_the_bad_value():
    from mm.train.recipe import load_recipe_config

    with pytest.raises(ValueError, match="num_classes"):
        load_recipe_config("configs/lightnet_cls_tiny.yaml", ["model.num_classes=10"])
    with pytest.raises(ValueError, match="model.mixer"):
        load_recipe_config("configs/lightnet_cls_tiny.yaml", ["model.mixer=mamba"])


@pytest.mark.parametrize("config", ["lightnet_cls_deit_tiny", "lightnet_cls_deit_small"])
def test_deit_presets_have_deit_sizes(config):
    """Within 10 % of DeiT-Tiny (5.7M) and DeiT-Small (22.1M) parameters, both mixers (counted on
    the meta device: no memory, no init cost)."""
    from mm.train.recipe import load_recipe_config

    cfg = load_recipe_config(f"configs/{config}.yaml")
    target = {"lightnet_cls_deit_tiny": 5.7e6, "lightnet_cls_deit_small": 22.1e6}[config]
    for mixer in ("lightnet", "softmax"):
        with torch.device("meta"):
            model = LightNetClassifier(LightNetConfig(**{**vars(cfg.model), "mixer": mixer}))
        params = sum(p.numel() for p in model.parameters())
        assert abs(params - target) < 0.1 * target, (mixer, params)


def test_forward_at_224_with_a_class_token_and_cosine_lrpe():
    cfg = LightNetConfig(hidden=32, layers=1, heads=2, head_dim=16, ffn=48, num_classes=5, lrpe="cosine")
    model = LightNetClassifier(cfg)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()

"""Recipe `vl`: stages freeze and unfreeze parts, per-group learning rates, mixed sources, resume."""

import pytest
import torch
from torch import nn

from data_pipelines.mix import WeightedMix
from mm.demo import CONFIGS
from mm.demo_vl import write_vl_data
from mm.train.checkpoint import load_weights
from mm.train.config import OptimConfig
from mm.train.optim import build_optimizer
from mm.train.recipe import load_recipe_config
from mm.train.recipes.vl import VLRecipe
from mm.train.seed import seed_everything
from mm.train.trainer import Trainer

TINY = ["model.lm.hidden=32", "model.lm.heads=2", "model.lm.kv_heads=2", "model.lm.head_dim=16",
        "model.lm.rotary_dim=8", "model.lm.ffn=32", "model.lm.experts=2", "model.vision.options.embed_dim=16",
        "train.progress=false", "train.log_every=1", "eval.batches=1", "schedule.warmup_steps=0",
        "optim.lr_scale={adapter: 3.0}"]


@pytest.fixture(scope="module")
def vl_shards(tmp_path_factory):
    return write_vl_data(tmp_path_factory.mktemp("vl"), train=60, heldout=8)


def config(tmp_path, vl_shards, steps, stages=((2, ["adapter"]), (0, ["adapter", "lm"])), extra=()):
    cfg = load_recipe_config(CONFIGS / "vl_tiny.yaml", [f"run.dir={tmp_path}", f"train.steps={steps}", *TINY, *extra])
    for source in cfg.data.sources:
        source.stream.shards, source.stream.batch_size, source.stream.shuffle_buffer = [str(vl_shards[0])], 4, 8
    cfg.eval.caption_shards, cfg.eval.vqa_shards = [str(vl_shards[1])], [str(vl_shards[1])]
    for stage, (steps_, parts) in zip(cfg.stages, stages, strict=True):
        stage.steps, stage.train = steps_, parts
    return cfg


def weights(model, prefix):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


def same(a, b):
    return all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)  # the trainer's model is on the GPU where present


def test_stages_train_only_their_parts(tmp_path, vl_shards):
    cfg = config(tmp_path, vl_shards, steps=4, extra=["checkpoint.every=2"])
    seed_everything(cfg.run.seed)
    init = VLRecipe(cfg).build_model().state_dict()
    trainer = Trainer(VLRecipe(cfg))
    result = trainer.fit()
    assert result.step == 4 and {"caption/loss", "caption/blind_loss", "vqa/loss"} <= set(result.eval_metrics)
    groups = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in groups for p in trainer.model.vision.parameters())  # no stage trains it
    after_warmup = type(trainer.model)(cfg.model)
    load_weights(tmp_path / "checkpoints" / "step_00000002", after_warmup)
    end = trainer.model
    for prefix, warmup_moves, later_moves in (("vision.", False, False), ("adapter.", True, True),
                                              ("lm.", False, True)):
        start = {k: v for k, v in init.items() if k.startswith(prefix)}
        assert same(start, weights(after_warmup, prefix)) != warmup_moves, prefix
        assert same(weights(after_warmup, prefix), weights(end, prefix)) != later_moves, prefix


def test_resume_continues_exactly(tmp_path, vl_shards):
    """Stopped after step 2 (a constant rate, so the shorter run's schedule is the same), resumed to 4:
    the weights equal those of 4 uninterrupted steps (model, optimizer, data positions, mix draws)."""
    constant = ["schedule.name=constant"]

    def trainer(run, steps):
        cfg = config(tmp_path / run, vl_shards, steps=steps, extra=constant)
        cfg.eval.caption_shards, cfg.eval.vqa_shards = [], []
        return Trainer(VLRecipe(cfg))

    whole = trainer("a", 4)
    whole.fit()
    trainer("b", 2).fit()
    second = trainer("b", 4)
    second.fit(resume=str(tmp_path / "b" / "checkpoints" / "step_00000002"))
    assert same(weights(whole.model, ""), weights(second.model, ""))
    assert second.data.count == whole.data.count == 4


def test_per_group_learning_rates():
    model = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)))
    opt = build_optimizer(model, OptimConfig(lr=1.0, lr_scale={"1": 0.5, "1.1": 0.1}))
    got = sorted((g["lr"], g["weight_decay"] > 0, len(g["params"])) for g in opt.param_groups)
    assert got == [(0.1, False, 2), (0.5, False, 1), (0.5, True, 1), (1.0, False, 1), (1.0, True, 1)]
    with pytest.raises(ValueError, match="'2' names no parameter"):
        build_optimizer(model, OptimConfig(lr=1.0, lr_scale={"2": 3.0}))


class _Counting:
    def __init__(self, name):
        self.name, self.n = name, 0

    def __iter__(self):
        while True:
            self.n += 1
            yield {"n": self.n}

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def test_weighted_mix_is_seeded_and_resumes():
    def run(mix, k):
        it = iter(mix)
        return [(b["source"], b["n"]) for b in (next(it) for _ in range(k))]

    mix = WeightedMix({"a": _Counting("a"), "b": _Counting("b"), "c": _Counting("c")}, {"a": 1, "b": 3, "c": 0})
    seq = run(mix, 200)
    assert all(s != "c" for s, _ in seq) and 120 < sum(s == "b" for s, _ in seq) < 180
    again = WeightedMix({"a": _Counting("a"), "b": _Counting("b"), "c": _Counting("c")}, {"a": 1, "b": 3, "c": 0})
    first = run(again, 50)
    state = again.state_dict()
    resumed = WeightedMix({"a": _Counting("a"), "b": _Counting("b"), "c": _Counting("c")}, {"a": 1, "b": 3, "c": 0})
    resumed.load_state_dict(state)
    assert first + run(resumed, 150) == seq
    with pytest.raises(ValueError, match="weights"):
        WeightedMix({"a": _Counting("a")}, {"a": 0})


def test_init_lm_from_a_hugging_face_folder(tmp_path, vl_shards):
    from mm.models.lm import LM, to_hf

    cfg = config(tmp_path, vl_shards, steps=1, extra=["model.lm.rotary_dim=16"])  # minimax: RoPE on whole heads
    source = LM(cfg.model.lm)
    to_hf(source, tmp_path / "lm_hf")
    cfg.init_lm = str(tmp_path / "lm_hf")
    model = VLRecipe(cfg).build_model()
    assert same(source.state_dict(), model.lm.state_dict())
    cfg.model.lm.ffn = 40
    with pytest.raises(ValueError, match="lm_hf: does not fit"):
        VLRecipe(cfg).build_model()




def test_blank_images_blanks_that_share_the_same_way_each_time(tmp_path, vl_shards):
    cfg = config(tmp_path, vl_shards, steps=1, extra=["blank_images=0.5"])
    recipe = VLRecipe(cfg)
    recipe.build_model()
    batch = next(iter(recipe.build_train_data()))
    tiles = recipe.device_batch(batch)["pixel_values"]
    blank = [bool((t == 0).all()) for t in tiles]
    assert 0 < sum(blank) < len(blank)  # 4 images: all-or-none has probability 1/8 per seed; this one mixes
    assert torch.equal(recipe.device_batch(batch)["pixel_values"], tiles)
    assert torch.equal(tiles[~torch.tensor(blank)], recipe.inputs(batch)["pixel_values"][~torch.tensor(blank)])
    with pytest.raises(ValueError, match="blank_images"):
        config(tmp_path, vl_shards, steps=1, extra=["blank_images=1.0"])


def _colour_samples(n: int, seed: int) -> tuple[list[torch.Tensor], list[str]]:
    import json

    from data_pipelines.decode.image import ImageDecodeConfig, decode_image
    from data_pipelines.synthetic.vl import VLSynthConfig, make_vl_sample

    synth = VLSynthConfig(num_samples=n, image_size=48, max_objects=1, seed=seed)
    samples = [make_vl_sample(synth, i) for i in range(n)]
    images = [decode_image(s["jpg"], ImageDecodeConfig(size=48)) for s in samples]
    return images, [json.loads(s["json"])["objects"][0]["colour"] for s in samples]


def test_the_demo_model_learns_to_read_colour_off_the_image(tmp_path):
    """The demo's model, prompt and optimizer settings (configs/vl_tiny.yaml) learn "what colour is
    the shape?" on one-object images: greedy answers on held-out images beat the same model's blind
    answers (images blanked) — which can do no better than guess among six colours — by far."""
    from mm.demo_vl import one_thread
    from mm.models.lm_generate import GenerationConfig
    from mm.models.vlm_generate import generate

    cfg = load_recipe_config(CONFIGS / "vl_tiny.yaml", [f"run.dir={tmp_path}"])
    seed_everything(0)
    recipe = VLRecipe(cfg)
    model = recipe.build_model()
    optimizer = build_optimizer(model, cfg.optim)
    images, colours = _colour_samples(1600, seed=0)
    test_images, test_colours = _colour_samples(96, seed=1)
    question = recipe.batcher.text("vqa", "what colour is the shape?")
    with one_thread():
        for step in range(200):
            rows = slice(step * 32 % 1600, step * 32 % 1600 + 32)
            batch = recipe.batcher.training_batch(images[rows], [question] * 32, colours[rows])
            loss = model(batch["input_ids"], batch["pixel_values"], batch["image_sizes"], labels=batch["labels"],
                         return_logits=False).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
        model.eval()
        accuracy = {}
        for blind in (False, True):
            tiles, prompts = recipe.batcher.prompts(test_images, [question] * 96, blind=blind)
            outs = generate(model, prompts, tiles.pixel_values, tiles.image_sizes,
                            GenerationConfig(max_new_tokens=8, eos_id=recipe.tokenizer.eos_id))
            answers = [recipe.tokenizer.decode([t for t in out if t != recipe.tokenizer.eos_id]).strip()
                       for out in outs]
            accuracy[blind] = sum(a == c for a, c in zip(answers, test_colours, strict=True)) / 96
    assert accuracy[False] > accuracy[True] + 0.4, accuracy

"""VLM packing: several samples in one row with per-sample attention give each sample the loss (and the
batch the gradients) of the unpacked batch, on any-res images of mixed sizes and the hybrid MoE LM."""

import itertools
import random

import pytest
import torch

from mm.models.vlm_packing import pack_batch, pack_plan


def test_pack_plan_first_fit_decreasing():
    assert pack_plan([5, 3, 8, 2, 4], 10) == [[2, 3], [0, 4], [1]]  # 8+2, 5+4, 3
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.randint(1, 13) for _ in range(rng.randint(1, 17))]
        plan = pack_plan(lengths, 13)
        assert sorted(itertools.chain(*plan)) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= 13 for row in plan)
        assert all(row == sorted(row) for row in plan)
    with pytest.raises(ValueError, match="14 tokens, over the row length pack_tokens=13"):
        pack_plan([3, 14], 13)


def test_pack_batch_layout():
    rows = [([1, 2, 3], [2, 3, -100]), ([4, 5, 6, 7, 8], [-100, 6, 7, 8, -100]), ([9], [-100])]
    batch, order = pack_batch(rows, pad_id=0, row_tokens=5)
    assert order == [1, 0, 2]  # rows [1] and [0, 2]; width 5, the longest row
    assert batch["input_ids"].tolist() == [[4, 5, 6, 7, 8], [1, 2, 3, 9, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, 8, -100], [2, 3, -100, -100, -100]]
    assert batch["cu_seqlens"].tolist() == [0, 5, 8, 9, 10]  # samples, then the second row's padding
    assert batch["cu_seqlens"].dtype == torch.int32


def _per_sample_losses(model, inputs):
    """Summed cross-entropy of each sample in flattened order (segments with labels), and their grads."""
    model.zero_grad()
    out = model(inputs["input_ids"], inputs["pixel_values"], inputs["image_sizes"], labels=inputs["labels"],
                cu_seqlens=inputs.get("cu_seqlens"))
    out.lm_loss.backward()
    labels = inputs["labels"].flatten()
    ce = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1).float(), labels, reduction="none")
    B, T = inputs["input_ids"].shape
    bounds = inputs.get("cu_seqlens", torch.arange(0, B * T + 1, T)).tolist()
    losses = [ce[a:b].sum() for a, b in itertools.pairwise(bounds) if (labels[a:b] != -100).any()]
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return torch.stack(losses).detach(), out.lm_loss.detach(), grads


def test_packed_batch_gives_the_unpacked_per_sample_losses(tmp_path):
    """Recipe batches from any-res shards of mixed aspect ratios, unpacked and packed (pack_tokens=1024),
    float32: per-sample losses within 1e-5, the batch loss and every gradient alike."""
    from data_pipelines.shards.writer import ShardWriterConfig
    from data_pipelines.synthetic.vl import VLSynthConfig
    from data_pipelines.synthetic.write import write_synthetic
    from mm.demo import CONFIGS
    from mm.train.recipe import load_recipe_config
    from mm.train.recipes.vl import VLRecipe

    sizes = [[64, 48], [48, 64], [96, 32], [32, 32]]
    write_synthetic("vl", VLSynthConfig(num_samples=24, seed=0, max_objects=2, sizes=sizes),
                    ShardWriterConfig(out_dir=str(tmp_path / "train"), maxcount=100))
    cfg = load_recipe_config(CONFIGS / "vl_anyres_tiny.yaml", [
        f"run.dir={tmp_path}", "model.lm.hidden=32", "model.lm.heads=2", "model.lm.kv_heads=2",
        "model.lm.head_dim=16", "model.lm.rotary_dim=8", "model.lm.ffn=32", "model.lm.experts=2",
        "model.vision.options.embed_dim=16", "blank_images=0", "pack_tokens=1024",
        "model.lm.init_std=0.3"])  # a random LM that reads its context: a leak across samples shows
    for source in cfg.data.sources:
        source.stream.shards, source.stream.batch_size, source.weight = [str(tmp_path / "train")], 7, 1.0
    torch.manual_seed(0)
    recipe = VLRecipe(cfg)
    model = recipe.build_model()
    model.requires_grad_(True)
    kinds = {True: 0, False: 0}
    for batch in itertools.islice(recipe.build_train_data(), 4):
        plain, packed = recipe.inputs(batch), recipe.device_batch(batch)
        kinds["cu_seqlens" in packed] += 1
        if "cu_seqlens" not in packed:  # packing would not save positions: the batch stays as it is
            assert all(torch.equal(packed[k], plain[k]) for k in plain)
            continue
        assert packed["input_ids"].shape[0] < plain["input_ids"].shape[0]  # several samples share rows
        assert packed["input_ids"].numel() < plain["input_ids"].numel()
        lengths = [int((row != -100).nonzero().max()) + 2 for row in plain["labels"]]  # answer, EOS, one past
        order = list(itertools.chain(*pack_plan(lengths, 1024)))
        want, want_loss, want_grads = _per_sample_losses(model, plain)
        got, got_loss, got_grads = _per_sample_losses(model, packed)
        torch.testing.assert_close(got, want[order], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
        leaky = model(packed["input_ids"], packed["pixel_values"], packed["image_sizes"], labels=packed["labels"])
        assert abs(leaky.lm_loss.item() - want_loss.item()) > 1e-2  # without cu_seqlens samples see each other
        assert want_grads.keys() == got_grads.keys() and "adapter.linear_1.weight" in got_grads
        for name, grad in want_grads.items():
            torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
        checked_packed = packed
    assert kinds[True] >= 1, kinds
    packed = checked_packed
    same = [torch.full((3, 40, 30), 90, dtype=torch.uint8)] * 3  # equal lengths: packing saves nothing
    kept = recipe.batcher.training_batch(same, [recipe.batcher.text("caption")] * 3, ["red"] * 3, pack_tokens=1024)
    assert "cu_seqlens" not in kept and kept["input_ids"].shape[0] == 3
    step = recipe.loss(model, packed)
    assert step.count == 7 and torch.isfinite(step.loss)
    with pytest.raises(ValueError, match="pack_tokens=100 must be 0"):
        load_recipe_config(CONFIGS / "vl_anyres_tiny.yaml", [f"run.dir={tmp_path}", "pack_tokens=100"])

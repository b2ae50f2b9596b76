"""train.activation_checkpointing: every block recomputed in backward, with the loss and gradients of
the plain model (float32 CPU, 1e-6; the LM also under CPU bf16 autocast), for the hybrid MoE LM, the
VLM (timm and open_clip towers) and a LightNet classifier; and training steps through `mm train`.
The peak-memory saving is the GPU benchmark's to show, not a CPU test's."""

import copy

import pytest
import torch
from torch import nn

from mm.models.anyres import ImageConfig, process_images
from mm.models.lightnet import LightNetClassifier, LightNetConfig
from mm.models.lm import LM, LMConfig
from mm.models.vlm import VLM, VLMConfig
from mm.train.activation_checkpointing import apply_activation_checkpointing, checkpointed_blocks
from mm.train.run_log import read_metrics
from tests.models.test_vlm import OPEN_CLIP, TIMM
from tests.train.test_lm_recipe import TINY
from tools.cli import main


def count_calls(modules: list[nn.Module]) -> list[int]:
    """A counter per module of how often its forward ran (a plain forward once, a checkpointed one twice
    per training step)."""
    counts = [0] * len(modules)
    for i, module in enumerate(modules):
        module.register_forward_pre_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


def assert_same_training(model: nn.Module, loss_fn, inner: list[str]) -> None:
    """Loss and every gradient equal with and without checkpointing; ``inner`` names a submodule of
    each block (relative to the model) whose forward runs twice per step once checkpointed."""
    model.train()
    plain, checkpointed = model, copy.deepcopy(model)
    assert apply_activation_checkpointing(checkpointed) > 0
    assert apply_activation_checkpointing(checkpointed) > 0  # twice: no checkpoint inside a checkpoint
    calls = count_calls([checkpointed.get_submodule(name) for name in inner])
    losses = []
    for m in (plain, checkpointed):
        torch.manual_seed(1)  # the same dropout draws, if any
        loss = loss_fn(m)
        loss.backward()
        losses.append(loss.detach())
    assert calls == [2] * len(inner)  # forward, then the recomputation in backward
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-6)
    grads = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    others = {n: p.grad for n, p in checkpointed.named_parameters() if p.grad is not None}
    assert grads and sorted(grads) == sorted(others)  # same names: the state dict is untouched
    for name, grad in grads.items():
        torch.testing.assert_close(others[name], grad, rtol=1e-6, atol=1e-6, msg=name)
    assert [n for n, _ in plain.state_dict().items()] == [n for n, _ in checkpointed.state_dict().items()]
    checkpointed.eval()  # evaluation runs the plain forward: nothing recomputed, nothing extra
    with torch.no_grad():
        loss_fn(checkpointed)
    assert calls == [3] * len(inner)


def tiny_lm(**overrides) -> LMConfig:
    fields = dict(vocab_size=61, hidden=32, layers=3, heads=2, kv_heads=1, head_dim=16, rotary_dim=8, ffn=24,
                  attn_type_list=["lightning", "softmax", "lightnet"], experts=4, top_k=2, shared_ffn=8,
                  router_aux_coef=0.01, router_z_coef=0.001)
    return LMConfig(**{**fields, **overrides})


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16_autocast"])
def test_lm_with_moe_and_lightning_layers_gets_the_same_gradients(bf16):
    """Under autocast the recomputation runs in the forward's autocast state: the same bf16 ops."""
    torch.manual_seed(0)
    model = LM(tiny_lm())
    ids = torch.randint(0, 61, (2, 37))
    labels = ids.roll(-1, 1)
    labels[0, :5] = -100
    cu = torch.tensor([0, 11, 37, 74])  # packed documents: the layers take a Packing argument

    def loss(m):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = m(ids, labels=labels, cu_seqlens=cu, return_logits=False)
        return out.loss  # cross-entropy + MoE load-balance and z-losses (non-tensor outputs of each block)

    assert_same_training(model, loss, [f"layers.{i}.input_layernorm" for i in range(3)])


@pytest.mark.parametrize("vision", [TIMM, OPEN_CLIP], ids=["timm", "open_clip"])
def test_vlm_checkpoints_lm_and_vision_tower_with_the_same_gradients(vision):
    """Vision tower trained too (its blocks get gradients); any-res tiles with image_newline."""
    torch.manual_seed(0)
    cfg = VLMConfig(vision=vision, image=ImageConfig(size=16, max_tiles=3), lm=tiny_lm(vocab_size=60),
                    image_token_id=59)
    model = VLM(cfg)
    pictures = [torch.randint(0, 256, (3, 20, 37), dtype=torch.uint8)]
    processed = process_images(pictures, cfg.image)
    n = model.num_image_tokens(20, 37)
    ids = torch.cat([torch.randint(0, 59, (1, 3)), torch.full((1, n), 59), torch.randint(0, 59, (1, 6))], 1)
    labels = torch.where(ids == 59, -100, ids.roll(-1, 1))
    towers, blocks = checkpointed_blocks(model)
    assert towers == [model.vision.encoder] and blocks == list(model.lm.layers)
    if vision.library == "timm":
        tower_blocks = [f"vision.encoder.blocks.{i}.norm1" for i in range(2)]  # layer -2 of 3: blocks 0, 1 run
    else:
        tower_blocks = ["vision.encoder.transformer.resblocks.0.ln_1"]  # layer 1: block 0 runs

    def loss(m):
        return m(ids, processed.pixel_values, processed.image_sizes, labels=labels, return_logits=False).loss

    assert_same_training(model, loss, [*tower_blocks, *(f"lm.layers.{i}.input_layernorm" for i in range(3))])


@pytest.mark.parametrize("mixer", ["lightnet", "softmax"])
def test_lightnet_classifier_gets_the_same_gradients(mixer):
    torch.manual_seed(0)
    model = LightNetClassifier(LightNetConfig(image_size=24, patch_size=8, num_classes=5, hidden=32, layers=2,
                                              heads=2, head_dim=16, ffn=32, mixer=mixer, gate_rank=4))
    images, labels = torch.randn(3, 3, 24, 24), torch.tensor([0, 4, 2])

    def loss(m):
        return nn.functional.cross_entropy(m(images), labels)

    assert_same_training(model, loss, [f"blocks.{i}.mixer" for i in range(2)])


def test_a_model_without_blocks_is_refused():
    with pytest.raises(ValueError, match="Linear has no blocks to checkpoint"):
        apply_activation_checkpointing(nn.Linear(2, 2))


def test_not_with_cuda_graphs():
    from mm.train.config import LoopConfig

    with pytest.raises(ValueError, match="train.cuda_graph and train.activation_checkpointing"):
        LoopConfig(cuda_graph=True, activation_checkpointing=True)


def test_lm_recipe_trains_with_it_and_matches_the_plain_run(tmp_path, shards, monkeypatch):
    """`mm train` with the switch: the trainer checkpoints the LM's blocks, and the losses equal those
    without it (float32 CPU) over 2 steps."""
    import mm.train.trainer as trainer

    wrapped = []
    monkeypatch.setattr(trainer, "apply_activation_checkpointing",
                        lambda model: wrapped.append(apply_activation_checkpointing(model)))
    base = ["train", "configs/lm_tiny.yaml", *TINY, *shards, "train.steps=2", "eval.batches=1",
            "data.stream.num_workers=0", "run.device=cpu"]
    losses = {}
    for on in (False, True):
        run = tmp_path / str(on)
        assert main([*base, f"run.dir={run}", f"train.activation_checkpointing={str(on).lower()}"]) == 0
        losses[on] = [r["loss"] for r in read_metrics(run) if r["split"] == "train"]
    assert wrapped == [4] and len(losses[True]) == 2  # configs/lm_tiny.yaml: 4 layers, wrapped once
    assert losses[True] == pytest.approx(losses[False], rel=1e-6, abs=1e-6)

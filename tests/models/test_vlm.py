"""The VLM: vision towers by name, adapter, any-resolution layout, splicing, loss masking, decoding."""

import pytest
import torch

from mm.models.anyres import ImageConfig, process_images
from mm.models.lm import LMConfig
from mm.models.lm_generate import GenerationConfig
from mm.models.vision_tower import VisionConfig, VisionTower
from mm.models.vlm import VLM, VLMConfig
from mm.models.vlm_generate import generate
from mm.models.vlm_prompt import IGNORE, pad_batch, training_example
from tests.ops.devices import PRECISIONS, autocast

IMAGE = 59
TIMM = VisionConfig(library="timm", name="vit_base_patch16_clip_224", layer=-2,
                    options=dict(img_size=16, patch_size=4, embed_dim=16, depth=3, num_heads=2))
OPEN_CLIP = VisionConfig(library="open_clip", name="ViT-B-32", layer=1, options=dict(
    embed_dim=8, vision_cfg=dict(image_size=16, layers=2, width=16, patch_size=4, head_width=8),
    text_cfg=dict(context_length=4, vocab_size=10, width=8, heads=1, layers=1)))


def tiny(vision=TIMM, experts=0, **overrides):
    lm = LMConfig(vocab_size=60, hidden=32, layers=2, heads=2, kv_heads=2, head_dim=16, rotary_dim=8, ffn=48,
                  attn_type_list=["lightning", "softmax"], experts=experts)
    fields = dict(vision=vision, image=ImageConfig(size=16, max_tiles=3), lm=lm, image_token_id=IMAGE)
    torch.manual_seed(0)
    return VLM(VLMConfig(**{**fields, **overrides})).eval()


def images(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]


def row(model, sizes, text_len=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = []
    for h, w in sizes:
        ids += torch.randint(0, IMAGE, (2,), generator=g).tolist() + [IMAGE] * model.num_image_tokens(h, w)
    return ids + torch.randint(0, IMAGE, (text_len,), generator=g).tolist()


@pytest.mark.parametrize("vision", [TIMM, OPEN_CLIP], ids=["timm", "open_clip"])
def test_mixed_batch_equals_each_sample_alone(vision):
    """Two images (of different sizes) in one sample, a text-only sample, one image: splicing in
    prompt order gives every row the logits it gets alone."""
    model = tiny(vision)
    per_row = [[(20, 37), (16, 16)], [], [(45, 13)]]
    rows = [row(model, s, seed=i) for i, s in enumerate(per_row)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    pictures = images([s for r in per_row for s in r])
    processed = process_images(pictures, model.cfg.image)
    with torch.no_grad():
        batch = model(ids, processed.pixel_values, processed.image_sizes).logits
        first = 0
        for i, (r, sizes) in enumerate(zip(rows, per_row, strict=True)):
            alone = process_images(pictures[first:first + len(sizes)], model.cfg.image) if sizes else None
            first += len(sizes)
            logits = model(torch.tensor([r]), *((alone.pixel_values, alone.image_sizes) if alone else ())).logits
            torch.testing.assert_close(batch[i, : len(r)], logits[0], rtol=1e-4, atol=1e-5)


def test_token_layout_counts_and_newlines():
    model = tiny()
    g = model.tokens_per_side  # 4 tokens per tile side
    assert model.num_image_tokens(16, 16) == g * g + g * (g + 1)  # thumbnail + a 1x1 grid with newlines
    assert model.num_image_tokens(16, 48) == g * g + g * (3 * g + 1)  # a 1x3 grid
    assert model.num_image_tokens(16, 40) == g * g + g * (10 + 1)  # 1x3 grid; 2 columns cover only padding
    fixed = tiny(image=ImageConfig(size=16, anyres=False))
    assert fixed.num_image_tokens(31, 77) == g * g
    p = process_images(images([(16, 48)]), model.cfg.image)
    visual = model.encode_images(p.pixel_values, p.image_sizes)
    assert visual.shape == (g * g + g * (3 * g + 1), 32)
    rows = visual[g * g:].view(g, 3 * g + 1, 32)
    assert torch.equal(rows[:, -1], model.image_newline.expand(g, 32))  # a newline ends every row


def test_pixel_shuffle_merges_neighbouring_patches():
    model = tiny(pixel_shuffle=2)
    assert model.tokens_per_side == 2 and model.adapter.linear_1.in_features == 4 * 16
    x = torch.arange(16.0).view(1, 16, 1).expand(1, 16, 16)  # token t holds t in every channel
    merged = model.adapter.shuffle(x)  # [1, 4, 64]
    assert merged[0, :, ::16].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_placeholder_count_mismatch_is_a_clear_error():
    model = tiny()
    p = process_images(images([(16, 16)]), model.cfg.image)
    ids = torch.tensor([row(model, [(16, 16)]) + [IMAGE]])
    with pytest.raises(ValueError, match=r"37 image placeholders .* give 36 visual tokens"):
        model(ids, p.pixel_values, p.image_sizes)
    with pytest.raises(ValueError, match="no images were given"):
        model(ids)


def test_loss_only_on_answer_and_zero_when_all_masked():
    model = tiny().train()
    p = process_images(images([(16, 16)]), model.cfg.image)
    prompt = row(model, [(16, 16)])
    ids, labels = training_example(prompt, [7, 8, 9], eos_id=1)
    assert labels[: len(prompt) - 1] == [IGNORE] * (len(prompt) - 1)
    assert labels[len(prompt) - 1:] == [7, 8, 9, 1, IGNORE]
    batch = pad_batch([(ids, labels)], pad_id=0, max_tokens=100)
    out = model(batch["input_ids"], p.pixel_values, p.image_sizes, labels=batch["labels"], return_logits=False)
    assert int(out.num_tokens) == 4 and out.loss > 0
    masked = torch.full_like(batch["labels"], IGNORE)
    out = model(batch["input_ids"], p.pixel_values, p.image_sizes, labels=masked, return_logits=False)
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert all(torch.isfinite(q.grad).all() for q in model.parameters() if q.grad is not None)


def test_vision_tower_weights_from_a_local_file_only(tmp_path):
    from safetensors.torch import save_file

    source = VisionTower(TIMM)
    torch.save(source.encoder.state_dict(), tmp_path / "vit.pth")  # read back with weights_only=True
    loaded = VisionTower(VisionConfig(**{**TIMM.__dict__, "checkpoint": str(tmp_path / "vit.pth")}))
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded(x), source(x))
    clip = VisionTower(OPEN_CLIP)
    save_file({"visual." + k: v.contiguous() for k, v in clip.encoder.state_dict().items()},
              str(tmp_path / "clip.safetensors"))
    loaded = VisionTower(VisionConfig(**{**OPEN_CLIP.__dict__, "checkpoint": str(tmp_path / "clip.safetensors")}))
    torch.testing.assert_close(loaded(x), clip(x))
    assert loaded(x).shape == (2, 16, 16)  # 4x4 patches, CLS dropped
    with pytest.raises(ValueError, match="clip.safetensors: does not fit"):
        VisionTower(VisionConfig(**{**TIMM.__dict__, "checkpoint": str(tmp_path / "clip.safetensors")}))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        VisionTower(VisionConfig(**{**TIMM.__dict__, "checkpoint": str(tmp_path / "nope.pth")}))


def test_layer_choice_takes_that_blocks_tokens():
    tower = VisionTower(TIMM)  # layer -2 of 3 blocks: the output of block 1
    x = torch.randn(1, 3, 16, 16)
    everything = tower.encoder.forward_intermediates(x, indices=[0, 1, 2], output_fmt="NLC", intermediates_only=True)
    torch.testing.assert_close(tower(x), everything[1])
    assert not torch.allclose(tower(x), everything[2])


def test_greedy_generation_matches_repeated_full_forwards():
    model = tiny()
    sizes = [[(20, 30)], [], [(16, 16), (33, 17)]]
    prompts = [row(model, s, seed=i) for i, s in enumerate(sizes)]
    p = process_images(images([s for r in sizes for s in r]), model.cfg.image)
    out = generate(model, prompts, p.pixel_values, p.image_sizes, GenerationConfig(max_new_tokens=5))
    tiles = iter(p.pixel_values.split(p.tiles))
    all_sizes = iter(p.image_sizes)
    for prompt, row_sizes, new in zip(prompts, sizes, out, strict=True):
        pixels = torch.cat([next(tiles) for _ in row_sizes]) if row_sizes else None
        image_sizes = torch.stack([next(all_sizes) for _ in row_sizes]) if row_sizes else None
        ids = list(prompt)
        for _ in range(5):
            with torch.no_grad():
                ids.append(int(model(torch.tensor([ids]), pixels, image_sizes).logits[0, -1].argmax()))
        assert new == ids[len(prompt):]


@pytest.mark.parametrize("device,dtype", PRECISIONS)
def test_train_step_and_decoding_on_each_device_and_precision(device, dtype):
    """Any-res images, a text-only row, the hybrid MoE LM: loss and every gradient finite, and the
    logits those of float32 on the CPU (bf16 autocast within its precision); greedy decoding runs."""
    reference = tiny(experts=2)
    model = tiny(experts=2).to(device).train()
    sizes = [[(20, 37)], [], [(45, 13), (16, 16)]]
    rows = [row(reference, s, seed=i) for i, s in enumerate(sizes)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    labels = torch.where(ids == IMAGE, IGNORE, ids.roll(-1, 1))
    p = process_images(images([s for r in sizes for s in r]), reference.cfg.image)
    with torch.no_grad():
        expected = reference(ids, p.pixel_values, p.image_sizes).logits
    with autocast(device, dtype):
        out = model(ids.to(device), p.pixel_values.to(device), p.image_sizes, labels=labels.to(device))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    unused = ("vision.encoder.blocks.2.", "vision.encoder.norm.")  # layer -2 of 3: the last block and norm never run
    for name, q in model.named_parameters():
        assert (q.grad is None) == name.startswith(unused), name
        assert q.grad is None or torch.isfinite(q.grad).all(), name
    err = ((out.logits.float().cpu() - expected).norm() / expected.norm()).item()
    assert err < (3e-2 if dtype else 1e-4)
    with autocast(device, dtype):
        new = generate(model, [r for r in rows], p.pixel_values.to(device), p.image_sizes,
                       GenerationConfig(max_new_tokens=3))
    assert [len(n) for n in new] == [3, 3, 3]

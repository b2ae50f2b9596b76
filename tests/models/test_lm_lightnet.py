"""The LM with causal LightNet layers (`attn_type_list` entry `lightnet`)."""

from __future__ import annotations

import pytest
import torch

from mm.models.lm import LM, LMConfig
from tests.ops.devices import PRECISIONS, autocast


def tiny_lm() -> LM:
    return LM(LMConfig(hidden=32, layers=2, heads=2, kv_heads=2, head_dim=16, rotary_dim=8, ffn=48,
                       attn_type_list=["lightnet", "softmax"]))


def test_logits_at_t_ignore_later_tokens_and_packing_separates_documents():
    model = tiny_lm().double()
    ids = torch.randint(0, 256, (1, 40))
    later = ids.clone()
    later[:, 25:] = torch.randint(0, 256, (1, 15))
    logits, logits_later = model(ids).logits, model(later).logits
    assert torch.allclose(logits[:, :25], logits_later[:, :25], atol=1e-10)
    assert not torch.allclose(logits[:, 25:], logits_later[:, 25:])
    packed = model(ids, cu_seqlens=torch.tensor([0, 15, 40])).logits  # two documents in one row
    assert torch.allclose(packed[:, :15], logits[:, :15], atol=1e-10)
    assert torch.allclose(packed[:, 15:], model(ids[:, 15:]).logits, atol=1e-10)


@pytest.mark.parametrize("device,dtype", PRECISIONS)
def test_trains(device, dtype):
    model = tiny_lm().to(device)
    ids = torch.randint(0, 256, (2, 33), device=device)
    with autocast(device, dtype):
        out = model(ids, labels=ids, return_logits=False)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    mixer = model.layers[0].self_attn
    assert mixer.qkv.weight.grad is not None and torch.isfinite(mixer.qkv.weight.grad).all()


def test_export_refuses_lightnet_layers_clearly(tmp_path):  # decoding: tests/models/test_lm_lightnet_decode.py
    from mm.models.lm_hf import HFFormatError, config_to_hf

    model = tiny_lm()
    model.cfg.experts, model.cfg.rotary_dim = 2, 16  # what the format needs besides
    with pytest.raises(HFFormatError, match="no lightnet layers"):
        config_to_hf(model.cfg)
    with pytest.raises(ValueError, match="unknown attention type"):
        LMConfig(layers=1, attn_type_list=["yoso"])

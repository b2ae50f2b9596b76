"""The AV contrastive encoder: shapes, unit embeddings, gradients, bf16 autocast, any audio length, config checks."""

import pytest
import torch

from mm.models.av_encoder import AVEncoder, AVEncoderConfig, contrastive_loss

TINY = AVEncoderConfig(embed_dim=16, image_size=32, frame_channels=[8, 16], n_mels=16, audio_width=32, audio_heads=2)


def test_forward_backward_and_embeddings():
    model = AVEncoder(TINY)
    video, wave = torch.randn(3, 2, 3, 48, 40), torch.randn(3, 5003)  # frames resized to 32x32; odd lengths
    frames, audio = model(video, wave)
    assert frames.shape == (3, 2, 16) and audio.shape == (3, 16)
    torch.testing.assert_close(frames.norm(dim=-1), torch.ones(3, 2))
    loss, _ = contrastive_loss(frames, audio, model.log_scale)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    missing = [n for n, g in grads.items() if g is None]
    assert not missing and all(torch.isfinite(g).all() for g in grads.values()), missing
    assert grads["audio.blocks.0.attn.qkv_proj.weight"].abs().sum() > 0  # the lightning-attention path learns
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fb, ab = model(video, wave)
    assert fb.dtype == ab.dtype == torch.float32 and torch.isfinite(fb).all() and torch.isfinite(ab).all()
    one = model.embed_audio(wave[:1, :401])  # the shortest track the metric passes (one 25 ms frame)
    assert one.shape == (1, 16) and torch.isfinite(one).all()
    assert not any("mel" in k for k in model.state_dict())  # the filterbank is derived, not saved


@pytest.mark.parametrize("field,value", [("image_size", 4), ("audio_heads", 3), ("init_temperature", 0.0),
                                         ("frame_channels", [])])
def test_bad_config_names_the_value(field, value):
    kwargs = {**TINY.__dict__, field: value}
    with pytest.raises(ValueError, match=field.split("_")[0]):
        AVEncoderConfig(**kwargs)

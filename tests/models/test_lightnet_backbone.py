"""LightNetBackbone: video + audio tokens with timestep and condition inputs (diffusion denoiser body)."""

from __future__ import annotations

import pytest
import torch

from mm.layers.patch_embed import PatchEmbed, unpatchify
from mm.models.lightnet_backbone import LightNetBackbone, LightNetBackboneConfig
from tests.ops.devices import PRECISIONS, autocast


def tiny(**kw):
    cfg = LightNetBackboneConfig(**{**dict(video_channels=3, audio_channels=2, cond_dim=8, hidden=24, layers=2,
                                           heads=2, head_dim=12, ffn=32, gate_rank=4), **kw})
    model = LightNetBackbone(cfg)
    with torch.no_grad():  # leave adaLN-Zero's zero start, so every input can reach the outputs
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def inputs(device="cpu"):
    return (torch.tensor([3.0, 500.0], device=device), torch.randn(2, 3, 4, 8, 8, device=device),
            torch.randn(2, 2, 16, 8, device=device), torch.randn(2, 5, 8, device=device))


def test_unpatchify_inverts_the_patch_layout():
    x = torch.randn(2, 3, 4, 6, 8)
    patches = x.reshape(2, 3, 2, 2, 3, 2, 4, 2).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(2, 24, 24)
    assert torch.equal(unpatchify(patches, (2, 3, 4), (2, 2, 2), 3), x)
    embed = PatchEmbed(3, 5, (2, 2, 2))
    assert embed(x)[1] == (2, 3, 4)


def test_zero_init_predicts_zeros_and_shapes_match_the_inputs():
    cfg = LightNetBackboneConfig(video_channels=3, audio_channels=2, hidden=24, layers=1, heads=2, head_dim=12,
                                 ffn=32)
    t, video, audio, _ = inputs()
    out = LightNetBackbone(cfg)(t, video=video, audio=audio)
    assert out["video"].shape == video.shape and out["audio"].shape == audio.shape
    assert not out["video"].any() and not out["audio"].any()  # adaLN-Zero


def test_every_input_reaches_the_outputs():
    model = tiny()
    t, video, audio, cond = inputs()
    base = model(t, video=video, audio=audio, cond=cond)
    for changed in (dict(t=t + 7), dict(cond=cond + 1), dict(audio=audio + 1)):
        args = {**dict(t=t, video=video, audio=audio, cond=cond), **changed}
        out = model(**args)
        assert not torch.allclose(out["video"], base["video"]), changed  # one scan mixes every token
    video_only = model(t, video=video)
    assert set(video_only) == {"video"} and video_only["video"].shape == video.shape
    with pytest.raises(ValueError, match="video or audio"):
        model(t)


@pytest.mark.parametrize("device,dtype", PRECISIONS)
def test_forward_backward(device, dtype):
    model = tiny().to(device)
    t, video, audio, cond = inputs(device)
    with autocast(device, dtype):
        out = model(t, video=video, audio=audio, cond=cond)
    (out["video"].float().square().mean() + out["audio"].float().square().mean()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.blocks[0].ada.weight.grad.abs().sum() > 0

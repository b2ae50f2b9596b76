"""LightNetBackbone: video + audio tokens with timestep and text inputs (diffusion denoiser body).
The two-stream coupling and the text mask are tested through the denoiser that wraps it
(tests/models/tavdiffusion/test_lightnet_denoiser.py)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from mm.layers.patch_embed import PatchEmbed, unpatchify
from mm.models.lightnet_backbone import LightNetBackbone, LightNetBackboneConfig, audio_time_in_video_tokens
from tests.ops.devices import PRECISIONS, autocast

SMALL = dict(hidden=24, layers=2, heads=2, head_dim=12, ffn=32, gate_rank=4, video_patch=[1, 2, 2], audio_patch=[2, 2])


def tiny(cond_dim=8):
    model = LightNetBackbone(LightNetBackboneConfig(**SMALL), video_channels=3, audio_channels=2, cond_dim=cond_dim)
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
    model = LightNetBackbone(LightNetBackboneConfig(**{**SMALL, "layers": 1}), video_channels=3, audio_channels=2,
                             cond_dim=8)
    t, video, audio, cond = inputs()
    out = model(t, video=video, audio=audio, cond=cond)
    assert out["video"].shape == video.shape and out["audio"].shape == audio.shape
    assert out["video_mid"].shape == out["audio_mid"].shape == (2, 24)
    assert not out["video"].any() and not out["audio"].any()  # adaLN-Zero and zero cross-attention output


def test_every_input_reaches_the_outputs():
    model = tiny()
    t, video, audio, cond = inputs()
    base = model(t, video=video, audio=audio, cond=cond)
    for changed in (dict(t=t + 7), dict(cond=cond + 1), dict(audio=audio + 1)):
        args = {**dict(t=t, video=video, audio=audio, cond=cond), **changed}
        out = model(**args)
        assert not torch.allclose(out["video"], base["video"]), changed  # the coupled block mixes the streams
    video_only = model(t, video=video)
    assert set(video_only) == {"video", "video_mid"} and video_only["video"].shape == video.shape
    with pytest.raises(ValueError, match="video or audio"):
        model(t)
    with pytest.raises(ValueError, match="cond_dim = 0"):
        tiny(cond_dim=0)(t, video=video, cond=cond)
    with pytest.raises(ValueError, match="audio_channels = 0"):
        LightNetBackbone(LightNetBackboneConfig(**SMALL), video_channels=3, audio_channels=0)(t, audio=audio)


def test_sides_off_the_patch_grid_are_padded_and_cropped():
    model = tiny()
    t, _, _, cond = inputs()
    video = torch.randn(2, 3, 3, 7, 5)  # rows and columns are not multiples of the 2 x 2 patch
    out = model(t, video=video, cond=cond)["video"]
    padded = model(t, video=torch.nn.functional.pad(video, (0, 1, 0, 1)), cond=cond)["video"]
    assert out.shape == video.shape
    torch.testing.assert_close(out, padded[..., :7, :5], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"audio must be \[B, C, 2 sides\]"):
        model(t, audio=torch.randn(2, 16, 8))


def test_audio_time_is_video_time_centre_to_centre():
    same_rate = audio_time_in_video_tokens(torch.arange(4.0), audio_frames=8, audio_patch=2, video_frames=4,
                                           video_patch=1)
    torch.testing.assert_close(same_rate, torch.arange(4.0))
    double_rate = audio_time_in_video_tokens(torch.arange(8.0), audio_frames=16, audio_patch=2, video_frames=8,
                                             video_patch=2)  # two audio tokens in each video token
    torch.testing.assert_close(double_rate.view(4, 2).mean(dim=1), torch.arange(4.0))
    torch.testing.assert_close(double_rate[1] - double_rate[0], torch.tensor(0.5))


def test_config_defaults_and_errors():
    assert LightNetBackboneConfig(layers=6).couple_layers == [1, 3, 5]
    assert LightNetBackboneConfig(layers=1).couple_layers == [0]
    loaded = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LightNetBackboneConfig), {"layers": 5}))
    assert loaded.couple_layers == [1, 3]
    for bad, key in ((dict(couple_layers=[4]), "couple_layers"), (dict(couple_layers=[1, 1]), "couple_layers"),
                     (dict(head_dim=20), "head_dim"), (dict(video_patch=[2, 2]), "video_patch"),
                     (dict(audio_patch=[0, 2]), "audio_patch"), (dict(lrpe="sine"), "lrpe"), (dict(heads=0), "heads")):
        with pytest.raises(ValueError, match=key):
            LightNetBackboneConfig(**bad)


@pytest.mark.parametrize("device,dtype", PRECISIONS)
def test_forward_backward(device, dtype):
    model = tiny().to(device)
    t, video, audio, cond = inputs(device)
    with autocast(device, dtype):
        out = model(t, video=video, audio=audio, cond=cond)
    (out["video"].float().square().mean() + out["audio"].float().square().mean()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.blocks[0].ada.weight.grad.abs().sum() > 0

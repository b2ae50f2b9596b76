"""The LightNet denoiser of TAVDiffusion behind the shared Denoiser interface (issue 18 contract):
shapes, no path between the streams with couple=False and one with couple=True, the text mask,
gradients, precisions."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from mm.models.lightnet_backbone import _stream_seqlens
from mm.models.tavdiffusion.denoiser import DenoiserOutput
from mm.models.tavdiffusion.lightnet_denoiser import LightNetDenoiserConfig, build_lightnet_denoiser
from tests.ops.devices import PRECISIONS, autocast

SMALL = dict(hidden=24, layers=3, heads=2, head_dim=12, ffn=32, gate_rank=4, feat_dim=8, video_patch=[1, 2, 2],
             audio_patch=[2, 2])


def model(**kw):
    denoiser = build_lightnet_denoiser(LightNetDenoiserConfig(**{**SMALL, **kw}), text_dim=6, video_channels=3,
                                       audio_channels=2)
    with torch.no_grad():  # move off the zero init (adaLN-Zero gates, zero heads) so every path carries signal
        for p in denoiser.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return denoiser


def inputs(batch=2, device="cpu"):
    """Odd sides, zero-padded to the patches: video 5 x 5 x 13 -> tokens 5 x 3 x 7 (patch 1x2x2), audio
    21 x 9 -> tokens 11 x 5 (patch 2x2); 5 text tokens, row b with b + 2 real ones."""
    video = torch.randn(batch, 3, 5, 5, 13, device=device)
    audio = torch.randn(batch, 2, 21, 9, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    text = torch.randn(batch, 5, 6, device=device)
    mask = torch.arange(5, device=device) < torch.arange(batch, device=device)[:, None] + 2
    return video, audio, t, text, mask


@pytest.mark.parametrize("batch", [1, 3])
def test_shapes(batch):
    video, audio, t, text, mask = inputs(batch)
    out = model()(video, audio, t, text, mask)
    assert isinstance(out, DenoiserOutput)
    assert out.video.shape == video.shape and out.audio.shape == audio.shape
    assert out.video_feat.shape == out.audio_feat.shape == (batch, 8)
    assert all(x.dtype == torch.float32 and torch.isfinite(x).all() for x in vars(out).values())


def test_uncoupled_streams_never_meet_and_coupled_ones_do():
    net = model()
    video, audio, t, text, mask = inputs()
    other_audio, other_video = torch.randn_like(audio), torch.randn_like(video)
    base = net(video, audio, t, text, mask, couple=False)
    new_audio = net(video, other_audio, t, text, mask, couple=False)
    new_video = net(other_video, audio, t, text, mask, couple=False)
    torch.testing.assert_close(new_audio.video, base.video, rtol=0, atol=1e-6)
    torch.testing.assert_close(new_audio.video_feat, base.video_feat, rtol=0, atol=1e-6)
    torch.testing.assert_close(new_video.audio, base.audio, rtol=0, atol=1e-6)
    torch.testing.assert_close(new_video.audio_feat, base.audio_feat, rtol=0, atol=1e-6)
    # each stream's segment of the one segmented scan is the scan of that stream alone
    alone = net.backbone(t, video=video, cond=text, cond_mask=mask)
    torch.testing.assert_close(alone["video"], base.video, rtol=0, atol=1e-6)

    coupled = net(video, audio, t, text, mask)
    assert (coupled.video - net(video, other_audio, t, text, mask).video).abs().max() > 1e-3
    assert (coupled.audio - net(other_video, audio, t, text, mask).audio).abs().max() > 1e-3
    assert (coupled.video - base.video).abs().max() > 1e-3


def test_the_coupled_scans_are_the_only_path_between_the_streams():
    net = model(couple_layers=[])
    video, audio, t, text, mask = inputs()
    torch.testing.assert_close(net(video, audio, t, text, mask).video,
                               net(video, audio, t, text, mask, couple=False).video, rtol=0, atol=0)


def test_masked_text_tokens_change_nothing():
    net = model()
    video, audio, t, text, mask = inputs()
    base = net(video, audio, t, text, mask)
    noise = torch.randn_like(text) * 10
    padded = net(video, audio, t, torch.where(mask[..., None], text, noise), mask)
    for a, b in zip(vars(base).values(), vars(padded).values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    real = net(video, audio, t, torch.where(mask[..., None], noise, text), mask)
    assert (real.video - base.video).abs().max() > 1e-3 and (real.audio - base.audio).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"rows \[1\] have no real token"):
        net(video, audio, t, text, torch.stack([mask[0], torch.zeros_like(mask[1])]))
    with pytest.raises(ValueError, match="bool"):
        net(video, audio, t, text, mask.float())


def test_gradient_reaches_every_parameter():
    net = model()
    out = net(*inputs())
    sum(x.square().mean() for x in vars(out).values()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_sampling_under_inference_mode_uncoupled():
    net = model()
    video, audio, t, text, mask = inputs()
    _stream_seqlens.cache_clear()  # the stream bounds are first built while sampling (an inference tensor
    with torch.inference_mode():  # would have no version counter for host_bounds to read)
        out = net(video, audio, t, text, mask, couple=False)
    ref = net(video, audio, t, text, mask, couple=False)
    torch.testing.assert_close(out.video, ref.video.detach(), rtol=0, atol=1e-6)


def test_bf16_autocast_on_cpu_is_finite():
    net = model()
    args = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(*args)
    ref = net(*args)
    for name, x in vars(out).items():
        assert torch.isfinite(x).all(), name
        err = (x.float() - getattr(ref, name)).abs().mean() / getattr(ref, name).abs().mean()
        assert err < 0.05, (name, err)


@pytest.mark.parametrize("device,dtype", PRECISIONS)
def test_forward_backward(device, dtype):
    net = model().to(device)
    with autocast(device, dtype):
        out = net(*inputs(device=device))
    sum(x.float().square().mean() for x in vars(out).values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_config_loads_and_checks():
    loaded = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LightNetDenoiserConfig), {"layers": 2}))
    assert isinstance(loaded, LightNetDenoiserConfig) and loaded.couple_layers == [1] and loaded.feat_dim == 64
    with pytest.raises(ValueError, match="feat_dim"):
        LightNetDenoiserConfig(feat_dim=0)
    with pytest.raises(ValueError, match="couple_layers"):
        LightNetDenoiserConfig(layers=2, couple_layers=[2])
    with pytest.raises(ValueError, match="text_dim"):
        build_lightnet_denoiser(LightNetDenoiserConfig(), text_dim=0, video_channels=4, audio_channels=8)
    net = model()
    video, audio, t, text, mask = inputs()
    with pytest.raises(ValueError, match="batch sizes differ"):
        net(video, audio[:1], t, text, mask)

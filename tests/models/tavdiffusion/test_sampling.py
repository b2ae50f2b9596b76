"""Sampling: seeds repeat exactly per clip, guidance and schedulers, and joint sampling differs from
independent sampling exactly through the coupling path."""

import dataclasses

import pytest
import torch

from mm.models.tavdiffusion.model import TAVDiffusion
from mm.models.tavdiffusion.sampling import SamplingConfig, sample_clips, sample_latents
from tests.models.tavdiffusion.tiny import tiny_config


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter drawn afresh (zero-initialised gates and projections included), small enough to stay finite."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = TAVDiffusion(tiny_config("lightnet"))
    randomise(m.denoiser, 1)
    return m.eval()


SHAPES = ((3, 2, 16, 16), (1, 5, 16))


def test_a_clip_repeats_exactly_whatever_the_batch_around_it(model):
    cfg = SamplingConfig(steps=3, guidance=2.0, seed=7)
    v3, a3 = sample_latents(model, ["a", "b", "c"], *SHAPES, cfg, torch.device("cpu"))
    again_v, again_a = sample_latents(model, ["a", "b", "c"], *SHAPES, cfg, torch.device("cpu"))
    assert torch.equal(v3, again_v) and torch.equal(a3, again_a)
    # clip 1 alone with seed 8 (= 7 + 1) is clip 1 of the batch
    v1, a1 = sample_latents(model, ["b"], *SHAPES, dataclasses.replace(cfg, seed=8), torch.device("cpu"))
    torch.testing.assert_close(v1[0], v3[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a1[0], a3[1], rtol=1e-4, atol=1e-5)
    other, _ = sample_latents(model, ["a", "b", "c"], *SHAPES, dataclasses.replace(cfg, seed=9), torch.device("cpu"))
    assert not torch.allclose(other, v3)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_schedulers_and_guidance(model, scheduler):
    cfg = SamplingConfig(steps=3, guidance=1.0, scheduler=scheduler)
    v, a = sample_latents(model, ["a", "b"], *SHAPES, cfg, torch.device("cpu"))
    assert v.shape == (2, *SHAPES[0]) and a.shape == (2, *SHAPES[1]) and v.isfinite().all() and a.isfinite().all()
    guided, _ = sample_latents(model, ["a", "b"], *SHAPES, dataclasses.replace(cfg, guidance=4.0), torch.device("cpu"))
    assert not torch.allclose(guided, v)  # the unconditional pass is mixed in


def test_joint_and_independent_differ_only_through_the_coupling():
    torch.manual_seed(0)
    model = TAVDiffusion(tiny_config("lightnet")).eval()
    cfg = SamplingConfig(steps=3, guidance=2.0)
    # coupling blocks that carry nothing across (couple_layers=[]): the two modes sample the same clips
    uncoupled_cfg = tiny_config("lightnet")
    uncoupled_cfg.lightnet.couple_layers = []
    uncoupled = TAVDiffusion(uncoupled_cfg).eval()
    randomise(uncoupled.denoiser, 1)
    joint = sample_latents(uncoupled, ["a"], *SHAPES, cfg, torch.device("cpu"))
    alone = sample_latents(uncoupled, ["a"], *SHAPES, dataclasses.replace(cfg, mode="independent"),
                           torch.device("cpu"))
    torch.testing.assert_close(joint, alone, rtol=1e-5, atol=1e-6)
    # with the exchange: independent sampling sees fresh noise instead of the partner, so the clips differ
    randomise(model.denoiser, 1)
    joint = sample_latents(model, ["a"], *SHAPES, cfg, torch.device("cpu"))
    alone = sample_latents(model, ["a"], *SHAPES, dataclasses.replace(cfg, mode="independent"), torch.device("cpu"))
    # (audio tokens are few beside the video's, so the video moves less: ~4e-4 against ~4e-3 here)
    assert (joint[0] - alone[0]).abs().max() > 1e-4 and (joint[1] - alone[1]).abs().max() > 1e-3


def test_decoded_clips_have_the_clip_length(model):
    clips = sample_clips(model, ["a", "b", "c"], num_frames=2, fps=4.0, cfg=SamplingConfig(steps=2, guidance=1.0),
                         device=torch.device("cpu"), batch_size=2)
    assert clips.frames.shape == (3, 2, 3, 16, 16) and clips.frames.dtype == torch.uint8
    assert clips.audio.shape == (3, 8000 // 400 * 400) and clips.audio.abs().max() <= 1
    assert clips.fps == 4.0 and clips.sample_rate == 16000


def test_bad_sampling_settings_are_named():
    for kwargs, key in (({"steps": 0}, "steps"), ({"guidance": 0.5}, "guidance"), ({"scheduler": "euler"}, "scheduler"),
                        ({"mode": "both"}, "mode")):
        with pytest.raises(ValueError, match=key):
            SamplingConfig(**kwargs)

"""The two-stream UNet denoiser (diffusers 3-D video blocks + 2-D audio blocks + couplings)."""

import pytest
import torch
from diffusers import UNet2DConditionModel, UNet3DConditionModel
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import TemporalConvLayer

from mm.models.tavdiffusion.coupling import StreamCoupling
from mm.models.tavdiffusion.denoiser import DenoiserOutput
from mm.models.tavdiffusion.unet import UNetDenoiserConfig, build_unet_denoiser, level_names
from mm.threads import one_thread
from tests.ops.devices import PRECISIONS, autocast

TEXT_DIM, CV, CA = 16, 4, 8


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these tensors are too small to split, and on the shared 2-core CI machine two
    threads wait on each other (30 Adam steps: ~6 s on one thread, 40+ s on two while others run)."""
    with one_thread():
        yield


def _model(**overrides):
    cfg = UNetDenoiserConfig(**{"channels": [16, 32], "feat_dim": 8, "temporal_dropout": 0.0, **overrides})
    return build_unet_denoiser(cfg, text_dim=TEXT_DIM, video_channels=CV, audio_channels=CA)


def _inputs(b=2, t=3, h=8, w=8, f=16, m=8, length=5, device="cpu"):
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 3:] = False  # the first prompt has 3 real tokens, 2 padding
    return dict(video=torch.randn(b, CV, t, h, w, device=device), audio=torch.randn(b, CA, f, m, device=device),
                t=torch.randint(0, 1000, (b,), device=device), text=torch.randn(b, length, TEXT_DIM, device=device),
                text_mask=mask.to(device))


def _zero_inits(model):
    """The output layers diffusers and the couplings initialise to zero (identity residual paths)."""
    couplings = getattr(model, "couplings", {})  # none in a diffusers reference UNet
    out = [c.video_from_audio.to_out[0] for c in couplings.values()]
    out += [c.audio_from_video.to_out[0] for c in couplings.values()]
    out += [m.conv4[-1] for m in model.modules() if isinstance(m, TemporalConvLayer)]
    return out


def _randomise_zero_inits(model):
    with torch.no_grad():
        for layer in _zero_inits(model):
            layer.weight.normal_(0, 0.2)
            layer.bias.normal_(0, 0.2)


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="norm_groups"):
        UNetDenoiserConfig(channels=[16, 20])
    with pytest.raises(ValueError, match="audio_channels_per_level"):
        UNetDenoiserConfig(channels=[16, 32], audio_channels_per_level=[16])
    with pytest.raises(ValueError, match="'down2'"):
        UNetDenoiserConfig(channels=[16, 32], couple_levels=["down0", "down2"])
    with pytest.raises(ValueError, match="plain_levels"):
        UNetDenoiserConfig(channels=[16, 32], plain_levels=[2])
    with pytest.raises(ValueError, match="temporal_dropout"):
        UNetDenoiserConfig(temporal_dropout=1.0)
    assert UNetDenoiserConfig(channels=[8, 16, 32]).coupled == ["down0", "down1", "down2", "mid", "up0", "up1", "up2"]
    assert UNetDenoiserConfig(couple_levels=["up1", "mid"]).coupled == ["mid", "up1"]
    assert level_names(1) == ["down0", "mid", "up0"]


def test_bad_inputs_raise_naming_the_shape():
    model = _model()
    x = _inputs()
    with pytest.raises(ValueError, match=r"video must be \[B, 4, T, h, w\], got \(2, 3, 3, 8, 8\)"):
        model(**{**x, "video": torch.randn(2, 3, 3, 8, 8)})
    with pytest.raises(ValueError, match="audio must be"):
        model(**{**x, "audio": torch.randn(1, CA, 16, 8)})
    with pytest.raises(ValueError, match="text_mask must be bool"):
        model(**{**x, "text_mask": x["text_mask"].float()})
    with pytest.raises(ValueError, match=r"t must be \[2\]"):
        model(**{**x, "t": torch.tensor(5)})


@pytest.mark.parametrize("shape", [dict(b=2, t=3, h=8, w=8, f=16, m=8), dict(b=1, t=1, h=5, w=7, f=13, m=6)],
                         ids=["even", "odd-prime"])
def test_shapes_dtypes_and_token_counts(shape):
    model = _model().eval()
    seen = {}
    for name, coupling in model.couplings.items():
        coupling.register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(
            name, (args[0].shape[1], args[2].shape[1])))
    x = _inputs(**shape)
    if shape["b"] == 1:
        x["t"] = x["t"].float()  # the contract allows long or float timesteps
    out = model(**x)
    assert isinstance(out, DenoiserOutput)
    assert out.video.shape == x["video"].shape and out.audio.shape == x["audio"].shape
    assert out.video_feat.shape == out.audio_feat.shape == (shape["b"], 8)
    for y in (out.video, out.audio, out.video_feat, out.audio_feat):
        assert y.dtype == torch.float32 and torch.isfinite(y).all()
    # frames are never downsampled (3-D blocks downsample h, w only); odd sizes round up
    half = lambda n: (n + 1) // 2  # noqa: E731
    t, h, w, f, m = shape["t"], shape["h"], shape["w"], shape["f"], shape["m"]
    assert seen["down0"] == (t * half(h) * half(w), half(f) * half(m))
    assert seen["mid"] == seen["down1"] == seen["down0"]
    assert seen["up1"] == (t * h * w, f * m)


def test_attention_heads_are_what_the_config_asks():
    """diffusers' 3-D blocks pass `num_attention_heads` on as the head width: the stream corrects for it."""
    model = _model(heads=2, channels=[16, 32])
    for name, module in model.named_modules():
        if isinstance(module, Attention) and not name.startswith("couplings"):
            assert module.heads == 2, name


def test_audio_stream_is_diffusers_unet2d():
    """Uncoupled, the audio stream is diffusers' UNet2DConditionModel: same keys, same outputs (mask included)."""
    model = _model(plain_levels=[1]).eval()
    ref = UNet2DConditionModel(in_channels=CA, out_channels=CA, block_out_channels=(16, 32), layers_per_block=1,
                               down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_DIM,
                               attention_head_dim=2, norm_num_groups=8, norm_eps=1e-5,
                               use_linear_projection=True).eval()
    model.audio.load_state_dict(ref.state_dict(), strict=True)
    x = _inputs(b=2, f=13, m=6)  # odd sizes: both upsample to the skip's size
    with torch.no_grad():
        ours = model(**x, couple=False).audio
        theirs = ref(x["audio"], x["t"], encoder_hidden_states=x["text"], encoder_attention_mask=x["text_mask"]).sample
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_video_stream_is_diffusers_unet3d():
    """Uncoupled, the video stream is diffusers' UNet3DConditionModel without its input temporal transformer
    (zeroed here: its output is residual + proj_out(...)); all-real text mask (UNet3D takes none)."""
    # UNet3DConditionModel fixes the head *width* (8 here) where we fix the head count (2): they agree where
    # every attending level is 16 wide; the plain 32-wide level still checks the channel wiring
    model = _model(channels=[32, 16], plain_levels=[0]).eval()
    ref = UNet3DConditionModel(in_channels=CV, out_channels=CV, block_out_channels=(32, 16), layers_per_block=1,
                               down_block_types=("DownBlock3D", "CrossAttnDownBlock3D"),
                               up_block_types=("CrossAttnUpBlock3D", "UpBlock3D"), cross_attention_dim=TEXT_DIM,
                               attention_head_dim=8, norm_num_groups=8).eval()
    _randomise_zero_inits(ref)
    with torch.no_grad():
        ref.transformer_in.proj_out.weight.zero_()
        ref.transformer_in.proj_out.bias.zero_()
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("transformer_in.")}
    model.video.load_state_dict(state, strict=True)
    x = _inputs(b=2, t=3, h=7, w=6)
    x["text_mask"][:] = True
    with torch.no_grad():
        ours = model(**x, couple=False).video
        theirs = ref(x["video"], x["t"], encoder_hidden_states=x["text"]).sample
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_untrained_coupling_is_the_identity():
    model = _model().eval()
    x = _inputs()
    with torch.no_grad():
        on, off = model(**x, couple=True), model(**x, couple=False)
    assert torch.equal(on.video, off.video) and torch.equal(on.audio, off.audio)


@pytest.mark.parametrize("levels", [["all"], ["down0"], ["mid"], ["up1"]])
def test_couple_false_isolates_the_streams(levels):
    model = _model(couple_levels=levels).eval()
    _randomise_zero_inits(model)
    x = _inputs()
    other_audio = {**x, "audio": x["audio"] + torch.randn_like(x["audio"])}
    other_video = {**x, "video": x["video"] + torch.randn_like(x["video"])}
    with torch.no_grad():
        base_off, base_on = model(**x, couple=False), model(**x, couple=True)
        a_off, a_on = model(**other_audio, couple=False), model(**other_audio, couple=True)
        v_off, v_on = model(**other_video, couple=False), model(**other_video, couple=True)
    assert torch.equal(a_off.video, base_off.video) and torch.equal(a_off.video_feat, base_off.video_feat)
    assert torch.equal(v_off.audio, base_off.audio) and torch.equal(v_off.audio_feat, base_off.audio_feat)
    assert (a_on.video - base_on.video).abs().max() > 1e-3
    assert (v_on.audio - base_on.audio).abs().max() > 1e-3


def test_text_mask_hides_padding_tokens_in_both_streams():
    model = _model().eval()
    _randomise_zero_inits(model)
    x = _inputs()
    padded = x["text"].clone()
    padded[0, 3:] += 5 * torch.randn(2, TEXT_DIM)  # only masked-out tokens change
    real = x["text"].clone()
    real[0, 1] += torch.randn(TEXT_DIM)
    for couple in (False, True):  # uncoupled: each stream's own masking is what is checked
        with torch.no_grad():
            base = model(**x, couple=couple)
            same = model(**{**x, "text": padded}, couple=couple)
            moved = model(**{**x, "text": real}, couple=couple)
        for key in ("video", "audio"):
            assert torch.equal(getattr(same, key), getattr(base, key)), (key, couple)  # masked weights are exactly 0
            assert (getattr(moved, key)[0] - getattr(base, key)[0]).abs().max() > 1e-4, (key, couple)


def test_gradients_reach_every_parameter():
    model = _model()
    x = _inputs()
    out = model(**x)
    loss = out.video.square().mean() + out.audio.square().mean() + (out.video_feat * out.audio_feat).sum()
    loss.backward()
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, missing
    for layer in _zero_inits(model):  # zero-initialised outputs still learn from step 1
        assert layer.weight.grad.abs().sum() > 0 and layer.bias.grad.abs().sum() > 0
    # once the zero inits have moved, every parameter behind them gets a gradient too
    model.zero_grad()
    _randomise_zero_inits(model)
    out = model(**x)
    (out.video.square().mean() + out.audio.square().mean() + (out.video_feat * out.audio_feat).sum()).backward()
    dead = [n for n, p in params.items() if p.grad.abs().sum() == 0]
    assert not dead, dead


@pytest.mark.parametrize("device,dtype", PRECISIONS)
def test_runs_in_each_precision(device, dtype):
    model = _model().to(device)
    x = _inputs(device=device)
    with torch.no_grad():
        ref = model(**x)
        with autocast(device, dtype):
            out = model(**x)
    for key in ("video", "audio", "video_feat", "audio_feat"):
        y, r = getattr(out, key).float(), getattr(ref, key)
        assert torch.isfinite(y).all(), key
        assert torch.nn.functional.cosine_similarity(y.flatten(), r.flatten(), dim=0) > 0.99, key


def test_bf16_autocast_on_cpu_is_finite():
    model = _model()
    _randomise_zero_inits(model)
    x = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**x)
        loss = out.video.float().square().mean() + out.audio.float().square().mean()
    loss.backward()
    for key in ("video", "audio", "video_feat", "audio_feat"):
        assert torch.isfinite(getattr(out, key)).all(), key
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_learns_a_fixed_target():
    """30 Adam steps on one tiny batch: the MSE to a fixed target falls well below where it started."""
    model = _model()
    x = _inputs(b=1, t=2)
    target_v, target_a = torch.randn_like(x["video"]), torch.randn_like(x["audio"])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        out = model(**x)
        loss = (out.video - target_v).square().mean() + (out.audio - target_a).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_coupling_reads_time_positions():
    """Permuting audio tokens together with their times leaves video unchanged; permuting tokens alone does not."""
    coupling = StreamCoupling(video_dim=16, audio_dim=8, heads=2)
    with torch.no_grad():
        for attn in (coupling.video_from_audio, coupling.audio_from_video):
            attn.to_out[0].weight.normal_(0, 0.3)
    v, a = torch.randn(2, 12, 16), torch.randn(2, 10, 8)
    v_tau, a_tau = torch.linspace(0.05, 0.95, 12), torch.linspace(0.05, 0.95, 10)
    perm = torch.randperm(10)
    with torch.no_grad():
        base, _ = coupling(v, v_tau, a, a_tau)
        together, _ = coupling(v, v_tau, a[:, perm], a_tau[perm])
        tokens_only, _ = coupling(v, v_tau, a[:, perm], a_tau)
    torch.testing.assert_close(together, base, rtol=1e-5, atol=1e-5)
    assert (tokens_only - base).abs().max() > 1e-3

"""TAVDiffusion assembled: the training loss (targets, shared timesteps, text dropout, InfoNCE), what its
checkpoints hold, and that it learns on a tiny fixed set."""

import pytest
import torch

from mm.models.tavdiffusion.model import TAVDiffusion, info_nce
from tests.models.tavdiffusion.tiny import SAMPLE_RATE, tiny_config


def clips(batch: int = 3, frames: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    video = torch.randint(0, 256, (batch, frames, 3, 20, 20), generator=g, dtype=torch.uint8)
    t = torch.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
    audio = torch.stack([0.3 * torch.sin(2 * torch.pi * (220 * (i + 1)) * t) for i in range(batch)])
    return video, audio, [f"clip number {i}" for i in range(batch)]


@pytest.mark.parametrize("denoiser", ["unet", "lightnet"])
def test_loss_reaches_what_trains_and_not_the_codecs(denoiser):
    torch.manual_seed(0)
    model = TAVDiffusion(tiny_config(denoiser))
    video, audio, texts = clips()
    loss, metrics = model.training_loss(video, audio, texts)
    assert loss.isfinite() and set(metrics) == {"video_mse", "audio_mse", "infonce", "av_retrieval"}
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith(("video_codec.", "audio_codec.")) for n in trainable)
    assert any(n.startswith("text_encoder.") for n in trainable)  # the bytes encoder trains
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    if denoiser == "unet":  # (LightNet's text cross-attention starts at zero: no signal back to the text yet)
        assert model.text_encoder.embed.weight.grad.abs().sum() > 0
    # checkpoints hold what trains; the frozen codecs are rebuilt from their config
    keys = set(model.state_dict())
    assert not any(k.startswith(("video_codec.", "audio_codec.")) for k in keys)
    other = TAVDiffusion(tiny_config(denoiser))
    other.load_state_dict(model.state_dict())
    for (name, p), q in zip(model.named_parameters(), other.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_targets_timesteps_and_text_dropout(monkeypatch):
    torch.manual_seed(0)
    model = TAVDiffusion(tiny_config(text_dropout=1.0))
    x0, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    t = torch.tensor([10, 900])
    ab = model.noise.alphas_cumprod[t].view(2, 1, 1)
    torch.testing.assert_close(model.target(x0, eps, t), ab.sqrt() * eps - (1 - ab).sqrt() * x0)
    seen = {}

    def spy_text(texts, device):
        seen["texts"] = list(texts)
        return real_text(texts, device)

    def spy_denoise(v, a, t, text, mask, couple=True):
        seen["t"] = t
        return real_denoise(v, a, t, text, mask, couple)

    real_text, real_denoise = model.encode_text, model.denoise
    monkeypatch.setattr(model, "encode_text", spy_text)
    monkeypatch.setattr(model, "denoise", spy_denoise)
    video, audio, texts = clips(batch=4)
    model.training_loss(video, audio, texts)
    assert seen["texts"] == [""] * 4  # text_dropout=1: every caption dropped
    assert seen["t"].shape == (4,)  # one timestep per clip, shared by its two streams


def test_info_nce_is_low_for_matching_pairs():
    a = torch.randn(8, 16)
    low, accuracy = info_nce(a, a + 0.01 * torch.randn(8, 16), temperature=0.1)
    high, _ = info_nce(a, torch.randn(8, 16), temperature=0.1)
    assert low < 0.1 < high and accuracy == 1.0


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="model.denoiser"):
        tiny_config("transformer")
    with pytest.raises(ValueError, match="text_dropout"):
        tiny_config(text_dropout=1.5)


def test_learns_a_tiny_fixed_set():
    torch.manual_seed(0)
    model = TAVDiffusion(tiny_config("lightnet", contrastive_weight=0.0, text_dropout=0.0))
    video, audio, texts = clips(batch=2)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    def heldout():  # the same timesteps and noise every time
        with torch.random.fork_rng():
            torch.manual_seed(123)
            with torch.no_grad():
                return model.training_loss(video, audio, texts)[0].item()

    before = heldout()
    for _ in range(50):
        opt.zero_grad()
        model.training_loss(video, audio, texts)[0].backward()
        opt.step()
    after = heldout()
    assert after < 0.6 * before

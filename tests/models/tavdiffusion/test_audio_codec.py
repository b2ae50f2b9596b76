"""Audio codec: AudioLDM's mel convention against an independent numpy reference, tones through
Griffin-Lim, and the HiFi-GAN vocoder and mel VAE against their libraries called directly."""

import math

import numpy as np
import pytest
import torch
from scipy.signal import get_window

from mm.models.tavdiffusion.audio_codec import LOG_FLOOR, AudioCodecConfig, build_audio_codec


def _tone(freq, num_samples, amp=0.5, sr=16000):
    return amp * torch.sin(2 * math.pi * freq * torch.arange(num_samples) / sr)


def _slaney_mel(hz):
    """Slaney's mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above (27 mels per ln 6.4)."""
    hz = np.asarray(hz, dtype=np.float64)
    return np.where(hz < 1000, hz * 3 / 200, 15 + np.log(np.maximum(hz, 1e-9) / 1000) * 27 / np.log(6.4))


def _slaney_hz(mel):
    return np.where(mel < 15, mel * 200 / 3, 1000 * np.exp((mel - 15) * np.log(6.4) / 27))


def _audioldm_log_mel(wave, sr=16000, n_fft=1024, hop=160, n_mels=64, f_max=8000.0):
    """AudioLDM's TacotronSTFT written from its definition: reflect-padded centred frames, periodic
    Hann window, |rfft|, librosa's default (Slaney scale, Slaney area-normalised) triangular mel
    filters from 0 Hz to f_max, natural log of values clamped at 1e-5; first S // hop frames."""
    x = np.pad(wave.astype(np.float64), n_fft // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * get_window("hann", n_fft, fftbins=True)
    magnitude = np.abs(np.fft.rfft(frames, axis=-1))  # [frames, n_fft/2 + 1]
    edges = _slaney_hz(np.linspace(_slaney_mel(0.0), _slaney_mel(f_max), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    lower = (freqs[None] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    upper = (edges[2:, None] - freqs[None]) / (edges[2:] - edges[1:-1])[:, None]
    filters = np.maximum(0, np.minimum(lower, upper)) * (2 / (edges[2:] - edges[:-2]))[:, None]
    logmel = np.log(np.maximum(magnitude @ filters.T, 1e-5))  # [frames, mels]
    return logmel[: len(wave) // hop]


def test_mel_is_audioldm_log_magnitude_slaney_mel():
    codec = build_audio_codec(AudioCodecConfig())
    wave = torch.cat([_tone(440, 2000) + 0.2 * _tone(3000, 2000), torch.rand(2401) * 0.6 - 0.3])[None]
    got = codec.log_mel(wave)[0, 0].double().numpy()
    want = _audioldm_log_mel(wave[0].numpy())
    assert got.shape == want.shape == (4401 // 160, 64)
    # float32 FFT noise reaches ~2e-3 in the log only where the magnitude is ~1e-5; an htk scale,
    # no area normalisation, a power spectrum or log10 would each be off by far more
    np.testing.assert_allclose(got, want, atol=5e-3, rtol=0)
    np.testing.assert_allclose(np.exp(got), np.exp(want), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("num_samples", [640, 4321, 8000])
def test_latent_shape_agrees_with_encode(num_samples):
    codec = build_audio_codec(AudioCodecConfig(griffin_lim_iters=2))
    z = codec.encode(torch.rand(2, num_samples) - 0.5)
    assert tuple(z.shape) == (2, *codec.latent_shape(num_samples)) == (2, 1, num_samples // 160, 64)
    assert codec.decode(z).shape == (2, num_samples // 160 * 160)


def test_mel_affine_and_silence():
    codec = build_audio_codec(AudioCodecConfig())
    z = codec.encode(torch.stack([torch.zeros(1600), _tone(1000, 1600, amp=1.0)]))
    assert torch.all(z[0] == -1)  # the 1e-5 floor is mel_min
    assert -1 <= z.min() and z.max() <= 1  # a full-scale tone stays inside [-1, 1]
    assert not any(p.requires_grad for p in codec.parameters())


@pytest.mark.parametrize("freq", [440.0, 1500.0])
def test_tone_survives_griffin_lim(freq):
    codec = build_audio_codec(AudioCodecConfig())
    wave = _tone(freq, 8000)[None]
    out = codec.decode(codec.encode(wave))
    assert out.shape == (1, 8000) and out.abs().max() <= 1
    spectrum = torch.fft.rfft(out[0] * torch.hann_window(8000)).abs()
    found = spectrum.argmax().item() * 16000 / 8000
    assert abs(found - freq) / freq < 0.05
    # and within one mel band: the filters that respond most to the two tones are neighbours at most
    fb = codec.mel.mel_scale.fb  # [n_fft/2 + 1, mels]
    band = lambda f: fb[round(f * 1024 / 16000)].argmax().item()  # noqa: E731
    assert abs(band(found) - band(freq)) <= 1
    assert torch.equal(codec.decode(codec.encode(wave)), out)  # deterministic phase start


@pytest.fixture(scope="module")
def tiny_hifigan_folder(tmp_path_factory):
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    torch.manual_seed(0)
    config = SpeechT5HifiGanConfig(model_in_dim=64, sampling_rate=16000, upsample_initial_channel=32,
                                   upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[10, 8, 4, 4, 4],
                                   resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
                                   normalize_before=False)
    folder = tmp_path_factory.mktemp("hifigan")
    SpeechT5HifiGan(config).save_pretrained(folder)
    return folder


def test_hifigan_vocoder_matches_transformers_directly(tiny_hifigan_folder):
    from transformers import SpeechT5HifiGan

    codec = build_audio_codec(AudioCodecConfig(vocoder=str(tiny_hifigan_folder)))
    ref = SpeechT5HifiGan.from_pretrained(tiny_hifigan_folder).eval()
    wave = _tone(700, 3200)[None].repeat(2, 1) * torch.tensor([[1.0], [0.3]])
    z = codec.encode(wave)
    out = codec.decode(z)
    with torch.no_grad():
        logmel = torch.from_numpy(np.stack([_audioldm_log_mel(w.numpy()) for w in wave])).float()  # [B, F, M]
        want = ref(logmel)  # AudioLDM's vocoder takes the natural-log magnitude mel [B, F, M]
    assert want.shape[1] > 3200  # its transposed convolutions overshoot F·hop by a few samples...
    want = want[:, :3200].clamp(-1, 1)  # ...which the codec crops
    assert out.shape == (2, 3200)
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-3)
    codec.train()
    assert not codec.vocoder.training


def test_hifigan_must_fit_the_mel_settings(tiny_hifigan_folder):
    with pytest.raises(ValueError, match=r"model\.audio\.vocoder=.*prod\(upsample_rates\) is 160.*needs 320"):
        build_audio_codec(AudioCodecConfig(hop=320, vocoder=str(tiny_hifigan_folder)))


@pytest.fixture(scope="module")
def tiny_mel_vae_folder(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=64, scaling_factor=0.7)
    folder = tmp_path_factory.mktemp("mel_vae")
    vae.save_pretrained(folder)
    return folder


def test_mel_vae_matches_diffusers_directly(tiny_mel_vae_folder):
    from diffusers import AutoencoderKL

    codec = build_audio_codec(AudioCodecConfig(kind="vae", vae=str(tiny_mel_vae_folder), griffin_lim_iters=4))
    ref = AutoencoderKL.from_pretrained(tiny_mel_vae_folder).eval()
    num_samples = 7 * 160 + 5  # 7 frames: padded to 8 for the factor-2 VAE
    wave = torch.rand(2, num_samples) - 0.5
    z = codec.encode(wave)
    assert tuple(z.shape) == (2, *codec.latent_shape(num_samples)) == (2, 4, 4, 32)
    logmel = torch.from_numpy(np.stack([_audioldm_log_mel(w.numpy()) for w in wave])).float()[:, None]
    padded = torch.cat([logmel, torch.full((2, 1, 1, 64), LOG_FLOOR)], dim=2)  # silence pads F to 8
    with torch.no_grad():
        want = ref.encode(padded).latent_dist.mean * 0.7
        torch.testing.assert_close(z, want, atol=1e-4, rtol=1e-4)
        mel_out = ref.decode(z / 0.7).sample[:, 0, :7]  # cropped back to the 7 encoded frames
    out = codec.decode(z, num_samples=num_samples)
    assert out.shape == (2, 7 * 160)
    torch.testing.assert_close(out, codec.mel_to_wave(mel_out), atol=1e-5, rtol=1e-4)
    assert codec.decode(z).shape == (2, 8 * 160)  # without the length: every padded frame


def test_bad_config_and_paths(tmp_path):
    with pytest.raises(ValueError, match=r"model\.audio\.kind.*\('mel', 'vae'\).*'wav'"):
        AudioCodecConfig(kind="wav")
    with pytest.raises(ValueError, match=r"model\.audio\.vae must name"):
        AudioCodecConfig(kind="vae")
    with pytest.raises(ValueError, match=r"model\.audio\.vae=.*nope.*no such local folder"):
        build_audio_codec(AudioCodecConfig(kind="vae", vae=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match=r"model\.audio\.vocoder=.*hifi.*no such local folder"):
        build_audio_codec(AudioCodecConfig(vocoder=str(tmp_path / "hifi")))
    with pytest.raises(ValueError, match=r"model\.audio\.vocoder=.*no config\.json"):
        build_audio_codec(AudioCodecConfig(vocoder=str(tmp_path)))
    codec = build_audio_codec(AudioCodecConfig())
    with pytest.raises(ValueError, match="639 samples is too short.*at least 640"):
        codec.encode(torch.zeros(1, 639))
    with pytest.raises(ValueError, match=r"\[B, S\] mono"):
        codec.encode(torch.zeros(1, 2, 1600))

"""Video codec: pixel space against plain torch, the VAE path against diffusers called directly."""

import pytest
import torch
import torch.nn.functional as F

from mm.models.tavdiffusion.video_codec import VideoCodecConfig, build_video_codec


def _frames(b, t, h, w):
    return torch.randint(0, 256, (b, t, 3, h, w), dtype=torch.uint8)


def _assert_frozen(codec):
    assert not any(p.requires_grad for p in codec.parameters())
    codec.train()
    assert not any(m.training for m in codec.modules())


def test_pixel_round_trip_is_exact_at_size():
    codec = build_video_codec(VideoCodecConfig(kind="pixel", size=16))
    frames = _frames(2, 3, 16, 16)
    z = codec.encode(frames)
    assert z.dtype == torch.float32 and tuple(z.shape) == (2, *codec.latent_shape(3, 16)) == (2, 3, 3, 16, 16)
    torch.testing.assert_close(z[1, :, 2], frames[1, 2].float() / 127.5 - 1)  # [B, C, T, h, w] layout
    assert z.min() >= -1 and z.max() <= 1
    assert torch.equal(codec.decode(z), frames)
    _assert_frozen(codec)


def test_pixel_resize_is_antialiased_and_crops_the_centre():
    codec = build_video_codec(VideoCodecConfig(kind="pixel", size=16))
    frames = _frames(1, 2, 48, 48)
    want = F.interpolate(frames[0].float(), size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(codec.encode(frames)[0].transpose(0, 1), (want / 127.5 - 1).clamp(-1, 1),
                               atol=1e-4, rtol=0)
    wide = torch.zeros(1, 1, 3, 32, 96, dtype=torch.uint8)
    wide[..., 32:64] = 255  # a white centre square between black side bands
    z = codec.encode(wide)
    assert tuple(z.shape) == (1, 3, 1, 16, 16)
    assert torch.all(z[..., 1:-1] > 0.9)  # the side bands were cropped away, not squeezed in


@pytest.fixture(scope="module")
def tiny_vae_folder(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.5)
    folder = tmp_path_factory.mktemp("video_vae")
    vae.save_pretrained(folder)
    return folder


def test_vae_matches_diffusers_called_directly(tiny_vae_folder):
    from diffusers import AutoencoderKL

    codec = build_video_codec(VideoCodecConfig(kind="vae", size=16, vae=str(tiny_vae_folder), vae_batch=3))
    ref = AutoencoderKL.from_pretrained(tiny_vae_folder).eval()
    frames = _frames(2, 5, 16, 16)  # 10 frames in chunks of 3: a ragged last chunk
    z = codec.encode(frames)
    assert codec.channels == 4 and tuple(z.shape) == (2, *codec.latent_shape(5, 16)) == (2, 4, 5, 8, 8)
    with torch.no_grad():
        x = frames.flatten(0, 1).float() / 127.5 - 1
        want = ref.encode(x).latent_dist.mean * 0.5
        torch.testing.assert_close(z.transpose(1, 2).flatten(0, 1), want, atol=1e-5, rtol=1e-5)
        out = codec.decode(z)
        pixels = ref.decode(want / 0.5).sample.clamp(-1, 1)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (2, 5, 3, 16, 16)
    torch.testing.assert_close(out.flatten(0, 1), ((pixels + 1) * 127.5).round().to(torch.uint8), atol=1, rtol=0)
    assert torch.equal(codec.encode(frames), z)  # deterministic: the posterior mean, no sampling
    _assert_frozen(codec)


def test_vae_under_bf16_autocast_gives_float32(tiny_vae_folder):
    codec = build_video_codec(VideoCodecConfig(kind="vae", size=16, vae=str(tiny_vae_folder)))
    frames = _frames(1, 2, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = codec.encode(frames)
        out = codec.decode(z)
    assert z.dtype == torch.float32 and torch.isfinite(z).all()
    torch.testing.assert_close(z, codec.encode(frames), atol=0.1, rtol=0.05)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (1, 2, 3, 16, 16)


def test_bad_config_and_paths(tmp_path, tiny_vae_folder):
    with pytest.raises(ValueError, match=r"model\.video\.kind.*\('pixel', 'vae'\).*'latent'"):
        VideoCodecConfig(kind="latent")
    with pytest.raises(ValueError, match=r"model\.video\.vae must name"):
        VideoCodecConfig(kind="vae")
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=rf"model\.video\.vae=.*{missing.name}.*no such local folder"):
        build_video_codec(VideoCodecConfig(kind="vae", vae=str(missing)))
    with pytest.raises(ValueError, match=r"model\.video\.vae=.*no config\.json"):
        build_video_codec(VideoCodecConfig(kind="vae", vae=str(tmp_path)))
    with pytest.raises(ValueError, match=r"size=15 must be a multiple"):
        build_video_codec(VideoCodecConfig(kind="vae", size=15, vae=str(tiny_vae_folder)))
    codec = build_video_codec(VideoCodecConfig(kind="pixel", size=8))
    with pytest.raises(ValueError, match="uint8"):
        codec.encode(torch.zeros(1, 1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        codec.encode(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))

"""A TAVDiffusion small enough for CPU tests: 16x16 pixel frames, a coarse 16-bin mel, a bytes text encoder."""

from mm.models.tavdiffusion.audio_codec import AudioCodecConfig
from mm.models.tavdiffusion.lightnet_denoiser import LightNetDenoiserConfig
from mm.models.tavdiffusion.model import TAVDiffusionConfig
from mm.models.tavdiffusion.text_encoders import TextEncoderConfig
from mm.models.tavdiffusion.unet import UNetDenoiserConfig
from mm.models.tavdiffusion.video_codec import VideoCodecConfig

SAMPLE_RATE = 16000


def tiny_config(denoiser: str = "unet", **overrides) -> TAVDiffusionConfig:
    return TAVDiffusionConfig(
        video=VideoCodecConfig(size=16),
        audio=AudioCodecConfig(hop=400, n_mels=16, griffin_lim_iters=4),
        text=TextEncoderConfig(dim=32, layers=1, max_len=24),
        denoiser=denoiser,
        unet=UNetDenoiserConfig(channels=[16, 32], plain_levels=[0], couple_levels=["down1", "mid", "up0"],
                                feat_dim=16, temporal_dropout=0.0),
        lightnet=LightNetDenoiserConfig(hidden=48, layers=2, heads=2, head_dim=24, ffn=96, video_patch=[1, 4, 4],
                                        audio_patch=[4, 4], feat_dim=16),
        **overrides,
    )

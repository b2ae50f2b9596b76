"""ImageBind's vision and audio towers (published key layout), their audio preprocessing and checkpoint loading."""

from mm.models.imagebind.audio import audio_clips
from mm.models.imagebind.checkpoint import ImageBindCheckpointError, load_imagebind
from mm.models.imagebind.model import ImageBindConfig, ImageBindVisionAudio, imagebind_huge

__all__ = ["ImageBindCheckpointError", "ImageBindConfig", "ImageBindVisionAudio", "audio_clips", "imagebind_huge",
           "load_imagebind"]

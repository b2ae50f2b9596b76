"""ImageBind towers: the published key layout, attention equal to torch's, loading, audio preprocessing."""

import json
import re
from pathlib import Path

import pytest
import torch

from mm.models.imagebind import (
    ImageBindCheckpointError,
    ImageBindConfig,
    ImageBindVisionAudio,
    audio_clips,
    imagebind_huge,
    load_imagebind,
)
from mm.models.imagebind.audio import clip_bounds, fbank_clip
from mm.models.imagebind.model import Attention

KEYS = json.loads((Path(__file__).parent / "imagebind_huge_vision_audio_keys.json").read_text())["keys"]
HUGE = imagebind_huge()
# Widths / 16 (heads kept dividing them), two blocks per tower, small inputs: the same key names.
TINY = ImageBindConfig(vision_width=80, vision_layers=2, vision_heads=4, audio_width=48, audio_layers=2,
                       audio_heads=4, embed_dim=64)


def shapes(model) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def test_full_size_keys_and_shapes_equal_the_published_checkpoint():
    with torch.device("meta"):  # 719M parameters, no memory
        model = ImageBindVisionAudio(HUGE)
    assert shapes(model) == KEYS


def _scaled(shape: list[int]) -> list[int]:
    """A huge shape with each width replaced by the tiny one (and the MLP / QKV multiples of it)."""
    table = {1280: 80, 3840: 240, 5120: 320, 768: 48, 2304: 144, 3072: 192, 1024: 64}
    return [table.get(d, d) for d in shape]


def test_tiny_towers_have_the_official_key_names_with_scaled_shapes():
    tiny = shapes(ImageBindVisionAudio(TINY))
    blocks_0_1 = {k: v for k, v in KEYS.items() if not re.search(r"\.blocks\.([2-9]|\d\d)\.", k)}
    assert tiny == {k: _scaled(v) for k, v in blocks_0_1.items()}


@pytest.mark.parametrize("bias_kv", [False, True])
def test_attention_equals_torch_multihead_attention(bias_kv):
    ours = Attention(24, 3, bias_kv)
    ref = torch.nn.MultiheadAttention(24, 3, bias=True, add_bias_kv=bias_kv)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_()
    ref.load_state_dict(ours.state_dict())  # same names: in_proj_*, bias_k/v, out_proj.*
    x = torch.randn(5, 7, 24)  # odd B and L
    expected = ref(*[x.transpose(0, 1)] * 3, need_weights=False)[0].transpose(0, 1)
    torch.testing.assert_close(ours(x), expected, rtol=1e-4, atol=1e-4)


def test_forward_shapes_unit_norm_and_bf16(tmp_path):
    model = ImageBindVisionAudio(TINY).eval()
    images = torch.randn(3, 3, 224, 224)
    fbank = torch.randn(2, 3, 1, 128, 204)
    with torch.no_grad():
        v = model.embed_images(images)
        a = model.embed_audio_clips(fbank)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            vb = model.embed_images(images)
    assert v.shape == (3, 64) and a.shape == (2, 64)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(3))
    assert torch.isfinite(vb).all() and torch.nn.functional.cosine_similarity(vb.float(), v).min() > 0.95
    # audio: each clip is embedded (unit vector x 20), then the 3 clips are averaged
    per_clip = torch.stack([model.embed_audio_clips(fbank[:, k:k + 1]) for k in range(3)]).mean(0)
    torch.testing.assert_close(a, per_clip, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.embed_audio_clips(fbank[:, :1]).norm(dim=-1), torch.full((2,), 20.0))
    with pytest.raises(ValueError, match="patches"):
        model.embed_images(torch.randn(1, 3, 112, 112))


def test_loads_its_own_state_dict_ignoring_other_modalities(tmp_path):
    model = ImageBindVisionAudio(TINY)
    state = dict(model.state_dict())
    state["modality_trunks.text.blocks.0.attn.in_proj_weight"] = torch.zeros(3, 3)  # other parts are ignored
    torch.save(state, tmp_path / "ib.pth")
    loaded = load_imagebind(tmp_path / "ib.pth", TINY)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed_images(images), model.eval().embed_images(images))


def test_bad_checkpoints_name_the_keys(tmp_path):
    state = dict(ImageBindVisionAudio(TINY).state_dict())
    del state["modality_heads.audio.2.weight"]
    state["modality_trunks.vision.blocks.0.mlp.fc1.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ImageBindCheckpointError) as err:
        load_imagebind(tmp_path / "bad.pth", TINY)
    assert "missing: modality_heads.audio.2.weight" in str(err.value)
    assert "modality_trunks.vision.blocks.0.mlp.fc1.bias: checkpoint (7,), model (320,)" in str(err.value)
    torch.save({"net": torch.nn.Linear(2, 2)}, tmp_path / "code.pth")  # a pickled module: refused
    with pytest.raises(ImageBindCheckpointError, match="weights_only"):
        load_imagebind(tmp_path / "code.pth", TINY)
    with pytest.raises(ImageBindCheckpointError, match="no such file"):
        load_imagebind(tmp_path / "absent.pth", TINY)


def test_audio_clips_follow_imagebind_preprocessing():
    from torchaudio.compliance import kaldi

    sr = 16000
    assert clip_bounds(5 * sr) == [(0, 2 * sr), (sr, 3 * sr), (2 * sr, 4 * sr)]  # starts k·(D−2)/3
    assert clip_bounds(sr) == [(0, 2 * sr)] * 3  # short track: the whole of it, three times
    # pytorchvideo's fractions of the float duration: 5.3 s starts clip 1 at 1.0999... s -> sample 17599
    assert clip_bounds(84800) == [(0, 32000), (17599, 49599), (35199, 67199)]
    wave = torch.randn(5 * sr) * 0.1 + 0.3  # an offset the per-clip mean removal takes out
    clips = audio_clips(wave)
    assert clips.shape == (3, 1, 128, 204)
    direct = kaldi.fbank((wave[sr:3 * sr] - wave[sr:3 * sr].mean())[None], htk_compat=True, sample_frequency=sr,
                         use_energy=False, window_type="hanning", num_mel_bins=128, dither=0.0,
                         frame_length=25, frame_shift=10).T  # [128, 198]
    torch.testing.assert_close(clips[1, 0, :, :198], (direct + 4.268) / 9.138)
    torch.testing.assert_close(clips[1, 0, :, 198:], torch.full((128, 6), 4.268 / 9.138))  # zero-padded, normalised
    long = fbank_clip(torch.randn(3 * sr))  # more frames than 204: cut
    assert long.shape == (1, 128, 204)
    with pytest.raises(ValueError, match="shorter than one 25 ms"):
        audio_clips(torch.zeros(100))

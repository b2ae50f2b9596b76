"""LightNet layers: MD-TPE, MD-LRPE, patch embeddings, the token mixer and the block (DESIGN §5)."""

from __future__ import annotations

import pytest
import torch

from mm.layers.lightnet import GroupRMSNorm, LightNetBlock, TokenMixer
from mm.layers.md_lrpe import MDLRPE
from mm.layers.md_tpe import MDTPE
from mm.layers.patch_embed import PatchEmbed, grid_coords
from tests.ops.devices import PRECISIONS, autocast


def toeplitz(n: int, lam: float) -> torch.Tensor:
    idx = torch.arange(n, dtype=torch.float64)
    return lam ** (idx[:, None] - idx[None, :]).abs()  # T_ts = λ^|t-s|


@pytest.mark.parametrize("grid", [(7,), (5, 3), (3, 4, 2)], ids=["1d", "2d", "3d"])
def test_md_tpe_equals_explicit_toeplitz_per_axis(grid):
    heads, C = 2, 6
    tpe = MDTPE(C, len(grid), heads)
    with torch.no_grad():
        tpe.decay_logit.copy_(torch.randn_like(tpe.decay_logit))
    x = torch.randn(2, *grid, C)
    lam = tpe.decays().double()
    expect = torch.zeros(2, *grid, heads, C // heads, dtype=torch.float64)
    xh = x.double().reshape(2, *grid, heads, C // heads)
    for a, n in enumerate(grid):
        for h in range(heads):
            # apply the explicit matrix along axis a (tensor dim 1 + a) to head h's channels
            moved = xh[..., h, :].movedim(1 + a, -1)  # [..., n]
            scale = (1 - lam[a, h]) / (1 + lam[a, h]) / len(grid)
            expect[..., h, :] += scale * (moved @ toeplitz(n, lam[a, h].item()).T).movedim(-1, 1 + a)
    assert torch.allclose(tpe(x).double(), expect.reshape(2, *grid, C), atol=1e-5)


@pytest.mark.parametrize("kind", ["rotate", "cosine"])
@pytest.mark.parametrize("axes", [1, 2, 3])
def test_md_lrpe_is_relative(kind, axes):
    """Shifting every coordinate by one offset leaves q'·k' unchanged; class tokens get Θ = 0."""
    lrpe = MDLRPE(head_dim=12, num_axes=axes, kind=kind)
    q, k = torch.randn(1, 10, 2, 12, dtype=torch.float64), torch.randn(1, 10, 2, 12, dtype=torch.float64)
    coords = torch.randint(0, 9, (10, axes)).float()
    has_pos = torch.ones(10, dtype=torch.bool)
    has_pos[0] = False  # a class token
    scores = []
    for shift in (torch.zeros(axes), torch.tensor([3.0, -5.0, 11.0][:axes])):
        theta = lrpe.angles(coords + shift, has_pos)
        qp, kp = lrpe(q, theta), lrpe(k, theta)
        assert qp.shape[-1] == lrpe.out_dim
        scores.append(torch.einsum("bthd,bshd->bhts", qp, kp))
    # among positioned tokens (the class token, at no position, is not shifted with them)
    assert torch.allclose(scores[0][..., 1:, 1:], scores[1][..., 1:, 1:], atol=1e-4)  # angles in float32
    assert not torch.allclose(scores[0][..., 1:, 1:], torch.einsum("bthd,bshd->bhts", q, k)[..., 1:, 1:], atol=1e-3)
    theta = lrpe.angles(coords, has_pos)
    assert torch.equal(lrpe(q, theta)[:, 0, :, :12], q[:, 0])  # Θ = 0: the class token as it is


def test_md_lrpe_rejects_a_head_dim_that_does_not_split():
    with pytest.raises(ValueError, match="even chunks"):
        MDLRPE(head_dim=10, num_axes=3)


def test_patch_embed_2d_image_spectrogram_and_3d_video():
    img, grid = PatchEmbed(3, 8, (4, 4))(torch.randn(2, 3, 16, 12))
    assert img.shape == (2, 12, 8) and grid == (4, 3)
    spec, grid = PatchEmbed(1, 8, (4, 2))(torch.randn(2, 20, 8))  # [B, time, mel]
    assert spec.shape == (2, 20, 8) and grid == (5, 4)
    vid, grid = PatchEmbed(3, 8, (2, 4, 4))(torch.randn(1, 3, 4, 8, 8))
    assert vid.shape == (1, 8, 8) and grid == (2, 2, 2)
    assert grid_coords((2, 3)).tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    with pytest.raises(ValueError, match="multiples of the patch"):
        PatchEmbed(3, 8, (4, 4))(torch.randn(1, 3, 10, 12))


def test_group_rms_norm_normalises_each_head():
    y = GroupRMSNorm(12, 3)(torch.randn(4, 5, 12) * torch.tensor([1.0, 10.0, 100.0]).repeat_interleave(4))
    rms = y.reshape(4, 5, 3, 4).pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-4)


def test_noncausal_mixer_is_permutation_equivariant_without_positions():
    """The single-scan property: any token order gives the same outputs, permuted alike."""
    mixer = TokenMixer(16, 2, 8, mixer="lightnet", causal=False).double()
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    perm = torch.randperm(23)
    assert torch.allclose(mixer(x, None)[:, perm], mixer(x[:, perm], None), atol=1e-12)
    theta = MDLRPE(8, 2).angles(grid_coords((23, 1)))  # with positions it is not
    assert not torch.allclose(mixer(x, theta)[:, perm], mixer(x[:, perm], theta[perm].roll(1, 0)), atol=1e-3)


def test_causal_mixer_output_at_t_ignores_later_tokens():
    mixer = TokenMixer(16, 2, 8, mixer="lightnet", causal=True, num_axes=1)
    theta = mixer.lrpe.angles(grid_coords((30,)))
    x = torch.randn(1, 30, 16)
    y2 = x.clone()
    y2[:, 20:] = torch.randn(1, 10, 16)
    assert torch.allclose(mixer(x, theta)[:, :20], mixer(y2, theta)[:, :20], atol=1e-6)


@pytest.mark.parametrize("device,dtype", PRECISIONS)
@pytest.mark.parametrize("mixer,lrpe", [("lightnet", "rotate"), ("lightnet", "cosine"), ("softmax", "rotate")])
def test_block_forward_backward(device, dtype, mixer, lrpe):
    block = LightNetBlock(32, 2, 16, 48, mixer=mixer, lrpe=lrpe, num_axes=2).to(device)
    x = torch.randn(2, 12, 32, device=device, requires_grad=True)
    theta = block.mixer.lrpe.angles(grid_coords((3, 4), device=device))
    with autocast(device, dtype):
        y = block(x, theta)
    y.float().square().mean().backward()
    assert y.shape == x.shape and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())


def test_block_packed_sequences_equal_separate_rows():
    """cu_seqlens: each packed sequence normalises its keys over itself alone."""
    block = LightNetBlock(16, 2, 8, 24, num_axes=1).double()
    x = torch.randn(1, 30, 16, dtype=torch.float64)
    cu = torch.tensor([0, 12, 30])
    packed = block(x, None, cu_seqlens=cu)
    assert torch.allclose(packed[:, :12], block(x[:, :12], None), atol=1e-12)
    assert torch.allclose(packed[:, 12:], block(x[:, 12:], None), atol=1e-12)

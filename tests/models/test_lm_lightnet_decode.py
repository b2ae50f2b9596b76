"""Decoding LMs with causal LightNet layers: the op's state and step against the defining recurrence,
the mixer's step (with MD-LRPE at each row's position) against its forward, and an LM mixing lightning,
softmax and lightnet layers whose cached decoding equals full forwards (also with keys whose exp
overflows float32); `mm generate` on such a run."""

import pytest
import torch

from mm.config import to_yaml
from mm.layers.lightnet import TokenMixer
from mm.models.lm import LM, LMConfig
from mm.models.lm_generate import Decoder, GenerationConfig, prefill
from mm.ops.lightnet_attn import lightnet_causal_state, lightnet_causal_step
from mm.ops.lightnet_attn.reference import lightnet_recurrent
from mm.train.checkpoint import CheckpointManager
from mm.train.recipe import load_recipe_config
from tests.models.test_generate import CFG
from tests.ops.devices import NEEDS_CUDA
from tests.tools.test_generate import expected, generate
from tests.train.test_lm_recipe import TINY

KINDS = ["lightnet", "lightning", "softmax", "lightnet"]
PROMPT_LENGTHS = (1, 2, 7, 13)  # packed together: a single token and primes


def qkv(B, T, H, d, e, dtype, key_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, d, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, T, H, e, generator=g, dtype=torch.float64)
    return q.to(dtype), (k * key_scale).to(dtype), v.to(dtype)


@pytest.mark.parametrize("dtype,key_scale,tol", [(torch.float64, 1.0, 1e-12), (torch.float32, 80.0, 1e-4)])
def test_prompt_state_then_steps_follow_the_recurrence(dtype, key_scale, tol):
    """Prefix state + one step per later token = the Δ/S̃ recurrence (float64, no max subtracted);
    keys of magnitude ~80·3 in float32 (exp overflows there) stay finite and right."""
    B, T, H, d, e, P = 3, 11, 2, 5, 7, 4
    q, k, v = qkv(B, T, H, d, e, dtype, key_scale)
    expected = lightnet_recurrent(*(t.double() for t in (q, k, v)), causal=True)
    z, s = lightnet_causal_state(k[:, :P], v[:, :P])
    assert z.dtype == s.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    outs = []
    for t in range(P, T):
        o, z, s = lightnet_causal_step(q[:, t], k[:, t], v[:, t], z, s)
        outs.append(o)
    got = torch.stack(outs, dim=1)
    assert got.dtype == dtype and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), expected[:, P:], rtol=tol, atol=tol)


def test_states_stay_float32_under_bf16_autocast():
    q, k, v = qkv(2, 5, 2, 3, 4, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, s = lightnet_causal_state(k[:, :4], v[:, :4])
        o, z, s = lightnet_causal_step(q[:, 4], k[:, 4], v[:, 4], z, s)
    assert z.dtype == s.dtype == o.dtype == torch.float32
    expected = lightnet_recurrent(*(t.double() for t in (q, k, v)), causal=True)[:, 4]
    torch.testing.assert_close(o.double(), expected, rtol=1e-5, atol=1e-5)


def test_packed_states_equal_each_sequence_alone():
    q, k, v = qkv(1, 12, 2, 3, 4, torch.float64)
    cu = torch.tensor([0, 1, 6, 12])
    z, s = lightnet_causal_state(k, v, cu_seqlens=cu)
    assert z.shape == (3, 2, 3) and s.shape == (3, 2, 3, 4)
    for i, (a, b) in enumerate([(0, 1), (1, 6), (6, 12)]):
        zi, si = lightnet_causal_state(k[:, a:b], v[:, a:b])
        torch.testing.assert_close(z[i], zi[0], rtol=0, atol=0)
        torch.testing.assert_close(s[i], si[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="rise strictly"):
        lightnet_causal_state(k, v, cu_seqlens=torch.tensor([0, 6, 6, 12]))


@pytest.mark.parametrize("lrpe", ["rotate", "cosine"])
def test_mixer_steps_with_lrpe_at_each_rows_position_equal_its_forward(lrpe):
    """Packed prefill of two rows of different lengths, then one step per row at the row's own position
    (its MD-LRPE angles), against the forward of each whole row."""
    torch.manual_seed(0)
    mixer = TokenMixer(24, 2, 8, causal=True, lrpe=lrpe, num_axes=1).double()
    lengths = [3, 6]
    rows = [torch.randn(1, n + 2, 24, dtype=torch.float64) for n in lengths]
    angles = lambda pos: mixer.lrpe.angles(pos.double()[:, None])  # noqa: E731  [T] -> [T, d/2]
    packed = torch.cat([r[:, :n] for r, n in zip(rows, lengths, strict=True)], dim=1)
    positions = torch.cat([torch.arange(n) for n in lengths])
    y, state = mixer.prefill(packed, angles(positions), torch.tensor([0, 3, 9]))
    full = [mixer(r, angles(torch.arange(r.shape[1]))) for r in rows]
    torch.testing.assert_close(y, torch.cat([f[:, :n] for f, n in zip(full, lengths, strict=True)], dim=1))
    pos = torch.tensor(lengths)
    for step in range(2):
        x = torch.cat([r[:, n + step] for r, n in zip(rows, lengths, strict=True)])  # [2, hidden]
        out, state = mixer.step(x, state, angles(pos + step))
        for row, (f, n) in enumerate(zip(full, lengths, strict=True)):
            torch.testing.assert_close(out[row], f[0, n + step], rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="only a causal lightnet mixer"):
        TokenMixer(24, 2, 8, causal=False).prefill(packed, None)


def lm(**overrides) -> LM:
    torch.manual_seed(0)
    return LM(LMConfig(**{**CFG, "attn_type_list": KINDS, "init_std": 0.1, **overrides})).eval()


def prompts():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, CFG["vocab_size"], (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


def full_logits(model, seq):
    return model(torch.tensor([seq])).logits[0, -1]


def test_greedy_generation_equals_argmax_of_full_forwards():
    model = lm()
    got = model.generate(prompts(), GenerationConfig(max_new_tokens=7))
    expected = []
    for seq in prompts():
        new = []
        for _ in range(7):
            new.append(int(full_logits(model, seq + new).argmax()))
        expected.append(new)
    assert got == expected


def decode_against_full_forwards(model, steps=6):
    """Packed prefill, then greedy steps; each step's logits against the full forward of each row.
    Returns the decoder, with room for one more step."""
    seqs = prompts()
    cache, logits = prefill(model, seqs, capacity=max(PROMPT_LENGTHS) + steps + 1)
    assert set(cache.lightnet) == {0, 3} and set(cache.states) == {1} and set(cache.keys) == {2}
    decode = Decoder(model, cache)
    for _ in range(steps):
        assert torch.isfinite(logits).all()
        for row, seq in enumerate(seqs):
            torch.testing.assert_close(logits[row], full_logits(model, seq), rtol=1e-4, atol=1e-4)
        tokens = logits.argmax(-1)
        for seq, t in zip(seqs, tokens.tolist(), strict=True):
            seq.append(t)
        logits = decode(tokens)
    return decode


def test_each_step_logits_equal_the_full_forward_and_the_cache_is_written_in_place():
    decode = decode_against_full_forwards(lm())
    z, s = decode.cache.lightnet[0]
    H, d = CFG["heads"], CFG["head_dim"]
    assert z.shape == (4, H, d) and s.shape == (4, H, d, d) and z.dtype == s.dtype == torch.float32
    tensors = [t for pair in decode.cache.lightnet.values() for t in pair]
    before = [t.clone() for t in tensors]
    decode(torch.zeros(4, dtype=torch.long))
    now = [t for pair in decode.cache.lightnet.values() for t in pair]
    assert all(a is b for a, b in zip(tensors, now, strict=True))  # the storage a CUDA graph records
    assert not any(torch.equal(a, b) for a, b in zip(before, now, strict=True))


def test_keys_whose_exp_overflows_float32_stay_finite_and_equal():
    model = lm(experts=0)
    H, d = CFG["heads"], CFG["head_dim"]
    for i in (0, 3):
        w = model.layers[i].self_attn.qkv.weight.data.view(H, 3 * d, -1)
        w[:, d:2 * d] *= 80  # each head's key rows
    with torch.no_grad():  # precondition: the first layer's keys leave float32's exp range (88.7)
        h = model.layers[0].input_layernorm(model.embed_tokens(torch.tensor([sum(prompts(), [])])))
        keys = model.layers[0].self_attn.qkv(h).view(1, -1, H, 3 * d)[..., d:2 * d]
    assert keys.abs().max() > 100
    decode_against_full_forwards(model)


def test_mm_generate_on_a_run_with_lightnet_layers(capsys, tmp_path):
    cfg = load_recipe_config("configs/lm_tiny.yaml", [*TINY, f"model.attn_type_list=[{','.join(KINDS)}]"])
    model = LM(cfg.model).eval()
    CheckpointManager(tmp_path / "checkpoints").save(3, model, {}, to_yaml(cfg))
    code, out, err = generate(capsys, tmp_path)
    assert code == 0, err
    assert out == expected(model)


@NEEDS_CUDA
def test_graphed_decoding_equals_eager_on_cuda():
    model = lm(experts=0).to("cuda", torch.bfloat16)
    cfg = dict(max_new_tokens=10, temperature=1.0, seed=3)
    eager = model.generate(prompts(), GenerationConfig(**cfg))
    assert model.generate(prompts(), GenerationConfig(**cfg, cuda_graph=True)) == eager

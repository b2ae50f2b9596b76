"""Decoding: cached logits equal a full forward; the cache is updated in place (what a recorded CUDA
graph of the step relies on; on a GPU the replayed decoding equals the eager one); batching of
uneven prompts; sampling rules."""

import pytest
import torch

from mm.models.lm import LM, LMConfig
from mm.models.lm_generate import Decoder, GenerationConfig, prefill, sample
from tests.ops.devices import PRECISIONS

CFG = dict(vocab_size=40, hidden=32, layers=4, heads=4, kv_heads=2, head_dim=8, rotary_dim=4, ffn=48,
           attn_type_list=["lightning", "softmax", "lightning", "softmax"], experts=3, top_k=2)


@pytest.fixture
def model():
    torch.manual_seed(1)
    return LM(LMConfig(**CFG)).eval()


@pytest.mark.parametrize("device,dtype", PRECISIONS)
def test_cached_logits_equal_full_forward(model, device, dtype):
    """Packed prefill and cached decoding against full forwards; on CUDA with the model in float32 and
    in bf16 (as `mm generate` runs it there): the packed prefill takes the masked SDPA, then varlen."""
    model = model.to(device, dtype or torch.float32)
    prompts = [torch.randint(0, 40, (n,)).tolist() for n in (5, 1, 9)]
    cache, logits = prefill(model, prompts, capacity=20)
    decode = Decoder(model, cache)
    seqs = [list(p) for p in prompts]
    tol = 1e-4 if dtype is None else 3e-2
    for _ in range(6):
        for row, seq in enumerate(seqs):
            full = model(torch.tensor([seq], device=device)).logits[0, -1]
            torch.testing.assert_close(logits[row].float(), full.float(), rtol=tol, atol=tol)
        tokens = torch.randint(0, 40, (3,), device=device)
        for seq, t in zip(seqs, tokens.tolist(), strict=True):
            seq.append(t)
        logits = decode(tokens)
    assert cache.lengths.tolist() == [len(s) for s in seqs]


def test_batched_generation_equals_one_by_one(model):
    prompts = [[3, 4, 5, 6, 7, 8, 9], [11], [20, 21, 22]]
    cfg = GenerationConfig(max_new_tokens=8)
    batched = model.generate(prompts, cfg)
    assert batched == [model.generate([p], cfg)[0] for p in prompts]
    assert all(len(row) == 8 for row in batched)


def test_eos_stops_a_row(model):
    first = model.generate([[1, 2, 3]], GenerationConfig(max_new_tokens=6))[0]
    stopped = model.generate([[1, 2, 3]], GenerationConfig(max_new_tokens=6, eos_id=first[2]))[0]
    assert stopped == first[: first.index(first[2]) + 1]


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(2000, 4)
    g = torch.Generator().manual_seed(0)
    drawn = sample(logits, GenerationConfig(temperature=1.0, top_p=0.75), g)
    assert set(drawn.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.75; 2 and 3 are cut
    share = (drawn == 0).float().mean().item()
    assert abs(share - 0.5 / 0.8) < 0.05


def test_sampling_is_seeded(model):
    cfg = GenerationConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    assert model.generate([[1, 2]], cfg) == model.generate([[1, 2]], cfg)


def test_lightning_state_is_constant_in_context(model):
    cache, _ = prefill(model, [list(range(30))], capacity=40)
    assert cache.states[0].shape == (1, 4, 8, 8)


def test_full_cache_is_an_error_not_a_silent_overwrite(model):
    cache, logits = prefill(model, [[1, 2, 3]], capacity=4)
    decode = Decoder(model, cache)
    decode(logits.argmax(-1))
    with pytest.raises(ValueError, match="decode cache full"):
        decode(logits.argmax(-1))


def test_decoding_writes_the_cache_in_place(model):
    cache, logits = prefill(model, [[1, 2, 3], [4]], capacity=8)
    tensors = [cache.lengths, *cache.states.values(), *cache.keys.values(), *cache.values.values()]
    before = [t.clone() for t in tensors]
    decode = Decoder(model, cache)
    for _ in range(2):
        logits = decode(logits.argmax(-1))
    now = [cache.lengths, *cache.states.values(), *cache.keys.values(), *cache.values.values()]
    assert all(a is b for a, b in zip(tensors, now, strict=True))  # the same storage a graph was recorded on
    assert not any(torch.equal(a, b) for a, b in zip(before, now, strict=True))  # and every one written
    assert cache.lengths.tolist() == [5, 3] and cache.steps_left == 3


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                    reason="needs CUDA with grouped matmuls (compute capability 9.0)")
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_graphed_decoding_equals_eager(model, temperature):
    model = model.to("cuda", torch.bfloat16)
    prompts = [[3, 4, 5, 6, 7, 8, 9], [11], [20, 21, 22]]
    cfg = dict(max_new_tokens=12, temperature=temperature, top_p=0.9, seed=3)
    eager = model.generate(prompts, GenerationConfig(**cfg))
    assert model.generate(prompts, GenerationConfig(**cfg, cuda_graph=True)) == eager

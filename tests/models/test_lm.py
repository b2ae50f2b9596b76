"""The language model: shapes, loss masking, packing without leaks, learning."""

import pytest
import torch

from mm.models.lm import LM, LMConfig, compile_layers
from tests.ops.devices import PRECISIONS, autocast


def tiny(**overrides):
    fields = dict(vocab_size=50, hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, rotary_dim=4, ffn=48)
    return LMConfig(**{**fields, **overrides})


def test_forward_shapes_and_loss():
    model = LM(tiny())
    ids = torch.randint(0, 50, (3, 11))
    out = model(ids, labels=ids)
    assert out.logits.shape == (3, 11, 50) and out.num_tokens == 33
    expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 50), ids.reshape(-1))
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("tie", [False, True])
def test_loss_without_logits_matches_loss_of_logits(tie):
    """Training's path (linear_cross_entropy, no logits kept) gives the loss and every gradient of
    logits → cross_entropy, with tied embeddings too and some labels ignored."""
    model = LM(tiny(experts=4, top_k=2, attn_type_list=["lightning", "softmax"], tie_embeddings=tie)).double()
    ids = torch.randint(0, 50, (2, 9))
    labels = ids.clone()
    labels[0, :3] = -100
    losses, grads = [], []
    for return_logits in (True, False):
        model.zero_grad()
        out = model(ids, labels=labels, return_logits=return_logits)
        assert (out.logits is None) != return_logits and out.num_tokens == 15
        (0.5 * out.loss).backward()
        losses.append(out.loss.detach())
        grads.append({n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(*losses, rtol=1e-6, atol=0)  # the loss pass runs in float32
    torch.testing.assert_close(*grads, rtol=1e-5, atol=1e-7)


def test_all_labels_masked_gives_zero_loss_not_nan():
    model = LM(tiny())
    ids = torch.randint(0, 50, (2, 7))
    out = model(ids, labels=torch.full_like(ids, -100))
    assert out.loss.item() == 0.0 and out.num_tokens == 0
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


HYBRID = dict(attn_type_list=["lightning", "softmax"], experts=4, top_k=2)
VARIANTS = {"dense-softmax": {}, "hybrid-moe": HYBRID, "lightning": dict(attn_type_list=["lightning", "lightning"])}


@pytest.mark.parametrize("variant", VARIANTS)
def test_causal(variant):
    model = LM(tiny(**VARIANTS[variant])).eval()
    ids = torch.randint(0, 50, (1, 12))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 50
    torch.testing.assert_close(model(ids).logits[:, :8], model(changed).logits[:, :8])


# float32 only: a leak moves this tiny model's logits by ~1e-2, within bf16 rounding; bf16 packing is
# checked where a leak is O(1), at the layer (tests/layers/test_softmax_attention.py), and by training.
@pytest.mark.parametrize("device,dtype", PRECISIONS[:2], ids=["cpu-fp32", "cuda-fp32"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_packed_documents_do_not_leak(variant, device, dtype):
    """Two documents packed in one row give the logits of each run alone (positions restart too); on
    CUDA in float32 the softmax layers take SDPA with the block-diagonal mask (FlashAttention varlen
    takes half precision only). The tolerance stays well below what a leak changes."""
    model = LM(tiny(**VARIANTS[variant])).eval().to(device)
    a, b = torch.randint(0, 50, (1, 5), device=device), torch.randint(0, 50, (1, 9), device=device)
    with torch.no_grad():
        packed = model(torch.cat([a, b], 1), cu_seqlens=torch.tensor([0, 5, 14], device=device)).logits
        alone_a, alone_b = model(a).logits, model(b).logits
        leaked = model(torch.cat([a, b], 1)).logits[:, 5:]  # b seeing a: what a leak looks like
    tol = 1e-5 if device == "cpu" else 1e-4
    torch.testing.assert_close(packed[:, :5], alone_a, rtol=tol, atol=tol)
    torch.testing.assert_close(packed[:, 5:], alone_b, rtol=tol, atol=tol)
    assert (leaked - alone_b).abs().max() > 10 * tol


def test_compiled_layers_match_eager():
    """torch.compile'd decoder layers (lightning op left eager) give eager's loss, router figures and grads."""
    cfg = tiny(**HYBRID, router_z_coef=0.01, capacity_factor=1.0)
    eager = LM(cfg)
    compiled = compile_layers(LM(cfg))
    compiled.load_state_dict(eager.state_dict())
    ids, cu_seqlens = torch.randint(0, 50, (2, 13)), torch.tensor([0, 5, 13, 20, 26])  # packed documents
    want, got = eager(ids, ids, cu_seqlens), compiled(ids, ids, cu_seqlens)
    for name in ("loss", "aux_loss", "z_loss", "tokens_per_expert", "dropped"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-6, msg=name)
    want.loss.backward()
    got.loss.backward()
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert list(compiled.state_dict()) == list(eager.state_dict())


def test_compiled_lightning_layer_is_two_graphs_around_the_op():
    """The graph break at the lightning op splits a layer in two (before the op, after it), not at
    every enclosing call: fewer graphs, and the normalised input's gradient summed in fewer places."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = compile_layers(LM(tiny(attn_type_list=["lightning", "lightning"])))
    model(torch.randint(0, 50, (1, 9)))
    assert counters["stats"]["unique_graphs"] == 2  # both layers share the two graphs


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                    reason="needs a GPU with native grouped matmuls (the padded fallback reads group sizes)")
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_training_step_never_waits_on_the_device(compiled):
    """Forward with labels, backward and optimizer step queue without a host sync, so the host runs
    ahead of the GPU (a sync between forward and backward leaves the GPU idle while the backward is
    being launched)."""
    model = LM(tiny(**HYBRID, hidden=64, head_dim=16)).cuda()
    model = compile_layers(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), fused=True)
    ids = torch.randint(0, 50, (2, 64), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # first call: compilation, autotuning and cached tables may wait on the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_tied_embeddings_share_storage():
    model = LM(tiny(tie_embeddings=True))
    assert model.lm_head.weight is model.embed_tokens.weight


@pytest.mark.parametrize("bad, message", [
    (dict(attn_type_list=["softmax"]), "2 layers"),
    (dict(attn_type_list=["softmax", "mamba"]), "unknown attention type 'mamba'"),
    (dict(rotary_dim=5), "rotary_dim"),
    (dict(kv_heads=3), "multiple"),
])
def test_config_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        tiny(**bad)


def test_moe_output_carries_router_figures():
    model = LM(tiny(**HYBRID))
    ids = torch.randint(0, 50, (2, 9))
    out = model(ids, labels=ids)
    assert out.tokens_per_expert.shape == (2, 4) and int(out.tokens_per_expert.sum()) == 2 * 18 * 2
    torch.testing.assert_close(out.loss, out.lm_loss + 0.001 * out.aux_loss)
    out.loss.backward()
    assert model.layers[0].mlp.gate.weight.grad.abs().sum() > 0, "the aux loss must reach the router"


@pytest.mark.parametrize("device,dtype", PRECISIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_learns_a_repeating_pattern(variant, device, dtype):
    """Training (the loss without logits) learns in every precision; packed rows on CUDA take varlen
    attention under autocast and the masked SDPA in float32."""
    torch.manual_seed(0)
    model = LM(tiny(**VARIANTS[variant])).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.arange(24, device=device).remainder(6).expand(4, 24) + 3
    cu_seqlens = torch.tensor([0, 10, 23, 46, 69, 92], device=device)  # one row holds two documents
    first = None
    for _ in range(60):
        with autocast(device, dtype):
            loss = model(ids[:, :-1], labels=ids[:, 1:], cu_seqlens=cu_seqlens, return_logits=False).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first

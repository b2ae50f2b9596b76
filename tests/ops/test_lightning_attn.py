"""Lightning attention: every implementation against the float64 reference and an outside oracle.

The Triton cases run on KERNEL_DEVICE (tests/ops/devices.py): compiled on CUDA where a GPU is present,
under TRITON_INTERPRET=1 on CPU elsewhere, with the same inputs and tolerances. The interpreter uses
a fixed block of 16 tokens, so T = 17, 63, 64, 65, 200 cover single, partial and many blocks;
`segment_len=32` forces the split path (local states + scan across segments) that long sequences take
on a GPU. The references always run on the CPU.
"""

from __future__ import annotations

import pytest
import torch

from mm.ops.lightning_attn import build_slopes, lightning_attn, lightning_attn_step
from mm.ops.lightning_attn.reference import lightning_attn_quadratic, lightning_attn_recurrent
from tests.ops.devices import KERNEL_DEVICE, NEEDS_CUDA, NEEDS_KERNEL_DEVICE

F64 = torch.float64


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| in float64 on the CPU; NaN anywhere gives inf."""
    x, ref = x.detach().to("cpu", F64), ref.detach().to("cpu", F64)
    if not torch.isfinite(x).all():
        return float("inf")
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def inputs(B, T, H, d, e, *, dtype=F64, state=True, n=None):
    q, k = torch.randn(B, T, H, d, dtype=dtype), torch.randn(B, T, H, d, dtype=dtype)
    v = torch.randn(B, T, H, e, dtype=dtype)
    h0 = torch.randn(B if n is None else n, H, d, e, dtype=dtype) if state else None
    # Strong decays first, weak last (layer 0 of 1 plus a near-1 head), so both regimes are tested.
    slopes = build_slopes(H, layer_idx=0, num_layers=1)
    slopes[-1] = 1e-3
    return q, k, v, h0, slopes


def run(backend, q, k, v, slopes, h0, *, segment_len=None, cu_seqlens=None):
    """Output and final state of one backend; `segment_len` reaches the Triton function directly.

    The Triton backend runs on KERNEL_DEVICE: the inputs go there (a no-op for tensors already there,
    which keeps their strides) and the results come back to the CPU, gradients flowing through both moves.
    """
    if backend == "triton":
        from mm.ops.lightning_attn.triton_function import lightning_attn_triton

        dev = lambda t: None if t is None else t.to(KERNEL_DEVICE)
        o, st = lightning_attn_triton(dev(q), dev(k), dev(v), slopes, initial_state=dev(h0), output_final_state=True,
                                      cu_seqlens=dev(cu_seqlens), segment_len=segment_len)
        return o.cpu(), st.cpu()
    return lightning_attn(q, k, v, slopes, initial_state=h0, output_final_state=True, cu_seqlens=cu_seqlens,
                          backend=backend)


def outputs_and_grads(backend, q, k, v, slopes, h0, do, dst, **kw):
    """(o, final state, dq, dk, dv, dh0) for the loss <o, do> + <S_T, dst>."""
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    leaves.append(None if h0 is None else h0.detach().clone().requires_grad_())
    o, st = run(backend, *leaves[:3], slopes, leaves[3], **kw)
    loss = (o.to(F64) * do).sum() + (st.to(F64) * dst).sum()
    grads = torch.autograd.grad(loss, [x for x in leaves if x is not None])
    return (o, st, *grads)


# --- the references -------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 17, 64, 65])
def test_quadratic_equals_recurrence(T):
    q, k, v, h0, slopes = inputs(2, T, 3, 8, 5)
    o1, s1 = lightning_attn_quadratic(q, k, v, slopes, initial_state=h0)
    o2, s2 = lightning_attn_recurrent(q, k, v, slopes, initial_state=h0)
    assert rel(o1, o2) < 1e-12 and rel(s1, s2) < 1e-12


@pytest.mark.parametrize("state", [False, True])
def test_fla_naive_oracle_agrees(state):
    """fla's own pure-torch simple-GLA references (g = -slopes, scale = 1) are an outside oracle."""
    naive = pytest.importorskip("fla.ops.simple_gla.naive")
    B, T, H, d, e = 2, 70, 4, 16, 24
    q, k, v, h0, slopes = inputs(B, T, H, d, e, dtype=torch.float32, state=state)
    g = (-slopes)[None, None, :].expand(B, T, H).contiguous()
    o_ref, s_ref = lightning_attn_quadratic(q.double(), k.double(), v.double(), slopes,
                                            initial_state=None if h0 is None else h0.double())
    o_rec, s_rec = naive.naive_recurrent_simple_gla(q, k, v, g, scale=1.0, initial_state=h0,
                                                    output_final_state=True)
    o_chk, s_chk = naive.naive_chunk_simple_gla(q, k, v, g, initial_state=h0, output_final_state=True,
                                                scale=1.0)
    for o, s in ((o_rec, s_rec), (o_chk, s_chk)):
        assert rel(o, o_ref) < 1e-5 and rel(s, s_ref) < 1e-5


# --- chunked and Triton against the float64 reference ----------------------------------------------

CASES = [("chunked", None), pytest.param("triton", None, marks=NEEDS_KERNEL_DEVICE),
         pytest.param("triton", 32, marks=NEEDS_KERNEL_DEVICE)]
IDS = ["chunked", "triton", "triton-split"]


@pytest.mark.parametrize("backend,segment_len", CASES, ids=IDS)
@pytest.mark.parametrize("T", [1, 17, 63, 64, 65, 200])
@pytest.mark.parametrize("state", [False, True], ids=["no-h0", "h0"])
def test_outputs_states_and_grads(nan_poison, backend, segment_len, T, state):
    B, H, d, e = 2, 3, 24, 16  # d != e, d not a power of two
    q, k, v, h0, slopes = inputs(B, T, H, d, e, state=state)
    do, dst = torch.randn(B, T, H, e, dtype=F64), torch.randn(B, H, d, e, dtype=F64)
    ref = outputs_and_grads("reference", q, k, v, slopes, h0, do, dst)
    kw = {} if backend == "chunked" else {"segment_len": segment_len}
    dt = F64 if backend == "chunked" else torch.float32  # Triton kernels take float32 at most
    got = outputs_and_grads(backend, *(x.to(dt) for x in (q, k, v)), slopes,
                            None if h0 is None else h0.to(dt), do, dst, **kw)
    tol = 1e-12 if backend == "chunked" else 1e-5
    names = ["o", "final_state", "dq", "dk", "dv", "dh0"]
    for name, x, r in zip(names, got, ref, strict=False):
        assert rel(x, r) < tol, f"{name}: {rel(x, r):.2e}"


@NEEDS_KERNEL_DEVICE
def test_triton_split_path_past_the_decay_horizon(nan_poison):
    """Segments much longer than a head's decay horizon: the local-state passes of the forward and of
    the backward (reverse order, SHIFT 1) skip most tokens of the fast heads, and every output, state
    and gradient still equals the float64 reference."""
    B, T, H, d, e = 1, 300, 3, 16, 24
    q, k, v, h0, _ = inputs(B, T, H, d, e)
    slopes = torch.tensor([1.0, 0.3, 1e-3])  # reach 23 and 74 tokens of a 128-token segment; all of it
    do, dst = torch.randn(B, T, H, e, dtype=F64), torch.randn(B, H, d, e, dtype=F64)
    ref = outputs_and_grads("reference", q, k, v, slopes, h0, do, dst)
    got = outputs_and_grads("triton", q.float(), k.float(), v.float(), slopes, h0.float(), do, dst,
                            segment_len=128)
    for name, x, r in zip(["o", "final_state", "dq", "dk", "dv", "dh0"], got, ref, strict=True):
        assert rel(x, r) < 1e-5, f"{name}: {rel(x, r):.2e}"


@NEEDS_KERNEL_DEVICE
@pytest.mark.parametrize("d,e", [(16, 16), (48, 32), (32, 80), (256, 24)])
def test_triton_feature_dims(nan_poison, d, e):
    """Any d, e in 16..256, powers of two or not, padded inside the kernel."""
    q, k, v, h0, slopes = inputs(1, 40, 2, d, e)
    do, dst = torch.randn(1, 40, 2, e, dtype=F64), torch.randn(1, 2, d, e, dtype=F64)
    ref = outputs_and_grads("reference", q, k, v, slopes, h0, do, dst)
    got = outputs_and_grads("triton", q.float(), k.float(), v.float(), slopes, h0.float(), do, dst,
                            segment_len=32)
    for x, r in zip(got, ref, strict=True):
        assert rel(x, r) < 1e-5


@pytest.mark.parametrize("backend,segment_len", CASES, ids=IDS)
def test_varlen_equals_separate_sequences(nan_poison, backend, segment_len):
    """Three uneven packed sequences (one of a single token) equal three separate calls."""
    lens = [45, 1, 83]
    T, H, d, e = sum(lens), 2, 16, 24
    cu = torch.tensor([0, 45, 46, 129], dtype=torch.int32)
    q, k, v, h0, slopes = inputs(1, T, H, d, e, n=3)
    dt = F64 if backend == "chunked" else torch.float32
    q, k, v, h0 = (x.to(dt) for x in (q, k, v, h0))
    do, dst = torch.randn(1, T, H, e, dtype=F64), torch.randn(3, H, d, e, dtype=F64)
    kw = {} if backend == "chunked" else {"segment_len": segment_len}
    packed = outputs_and_grads(backend, q, k, v, slopes, h0, do, dst, cu_seqlens=cu, **kw)
    o, st, dq, dk, dv, dh0 = packed
    for n in range(3):
        sl = slice(int(cu[n]), int(cu[n + 1]))
        one = outputs_and_grads("reference", *(x[:, sl].double() for x in (q, k, v)), slopes,
                                h0[n : n + 1].double(), do[:, sl], dst[n : n + 1])
        mine = (o[:, sl], st[n : n + 1], dq[:, sl], dk[:, sl], dv[:, sl], dh0[n : n + 1])
        for x, r in zip(mine, one, strict=True):
            assert rel(x, r) < 1e-5


@pytest.mark.parametrize("backend,segment_len", CASES, ids=IDS)
def test_varlen_with_an_empty_sequence(nan_poison, backend, segment_len):
    """An empty sequence passes its initial state through (and dS_T back to dh0)."""
    cu = torch.tensor([0, 20, 20, 37])
    q, k, v, h0, slopes = inputs(1, 37, 2, 16, 16, n=3)
    dt = F64 if backend == "chunked" else torch.float32
    q, k, v, h0 = (x.to(dt) for x in (q, k, v, h0))
    do, dst = torch.randn(1, 37, 2, 16, dtype=F64), torch.randn(3, 2, 16, 16, dtype=F64)
    kw = {} if backend == "chunked" else {"segment_len": segment_len}
    _, st, *_, dh0 = outputs_and_grads(backend, q, k, v, slopes, h0, do, dst, cu_seqlens=cu, **kw)
    assert rel(st[1], h0[1]) < 1e-6 and rel(dh0[1], dst[1]) < 1e-6


@NEEDS_KERNEL_DEVICE
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 5e-3), (torch.float16, 1e-3)])
def test_triton_half_precision(nan_poison, dtype, tol):
    """bf16 inputs with fp32 accumulation land near 2e-3 relative (DESIGN §2; 3e-3 seen here)."""
    B, T, H, d, e = 2, 65, 2, 32, 48
    q, k, v, h0, slopes = inputs(B, T, H, d, e)
    q, k, v = (x.to(dtype) for x in (q, k, v))  # the reference sees the same rounded inputs
    do, dst = torch.randn(B, T, H, e, dtype=F64), torch.randn(B, H, d, e, dtype=F64)
    ref = outputs_and_grads("reference", q.double(), k.double(), v.double(), slopes, h0, do, dst)
    got = outputs_and_grads("triton", q, k, v, slopes, h0.float(), do, dst, segment_len=32)
    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    for x, r in zip(got, ref, strict=True):
        assert rel(x, r) < tol


LAYOUTS = {  # (storage [.., 3, ..] of q, k, v together, how to cut [B, T, H, d] views from it)
    # q, k, v cut from one fused projection [B, T, H, 3d]: token stride 3Hd, head stride 3d
    "fused-projection": (lambda B, T, H, d: (B, T, H, 3 * d), lambda x, d: x.split(d, dim=-1)),
    # heads-first storage [3, B, H, T, d] seen as [B, T, H, d]: B and T do not merge into one stride
    "heads-first": (lambda B, T, H, d: (3, B, H, T, d), lambda x, d: x.transpose(2, 3).unbind(0)),
    # the feature dimension itself strided: the kernels need it dense, so this one is copied
    "strided-features": (lambda B, T, H, d: (B, T, H, 6 * d), lambda x, d: x[..., ::2].split(d, dim=-1)),
}


@pytest.mark.parametrize("backend,segment_len", CASES, ids=IDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_strided_views_as_inputs(nan_poison, backend, segment_len, layout):
    """Non-contiguous q, k, v give the reference's outputs and gradients, split path included."""
    B, T, H, d = 2, 70, 3, 16
    shape, cut = LAYOUTS[layout]
    storage = torch.randn(shape(B, T, H, d), dtype=F64)
    slopes = build_slopes(H)
    do, dst = torch.randn(B, T, H, d, dtype=F64), torch.randn(B, H, d, d, dtype=F64)

    def outputs_and_grads_of_views(backend, storage, **kw):
        leaf = storage.detach().clone().requires_grad_()  # dense: the clone keeps the layout
        q, k, v = cut(leaf, d)
        assert not q.is_contiguous()
        o, st = run(backend, q, k, v, slopes, None, **kw)
        (grad,) = torch.autograd.grad((o.to(F64) * do).sum() + (st.to(F64) * dst).sum(), leaf)
        return (o, st, *cut(grad, d))

    ref = outputs_and_grads_of_views("reference", storage)
    kw = {} if backend == "chunked" else {"segment_len": segment_len}
    got = outputs_and_grads_of_views(backend, storage if backend == "chunked" else storage.float().to(KERNEL_DEVICE),
                                     **kw)
    for name, x, r in zip(["o", "final_state", "dq", "dk", "dv"], got, ref, strict=True):
        assert rel(x, r) < (1e-12 if backend == "chunked" else 1e-5), f"{name}: {rel(x, r):.2e}"


@NEEDS_KERNEL_DEVICE
def test_triton_reads_views_of_a_fused_projection_without_copying_them():
    """What the op saves for backward are the views themselves (no contiguous copies of q, k, v)."""
    from mm.ops.lightning_attn.triton_function import lightning_attn_triton

    qkv = torch.randn(1, 20, 2, 3 * 16, device=KERNEL_DEVICE, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lightning_attn_triton(*qkv.split(16, dim=-1), build_slopes(2))
    storage = qkv.untyped_storage().data_ptr()
    assert sum(t.untyped_storage().data_ptr() == storage for t in saved) == 3


def test_default_backend_is_chunked_on_cpu_and_differentiable():
    q, k, v, h0, slopes = inputs(2, 30, 2, 8, 8)
    q.requires_grad_()
    o, st = lightning_attn(q, k, v, slopes, initial_state=h0)
    assert st is None
    o.sum().backward()
    o_ref, _ = lightning_attn_quadratic(q.detach(), k, v, slopes, initial_state=h0)
    assert rel(o, o_ref) < 1e-12 and q.grad is not None


# --- decoding --------------------------------------------------------------------------------------


def test_step_rolled_equals_full_op():
    B, T, H, d, e = 2, 37, 3, 8, 12
    q, k, v, h0, slopes = inputs(B, T, H, d, e)
    o_full, s_full = lightning_attn(q, k, v, slopes, initial_state=h0, output_final_state=True,
                                    backend="reference")
    state, outs = h0.clone(), []
    for t in range(T):
        o_t, state = lightning_attn_step(q[:, t], k[:, t], v[:, t], state, slopes)
        outs.append(o_t)
    assert rel(torch.stack(outs, dim=1), o_full) < 1e-12 and rel(state, s_full) < 1e-12


# --- slopes and argument checks --------------------------------------------------------------------


def test_build_slopes():
    assert torch.allclose(build_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    s4, s8 = build_slopes(4), build_slopes(8)
    assert torch.allclose(build_slopes(6), torch.cat([s4, s8[0::2][:2]]))
    assert build_slopes(16).dtype == torch.float32 and build_slopes(12).shape == (12,)
    L = 8
    assert torch.allclose(build_slopes(4, layer_idx=0, num_layers=L), s4 * (1 + 1e-5))
    assert torch.allclose(build_slopes(4, layer_idx=L - 1, num_layers=L), s4 * 1e-5)
    assert torch.allclose(build_slopes(4, layer_idx=0, num_layers=1), s4 * (1 + 1e-5))  # L = 1: no 0/0
    with pytest.raises(ValueError, match="layer_idx"):
        build_slopes(4, layer_idx=8, num_layers=8)
    with pytest.raises(ValueError, match="num_heads"):
        build_slopes(0)


def test_argument_errors():
    q, k, v, h0, slopes = inputs(2, 10, 2, 8, 8)
    with pytest.raises(ValueError, match="backend"):
        lightning_attn(q, k, v, slopes, backend="cuda")
    with pytest.raises(ValueError, match=r"slopes must be \[H\]"):
        lightning_attn(q, k, v, slopes[:1])
    with pytest.raises(ValueError, match="initial_state"):
        lightning_attn(q, k, v, slopes, initial_state=h0[:1])
    with pytest.raises(ValueError, match="batch size must be 1"):
        lightning_attn(q, k, v, slopes, cu_seqlens=torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="cu_seqlens must rise"):
        lightning_attn(q[:1], k[:1], v[:1], slopes, cu_seqlens=torch.tensor([0, 4, 3]))
    with pytest.raises(ValueError, match="v must be"):
        lightning_attn(q, k, v[:, :5], slopes)
    with pytest.raises(ValueError, match="triton backend takes"):
        lightning_attn(q, k, v, slopes, backend="triton")  # float64
    with pytest.raises(ValueError, match="state must be"):
        lightning_attn_step(q[:, 0], k[:, 0], v[:, 0], h0[:, :1], slopes)


@NEEDS_CUDA
@pytest.mark.parametrize("d,e", [(64, 64), (16, 16), (24, 48), (256, 128)])
def test_triton_on_cuda_against_reference(d, e):
    """The autotuned kernels (the interpreter runs one fixed config) at head widths from 16 to 256."""
    q, k, v, h0, slopes = inputs(2, 300, 4, d, e)
    do, dst = torch.randn(2, 300, 4, e, dtype=F64), torch.randn(2, 4, d, e, dtype=F64)
    ref = outputs_and_grads("reference", q, k, v, slopes, h0, do, dst)
    for seg in (None, 256):
        got = outputs_and_grads("triton", *(x.float() for x in (q, k, v)), slopes, h0.float(), do, dst,
                                segment_len=seg)
        for x, r in zip(got, ref, strict=True):
            assert rel(x, r) < 1e-5


def test_local_state_pass_skips_tokens_beyond_the_decay_horizon():
    """A fast-decaying head's local state reads only the tokens whose weight is above 2^-32.

    Head 0 (slope 1) needs the last 23 tokens of its 128-token segment, head 1 (slope 0) all of them.
    The first 64 tokens are poisoned with NaN in both heads: head 0 must still equal the exact local
    state of the clean input, head 1 must see the poison.
    """
    from mm.ops.lightning_attn.segments import build_segments
    from mm.ops.lightning_attn.triton_launch import run_local_states

    T, H, d, e = 256, 2, 16, 24
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    b, c = torch.randn(T, H, d, device=dev), torch.randn(T, H, e, device=dev)
    slopes = torch.tensor([1.0, 0.0], device=dev)
    segs = build_segments(batch=1, seq_len=T, cu_seqlens=None, num_heads=H, head_dim_v=e,
                          device=b.device, segment_len=128)
    weight = torch.exp(-slopes.double()[None, :] * torch.arange(127, -1, -1, dtype=F64, device=dev)[:, None])
    exact = torch.einsum("th,thi,thj->hij", weight, b[:128].double(), c[:128].double())
    poisoned = b.clone()
    poisoned[:64] = float("nan")  # below the first 64-token block that holds a needed token
    got = run_local_states(poisoned, c, slopes, segs, reverse=False, shift=0)
    assert rel(got[0, 0], exact[0]) < 1e-6
    assert torch.isnan(got[0, 1]).all()
    assert rel(run_local_states(b, c, slopes, segs, reverse=False, shift=0)[0, 1], exact[1]) < 1e-6


def test_segment_policy_splits_only_to_fill_the_device(monkeypatch):
    """Split sequences only when (sequence, head) pairs leave multiprocessors idle (132 SMs here)."""
    from mm.ops.lightning_attn import segments

    monkeypatch.setattr(segments, "_sm_count", lambda index: 132)
    cuda = torch.device("cuda", 0)
    assert segments.choose_segment_len(4096, 16, 16, 128, cuda) >= 4096  # 256 pairs: whole sequences
    assert segments.choose_segment_len(2048, 16, 8, 128, cuda) >= 2048  # 128 pairs: close enough
    assert segments.choose_segment_len(1 << 20, 1, 16, 128, cuda) == 131072  # 8 segments x 16 heads ~ 132 SMs
    assert segments.choose_segment_len(65536, 1, 16, 64, cuda) == 4096  # e = 64: one tile, 264 pairs wanted
    assert segments.choose_segment_len(16384, 4, 16, 128, cuda) == 8192  # 2 segments per sequence
    assert segments.choose_segment_len(100, 1, 1, 128, cuda) == segments.ALIGN


@pytest.mark.parametrize("bda", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("bdc", [16, 32, 64, 128, 256])
def test_every_head_width_has_an_output_config_that_fits(bda, bdc):
    from mm.ops.lightning_attn.triton_launch import fitting_output_configs

    configs = fitting_output_configs(bda, bdc)
    assert configs and all(c.kwargs["BV"] <= bdc and bda * c.kwargs["BV"] <= 128 * 128 for c in configs)


def test_tuned_launch_tunes_once_per_key_then_launches_the_chosen_config(monkeypatch):
    """GPU launches go through the autotuner once per (key, dtype), then straight to the kernel."""
    import triton

    from mm.ops.lightning_attn import triton_launch

    calls = []

    class Recorder:
        def __init__(self, name):
            self.name, self.best_config = name, triton.Config({"BLOCK": 64}, num_warps=8, num_stages=3)

        def __getitem__(self, grid):
            return lambda *args, **kw: calls.append((self.name, grid, args, kw))

    monkeypatch.setattr(triton_launch, "INTERPRET", True)  # no real autotuner around the recorder
    tuned = triton_launch._Tuned(Recorder("kernel"), [], ["DA", "SLOTS"])
    tuned.tuner = Recorder("tuner")
    x16, x32 = torch.zeros(1, dtype=torch.bfloat16), torch.zeros(1)
    for x, da in ((x16, 64), (x16, 64), (x16, 32), (x32, 64), (x16, 64)):
        tuned.launch((2, 1), x, 7, DA=da, SLOTS=4)
    assert [c[0] for c in calls] == ["tuner", "kernel", "tuner", "tuner", "kernel"]
    assert calls[1][1:3] == ((2, 1), (x16, 7))
    assert calls[1][3] == {"DA": 64, "SLOTS": 4, **tuned.tuner.best_config.all_kwargs()}


def test_host_bounds_read_once_per_tensor_and_again_after_a_change():
    from mm.ops.host_bounds import host_bounds

    cu = torch.tensor([0, 3, 7])
    first = host_bounds(cu)
    assert first == (0, 3, 7) and host_bounds(cu) is first  # the layers of one forward share one read
    cu[1] = 4  # in place: the version counter moves
    assert host_bounds(cu) == (0, 4, 7)
    assert host_bounds(torch.tensor([0, 3, 7])) == (0, 3, 7)

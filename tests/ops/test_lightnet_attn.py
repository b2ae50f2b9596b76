"""LightNet attention: every backend against the float64 Δ/S̃ recurrence (DESIGN §5).

Triton kernel cases run on KERNEL_DEVICE (the interpreter on CPU with 16-token blocks, so T = 17,
63, 65, 200 cover partial and many blocks; `segment_len=32` forces the split path: non-causal, the
segments' partials are combined per sequence; causal, each segment starts from scanned states).
"""

from __future__ import annotations

import pytest
import torch

from mm.ops.lightnet_attn import lightnet_attn
from mm.ops.lightnet_attn.reference import lightnet_recurrent
from tests.ops.devices import KERNEL_DEVICE, NEEDS_CUDA, on

F64 = torch.float64


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| in float64 on the CPU (the absolute error where ref is zero, as dk for a
    single token, whose softmax weight is 1 whatever the key); NaN or inf anywhere gives inf."""
    x, ref = x.detach().cpu().to(F64), ref.detach().cpu().to(F64)
    if not torch.isfinite(x).all():
        return float("inf")
    err, norm = (x - ref).norm().item(), ref.norm().item()
    return err / norm if norm > 1e-8 else err


def inputs(B, T, H, d, e, *, key_scale=2.0):
    q = torch.randn(B, T, H, d, dtype=F64)
    k = torch.randn(B, T, H, d, dtype=F64) * key_scale  # peaked softmaxes, not near-uniform ones
    v = torch.randn(B, T, H, e, dtype=F64)
    return q, k, v


def run(backend, q, k, v, *, causal, cu_seqlens=None, segment_len=None):
    if backend == "triton" and causal:
        from mm.ops.lightnet_attn.causal_function import lightnet_causal_triton

        return lightnet_causal_triton(q, k, v, cu_seqlens=cu_seqlens, segment_len=segment_len)
    if backend == "triton":
        from mm.ops.lightnet_attn.triton_function import lightnet_noncausal_triton

        return lightnet_noncausal_triton(q, k, v, cu_seqlens=cu_seqlens, segment_len=segment_len)
    return lightnet_attn(q, k, v, causal=causal, cu_seqlens=cu_seqlens, backend=backend)


def outputs_and_grads(backend, q, k, v, do, **kw):
    """(o, dq, dk, dv) for the loss <o, do>."""
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    o = run(backend, *leaves, **kw)
    grads = torch.autograd.grad((o.to(F64) * do.to(o.device)).sum(), leaves)
    return (o, *grads)


def assert_close(got, ref, tol):
    for name, x, r in zip(["o", "dq", "dk", "dv"], got, ref, strict=True):
        assert rel(x, r) < tol, f"{name}: {rel(x, r):.2e}"


# --- the reference ---------------------------------------------------------------------------------


def test_reference_causal_is_the_noncausal_form_on_each_prefix():
    """Prefix normalisation: the causal output at t is the non-causal output of tokens 0..t."""
    q, k, v = inputs(2, 9, 2, 5, 3)
    causal = lightnet_recurrent(q, k, v, causal=True)
    for t in range(9):
        prefix = lightnet_recurrent(q[:, : t + 1], k[:, : t + 1], v[:, : t + 1], causal=False)
        assert rel(causal[:, t], prefix[:, t]) < 1e-13
    p = torch.softmax(k, dim=1)  # o_t = q_t Σ_s softmax_s(k)_s v_sᵀ
    assert rel(lightnet_recurrent(q, k, v, causal=False), torch.einsum("bthd,bshd,bshe->bthe", q, p, v)) < 1e-13


# --- every backend against the reference ------------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
@pytest.mark.parametrize("T", [1, 17, 63, 65, 200])
def test_chunked_against_reference(causal, T):
    q, k, v = inputs(2, T, 3, 24, 16)  # d != e, d not a power of two
    do = torch.randn(2, T, 3, 16, dtype=F64)
    ref = outputs_and_grads("reference", q, k, v, do, causal=causal)
    assert_close(outputs_and_grads("chunked", q, k, v, do, causal=causal), ref, 1e-11)


TRITON_FORMS = [pytest.param(False, None, id="noncausal-whole"), pytest.param(False, 32, id="noncausal-split"),
                pytest.param(True, None, id="causal-whole"), pytest.param(True, 32, id="causal-split")]


@pytest.mark.parametrize("causal,segment_len", TRITON_FORMS)
@pytest.mark.parametrize("device", [on("kernel")])
@pytest.mark.parametrize("T", [1, 17, 63, 65, 200])
def test_triton_against_reference(nan_poison, device, T, causal, segment_len):
    q, k, v = inputs(2, T, 2, 24, 16)  # d = 24: a head dim padded inside the kernels
    do = torch.randn(2, T, 2, 16, dtype=F64)
    ref = outputs_and_grads("reference", q, k, v, do, causal=causal)
    got = outputs_and_grads("triton", *(x.float().to(device) for x in (q, k, v)), do, causal=causal,
                            segment_len=segment_len)
    assert_close(got, ref, 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("device", [on("kernel")])
def test_triton_half_precision(nan_poison, device, causal, dtype):
    """bf16/fp16 inputs, float32 states: ≈ half rounding of the output (and of the matrices S, dS)."""
    q, k, v = (x.to(dtype) for x in inputs(2, 65, 2, 32, 48))
    do = torch.randn(2, 65, 2, 48, dtype=F64)
    ref = outputs_and_grads("reference", q.double(), k.double(), v.double(), do, causal=causal)
    got = outputs_and_grads("triton", *(x.to(device) for x in (q, k, v)), do, causal=causal, segment_len=32)
    assert all(x.dtype == dtype for x in got)
    assert_close(got, ref, 1e-2)


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("device", [on("kernel")])
def test_triton_reads_strided_views_of_a_fused_projection(nan_poison, device, causal):
    """q, k, v cut from one [B, T, H, 3d] projection: token stride 3Hd, head stride 3d."""
    qkv = torch.randn(2, 40, 2, 3 * 16, dtype=F64)
    do = torch.randn(2, 40, 2, 16, dtype=F64)
    ref = outputs_and_grads("reference", *qkv.split(16, dim=-1), do, causal=causal)
    leaf = qkv.float().to(device).requires_grad_()
    q, k, v = leaf.split(16, dim=-1)
    assert not q.is_contiguous()
    o = run("triton", q, k, v, causal=causal, segment_len=None)
    (grad,) = torch.autograd.grad((o.double() * do.to(o.device)).sum(), leaf)
    assert_close((o, *grad.split(16, dim=-1)), ref, 1e-5)


# --- varlen ------------------------------------------------------------------------------------------

VARLEN = [on("cpu", "chunked", True, None, id="chunked-causal"), on("cpu", "chunked", False, None, id="chunked"),
          on("kernel", "triton", False, None, id="triton"), on("kernel", "triton", False, 32, id="triton-split"),
          on("kernel", "triton", True, None, id="triton-causal"),
          on("kernel", "triton", True, 32, id="triton-causal-split")]


@pytest.mark.parametrize("device,backend,causal,segment_len", VARLEN)
def test_varlen_equals_separate_sequences(nan_poison, device, backend, causal, segment_len):
    """Uneven packed sequences (one of a single token, one empty) equal separate calls."""
    lens = [45, 1, 0, 83]
    cu = torch.tensor([0, 45, 46, 46, 129], dtype=torch.int32)
    q, k, v = inputs(1, sum(lens), 2, 16, 24)
    do = torch.randn(1, sum(lens), 2, 24, dtype=F64)
    if backend == "triton":
        q, k, v = (x.float().to(device) for x in (q, k, v))
        cu = cu.to(device)
    packed = outputs_and_grads(backend, q, k, v, do, causal=causal, cu_seqlens=cu, segment_len=segment_len)
    bounds = cu.tolist()
    for a, b in zip(bounds, bounds[1:], strict=False):
        if a == b:
            continue
        one = outputs_and_grads("reference", *(x[:, a:b].cpu().double() for x in (q, k, v)), do[:, a:b],
                                causal=causal)
        assert_close([x[:, a:b] for x in packed], one, 1e-5)


# --- stability and causality -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype,scale,tol", [(torch.float32, 80.0, 1e-4), (torch.bfloat16, 20.0, 2e-2)])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_large_keys_do_not_overflow(causal, dtype, scale, tol):
    """Keys of magnitude 80 (fp32) and 20 (bf16): exp(k) alone would overflow; outputs and gradients
    stay finite and match the float64 recurrence on the same rounded inputs."""
    q, k, v = inputs(1, 70, 2, 16, 16)
    k = (torch.rand_like(k) * 2 - 1) * scale
    k[0, 30:35] = scale  # a run of the largest key right after small ones
    q, k, v = (x.to(dtype) for x in (q, k, v))
    do = torch.randn(1, 70, 2, 16, dtype=F64)
    ref = outputs_and_grads("reference", q.double(), k.double(), v.double(), do, causal=causal)
    assert_close(outputs_and_grads("chunked", q, k, v, do, causal=causal), ref, tol)


@pytest.mark.parametrize("causal,segment_len,dtype,scale,tol", [
    (False, 32, torch.float32, 80.0, 1e-4), (True, None, torch.float32, 80.0, 1e-4),
    (True, 32, torch.float32, 80.0, 1e-4), (True, 32, torch.bfloat16, 20.0, 2e-2)],
    ids=["noncausal-fp32", "causal-fp32", "causal-split-fp32", "causal-split-bf16"])
@pytest.mark.parametrize("device", [on("kernel")])
def test_triton_large_keys_do_not_overflow(nan_poison, device, causal, segment_len, dtype, scale, tol):
    q, k, v = inputs(1, 70, 2, 16, 16)
    k = (torch.rand_like(k) * 2 - 1) * scale
    k[0, 30:35] = scale  # a run of the largest key right after small ones, across a chunk boundary
    q, k, v = (x.to(dtype) for x in (q, k, v))
    do = torch.randn(1, 70, 2, 16, dtype=F64)
    ref = outputs_and_grads("reference", q.double(), k.double(), v.double(), do, causal=causal)
    got = outputs_and_grads("triton", *(x.to(device) for x in (q, k, v)), do, causal=causal,
                            segment_len=segment_len)
    assert_close(got, ref, tol)


@pytest.mark.parametrize("device,backend", [on("cpu", "chunked", id="chunked"), on("kernel", "triton", id="triton")])
def test_causal_output_at_t_ignores_later_tokens(device, backend):
    """Changing tokens 30.. (inside a 16-token chunk) leaves outputs 0..29 bit-identical."""
    q, k, v = (x.to(device, torch.float64 if backend == "chunked" else torch.float32) for x in inputs(2, 50, 2, 8, 8))
    o = lightnet_attn(q, k, v, causal=True, backend=backend)
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[:, 30:] = torch.randn_like(x[:, 30:]) * 5
    o2 = lightnet_attn(q2, k2, v2, causal=True, backend=backend)
    assert torch.equal(o[:, :30], o2[:, :30]) and not torch.allclose(o[:, 30:], o2[:, 30:])


def test_noncausal_is_permutation_equivariant():
    """The single-scan property: permuting the tokens permutes the outputs."""
    q, k, v = inputs(2, 50, 2, 8, 8)
    perm = torch.randperm(50)
    o_nc = lightnet_attn(q, k, v, causal=False)
    assert rel(lightnet_attn(q[:, perm], k[:, perm], v[:, perm], causal=False), o_nc[:, perm]) < 1e-13


def test_argument_errors():
    q, k, v = inputs(2, 10, 2, 8, 8)
    with pytest.raises(ValueError, match="backend"):
        lightnet_attn(q, k, v, causal=True, backend="cuda")
    with pytest.raises(ValueError, match="batch size must be 1"):
        lightnet_attn(q, k, v, causal=False, cu_seqlens=torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="cu_seqlens must rise"):
        lightnet_attn(q[:1], k[:1], v[:1], causal=False, cu_seqlens=torch.tensor([0, 4, 3]))
    with pytest.raises(ValueError, match="v must be"):
        lightnet_attn(q, k, v[:, :5], causal=False)
    with pytest.raises(ValueError, match="triton backend takes"):
        lightnet_attn(q, k, v, causal=False, backend="triton")  # float64
    wide = torch.randn(1, 4, 1, 80, device=KERNEL_DEVICE)  # on CUDA where present: the dims check, not the device one
    with pytest.raises(ValueError, match="head dims up to 64"):
        lightnet_attn(wide, wide, wide, causal=False, backend="triton")
    wider = torch.randn(1, 4, 1, 136, device=KERNEL_DEVICE)
    with pytest.raises(ValueError, match="causal triton backend takes head dims up to 128"):
        lightnet_attn(wide, wide, wider, causal=True, backend="triton")


# --- CUDA: the compiled kernels at realistic sizes, and fla-core as an outside oracle ----------------


@NEEDS_CUDA
@pytest.mark.parametrize("causal,d,e", [(False, 64, 64), (False, 16, 48), (False, 64, 24),
                                        (True, 64, 64), (True, 128, 128), (True, 16, 96)])
def test_triton_on_cuda_long_sequences(causal, d, e):
    """The compiled (autotuned) kernels; the causal form at its widest supported heads too."""
    q, k, v = inputs(2, 3000, 3, d, e)
    do = torch.randn(2, 3000, 3, e, dtype=F64)
    ref = outputs_and_grads("chunked", q, k, v, do, causal=causal)  # float64 torch form (= reference)
    for seg in (None, 256):
        got = outputs_and_grads("triton", *(x.float().cuda() for x in (q, k, v)), do, causal=causal,
                                segment_len=seg)
        assert_close(got, ref, 1e-5)


@NEEDS_CUDA
@pytest.mark.parametrize("varlen", [False, True])
def test_causal_matches_fla_chunk_lightnet(varlen):
    """fla-core's chunk_lightnet (additive gate + chunk_gla) with scale=1 is DESIGN §5's causal form."""
    fla = pytest.importorskip("fla.ops.lightnet")
    q, k, v = (x.float().cuda() for x in inputs(1 if varlen else 2, 300, 4, 64, 64, key_scale=1.0))
    cu = torch.tensor([0, 100, 101, 300], device="cuda") if varlen else None
    theirs, _ = fla.chunk_lightnet(q, k, v, scale=1.0, cu_seqlens=cu)
    ref = lightnet_attn(q.double().cpu(), k.double().cpu(), v.double().cpu(), causal=True,
                        cu_seqlens=None if cu is None else cu.cpu())
    assert rel(theirs, ref) < 5e-3  # fla's chunk_gla may run tf32 dots
    for backend in ("triton", "chunked"):
        mine = lightnet_attn(q, k, v, causal=True, cu_seqlens=cu, backend=backend)
        assert rel(mine, ref) < 1e-5 and rel(mine, theirs) < 5e-3, backend

"""The hybrid (lightning + softmax + MoE) LM under parallel layouts on 4 gloo processes equals the
single-process model. Sequence parallelism alone (sp = 4, ring and all-gather): logits, summed loss,
every parameter gradient, router counts. Layouts (mm.distributed.mesh): dp 2 × sp 2 with FSDP2 and
all-gather LASP; sp 2 with experts split over ep = 2 and ring LASP."""

import copy

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from mm.distributed.checkpoint import load_dcp, save_dcp
from mm.distributed.mesh import ParallelConfig, mesh_shape, parallelize_lm
from mm.distributed.sequence_parallel import all_reduce_gradients, apply_sequence_parallel
from mm.models.lm import LM, LMConfig
from tests.distributed.spawn import spawn

B, T, VOCAB = 4, 8, 29


def _model(layers=2):
    torch.manual_seed(3)
    kinds = ["lightning", "softmax", "lightning"][:layers]
    cfg = LMConfig(vocab_size=VOCAB, hidden=16, layers=layers, heads=2, kv_heads=1, head_dim=8, rotary_dim=4,
                   rope_theta=10.0,  # fast rotation: a wrong position shows in the logits
                   attn_type_list=kinds, ffn=12, experts=4, top_k=2)
    model = LM(cfg).double()
    for p in model.parameters():  # larger weights than the init: attention patterns far from uniform
        torch.nn.init.normal_(p, std=0.3)
    return model


def _loss(model, ids, labels):
    out = model(ids)
    loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), labels.flatten(), reduction="sum")
    return out.logits, loss, out.tokens_per_expert


def _assert_grads(model, ref, expert_rows=None):
    """Every gradient against the single-process one. The MoE router computes in float32 even in a
    float64 model and its gradient sums tokens in another order per rank: agreement to float32
    rounding (a missing or doubled term is O(1) off)."""
    for (name, p), p_ref in zip(model.named_parameters(), ref.parameters(), strict=True):
        grad = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
        want = p_ref.grad[expert_rows] if expert_rows and name.endswith(("gate_up", "down")) else p_ref.grad
        torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")


def _batch(seed, t):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (2, t), generator=gen) for _ in range(2)]


def _check_sequence_parallel(rank, world, mode):
    ids, labels = _batch(11, 16)
    ref = _model(layers=3)
    logits_ref, loss_ref, counts_ref = _loss(ref, ids, labels)
    (loss_ref / labels.numel()).backward()
    C = ids.shape[1] // world
    sl = slice(rank * C, (rank + 1) * C)
    model = apply_sequence_parallel(copy.deepcopy(_model(layers=3)), mode=mode)
    logits, loss, counts = _loss(model, ids[:, sl], labels[:, sl])
    (loss / labels.numel()).backward()  # normalised by the global token count
    all_reduce_gradients(model)
    torch.testing.assert_close(logits, logits_ref[:, sl].detach(), rtol=1e-9, atol=1e-10)
    total = loss.detach().clone()
    dist.all_reduce(total)
    torch.testing.assert_close(total, loss_ref.detach(), rtol=1e-9, atol=1e-10)
    dist.all_reduce(counts)
    assert torch.equal(counts, counts_ref)
    _assert_grads(model, ref)


def _layout_batch():
    ids, labels = _batch(2, T)
    return torch.cat([ids, ids.flip(0)]), torch.cat([labels, labels.flip(1)])  # [B = 4, T]


def _reference():
    """The single-process model after backward on the whole batch, and its logits."""
    ids, labels = _layout_batch()
    ref = _model()
    logits_ref, loss_ref, _ = _loss(ref, ids, labels)
    (loss_ref / labels.numel()).backward()
    return ref, logits_ref


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def _check_layout(cfg, checkpoint=None):
    ids, labels = _layout_batch()
    ref, logits_ref = _reference()

    model, layout = parallelize_lm(_model(), cfg, device_type="cpu")
    dp, sp = layout.mesh.size(0), layout.mesh.size(1)
    r_dp, r_sp = layout.mesh.get_local_rank("dp"), layout.mesh.get_local_rank("sp")
    rows, cols = slice(r_dp * B // dp, (r_dp + 1) * B // dp), slice(r_sp * T // sp, (r_sp + 1) * T // sp)
    logits, loss, _ = _loss(model, ids[rows, cols], labels[rows, cols])
    (loss / labels.numel() * layout.loss_scale).backward()
    layout.reduce_gradients(model)
    torch.testing.assert_close(logits, logits_ref[rows, cols].detach(), rtol=1e-9, atol=1e-10)
    n_local = 4 // cfg.ep
    first = (dist.get_rank() % cfg.ep) * n_local
    _assert_grads(model, ref, expert_rows=slice(first, first + n_local) if cfg.ep > 1 else None)
    if checkpoint:  # one SGD step, then a sharded DCP checkpoint for the 1-process load below
        opt = _sgd(model)
        opt.step()
        save_dcp(checkpoint, model, opt)


def _worker(rank, world, checkpoint):
    for mode in ("ring", "allgather"):
        _check_sequence_parallel(rank, world, mode)
    _check_layout(ParallelConfig(dp=2, sp=2, lasp="allgather", fsdp=True), checkpoint)
    _check_layout(ParallelConfig(sp=2, ep=2, lasp="ring"))


def test_lm_under_sequence_parallelism_and_layouts_matches_single_process(tmp_path):
    spawn(_worker, 4, tmp_path, str(tmp_path / "dcp"))
    # The FSDP checkpoint of 4 ranks loads into one process without a process group.
    ref, _ = _reference()
    ref_opt = _sgd(ref)
    ref_opt.step()
    model = _model()
    opt = _sgd(model)
    load_dcp(tmp_path / "dcp", model, opt)
    for (name, p), p_ref in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, p_ref, rtol=1e-6, atol=1e-8, msg=lambda m, n=name: f"{n}: {m}")
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], ref_opt.state[p_ref]["momentum_buffer"],
                                   rtol=1e-4, atol=1e-7)


def test_load_dcp_names_a_missing_checkpoint(tmp_path):
    model = _model()
    with pytest.raises(FileNotFoundError, match="no .metadata"):
        load_dcp(tmp_path, model, _sgd(model))


def test_sequence_parallel_rejects_unknown_mode_and_non_lm():
    with pytest.raises(ValueError, match="'tree'"):
        apply_sequence_parallel(_model(), mode="tree")
    with pytest.raises(ValueError, match="Linear"):
        apply_sequence_parallel(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("cfg, world, message", [
    (ParallelConfig(sp=3), 4, "world size 4 does not factor into parallel.dp=auto × parallel.sp=3"),
    (ParallelConfig(dp=2, sp=2), 6, "world size 6 does not factor"),
    (ParallelConfig(sp=2, ep=4), 6, "parallel.ep=4 must divide"),
])
def test_mesh_shape_errors(cfg, world, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        mesh_shape(cfg, world)


def test_mesh_shape_and_config_errors():
    assert mesh_shape(ParallelConfig(sp=2), 8) == (4, 2)
    with pytest.raises(ValueError, match="parallel.lasp"):
        ParallelConfig(lasp="tree")
    with pytest.raises(ValueError, match="not supported yet"):
        ParallelConfig(ep=2, fsdp=True)

"""`mm train` under torchrun on CPU (gloo): the same global batch gives the same losses as one
process (DDP; sequence parallelism with FSDP2; FSDP2 alone), checkpoints of a 2-process run resume in
one process, a bad world size exits 2 (issue 20, "Launch and config"; issue 16, "Training").

The single-process reference reads the same samples. The data stream splits by global worker
``rank · W + worker`` (W = max(1, num_workers) logical workers per rank), so one process with W = 2
loader workers and ``grad_accum=2`` consumes, at step k, micro-batch k of global workers 0 and 1:
the batches that two DDP ranks with W = 1 consume at step k. The DDP ranks read through one loader
worker each (``num_workers=1``), which starts from a forkserver since the process group's threads
run (``data_pipelines.stateful.worker_context``); the other runs read in-process
(``num_workers=0``, the same single logical worker). The training text mixes sentences
with documents of 1-3 letters, so batches hold quite different numbers of labelled tokens and only
the loss normalised by the global token count makes the runs agree (each rank normalising by its own
count misses by 4e-5 here). The MoE load-balance loss is not a sum over tokens (nor over sequence
chunks), so its weight is 0 here.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from data_pipelines.shards.writer import ShardWriterConfig
from data_pipelines.synthetic.text import TextSynthConfig
from data_pipelines.synthetic.write import write_synthetic
from data_pipelines.testing import write_samples
from mm.train.run_log import read_metrics
from tests.train.test_lm_recipe import TINY
from tools.cli import main

REPO = Path(__file__).resolve().parents[2]
STEPS = 3


def write_shards(root: Path) -> list[str]:
    """Training text of sentences (60-200 bytes) and, as often, documents of 1-3 letters, so that the
    labelled tokens of a 256-token batch (one -100 per document end) vary a lot between batches."""
    rng = random.Random(0)
    words = "the red square sits left of a blue circle and two green dots".split()

    def doc():
        if rng.random() < 0.5:
            return "".join(rng.choices("abc", k=rng.randint(1, 3)))
        return " ".join(rng.choices(words, k=rng.randint(12, 40)))

    write_samples(root / "train", [{"__key__": f"d{i}", "txt": doc()} for i in range(300)], maxcount=50)
    write_synthetic("text", TextSynthConfig(num_samples=20, seed=1), ShardWriterConfig(out_dir=str(root / "heldout")))
    return [f"data.stream.shards=[{root / 'train'}]", f"eval.shards=[{root / 'heldout'}]"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("text"))


def _args(shards, run_dir, *extra):
    return ["configs/lm_tiny.yaml", *TINY, *shards, "model.layers=2", "model.attn_type_list=[lightning,softmax]",
            "model.router_aux_coef=0", "document_masking=false", f"train.steps={STEPS}", "checkpoint.every=2",
            "eval.batches=1", "run.device=cpu", f"run.dir={run_dir}", *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, args: list[str], log: Path, nodes: int = 1) -> int:
    """torchrun (``nodes`` > 1: that many launchers meeting through the c10d rendezvous, as on
    several machines) with output to ``log``; the worst exit code. A hang ends in SIGTERM, which
    torchrun passes to its ranks."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = ["--standalone"] if nodes == 1 else [
        f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "--rdzv-id=test"]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *launch,
           "-m", "tools.cli", "train", *map(str, args)]
    with log.open("w") as out:
        procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT) for _ in range(nodes)]
        try:
            for proc in procs:
                proc.wait(timeout=150)
        except subprocess.TimeoutExpired:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
            pytest.fail(f"torchrun timed out:\n{log.read_text()[-3000:]}")
    return max(abs(proc.returncode) for proc in procs)


def _losses(run_dir, split="train"):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["split"] == split}


def _assert_same_run(run_dir, reference):
    ref, got = _losses(reference), _losses(run_dir)
    assert sorted(got) == sorted(ref) == list(range(1, STEPS + 1))  # rank 0 alone wrote, once per step
    for step in ref:
        assert abs(got[step] - ref[step]) < 1e-5, (step, got[step], ref[step])
    assert abs(_losses(run_dir, "eval")[STEPS] - _losses(reference, "eval")[STEPS]) < 1e-5


ONE_RANK_READS_BOTH = ("data.stream.num_workers=2", "train.grad_accum=2")


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    """One process, global batch = 2 micro-batches of 4 rows from 2 loader workers."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    assert main(["train", *_args(shards, run_dir, *ONE_RANK_READS_BOTH)]) == 0
    return run_dir


@pytest.fixture(scope="module")
def reference_one_worker(shards, tmp_path_factory):
    """One process, 4 rows per step from one logical worker (what one sequence-parallel pair reads)."""
    run_dir = tmp_path_factory.mktemp("single1") / "run"
    assert main(["train", *_args(shards, run_dir, "data.stream.num_workers=0")]) == 0
    return run_dir


def test_ddp_two_processes_match_one_process_and_resume_in_one(shards, reference, tmp_path):
    run_dir = tmp_path / "ddp"
    log = tmp_path / "torchrun.log"
    # a loader worker per rank (a hang fails at _torchrun's timeout, never blocks CI)
    assert _torchrun(2, _args(shards, run_dir, "data.stream.num_workers=1"), log) == 0, log.read_text()[-3000:]
    _assert_same_run(run_dir, reference)
    final = f"checkpoints/step_{STEPS:08d}/model.safetensors"  # the single-process format, by rank 0
    ours, theirs = load_file(run_dir / final), load_file(reference / final)
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, atol=1e-5, rtol=1e-4)
    # saved at 2, resumed at 1: weights, optimizer, schedule and both ranks' data streams continue
    # exactly (data_pipelines/positions.py): the one process reads the two streams in turn, one
    # micro-batch each, so its step 3 is the global batch of the two ranks' step 3
    ckpt = run_dir / "checkpoints" / "step_00000002"
    resumed = tmp_path / "resumed"
    assert main(["train", *_args(shards, resumed, "data.stream.num_workers=0", "train.grad_accum=2"),
                 "--resume", str(ckpt)]) == 0
    assert sorted(_losses(resumed)) == [3] and abs(_losses(resumed)[3] - _losses(reference)[3]) < 1e-5
    # where the streams cannot continue exactly (here another data seed) the data restarts
    with pytest.warns(UserWarning, match="written by 2 process.*starts afresh.*seed=5"):
        assert main(["train", *_args(shards, tmp_path / "afresh", "data.stream.num_workers=0", "data.stream.seed=5"),
                     "--resume", str(ckpt)]) == 0


def test_dp_by_sp_with_fsdp_on_two_nodes_matches_one_process_and_dcp_resumes_in_one(shards, reference, tmp_path):
    """parallel.sp=2 on a world of 4 (dp = 2 × sp = 2): each pair of sequence ranks reads the rows of
    its data replica and each rank trains on half of every row (LASP ring); FSDP2 shards the
    parameters over all four; checkpoints are DCP directories. Launched as two "nodes" of two
    processes each that meet through torchrun's c10d rendezvous (issue 20: "a CPU test runs 2 nodes
    × 2 processes on localhost through it")."""
    run_dir, log = tmp_path / "dp_sp", tmp_path / "torchrun.log"
    code = _torchrun(2, _args(shards, run_dir, "data.stream.num_workers=0", "parallel.sp=2", "parallel.fsdp=true"),
                     log, nodes=2)
    assert code == 0, log.read_text()[-3000:]
    _assert_same_run(run_dir, reference)
    ckpt = run_dir / "checkpoints" / "step_00000002"
    assert (ckpt / "dcp" / ".metadata").is_file() and (ckpt / "COMPLETE").is_file()
    assert not (ckpt / "model.safetensors").exists()
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    # one process resumes the DCP directory of four (DCP reshards the FSDP shards into whole tensors);
    # the two data replicas' positions continue exactly, read in turn, one micro-batch each
    resumed = tmp_path / "resumed"
    assert main(["train", *_args(shards, resumed, "data.stream.num_workers=0", "train.grad_accum=2"),
                 "--resume", str(ckpt)]) == 0
    assert sorted(_losses(resumed)) == [3] and abs(_losses(resumed)[3] - _losses(reference)[3]) < 1e-5


def test_fsdp_data_parallel_as_launched_with_one_rank(shards, reference_one_worker, tmp_path):
    """The recipe-agnostic FSDP2 path (fully_shard per block, then the root) and its DCP checkpoints,
    in a world of one started as torchrun starts each rank (its environment, ``python -m tools.cli``).
    A process of its own: a process group's threads must not share this process with the loader
    workers that later tests fork."""
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}
    run_dir = tmp_path / "fsdp"
    one = ("data.stream.num_workers=0", "parallel.fsdp=true")

    def train(*extra: str) -> None:
        cmd = [sys.executable, "-m", "tools.cli", "train", *_args(shards, run_dir, *one), *extra]
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]

    train()
    _assert_same_run(run_dir, reference_one_worker)
    assert (run_dir / "checkpoints" / f"step_{STEPS:08d}" / "dcp" / ".metadata").is_file()
    # same world size: the data position and the RNG come back exactly, so the resumed step equals
    resumed_ref = _losses(run_dir)[STEPS]
    train("--resume", str(run_dir / "checkpoints" / "step_00000002"))
    assert abs(_losses(run_dir)[STEPS] - resumed_ref) < 1e-6


def test_world_size_that_does_not_factor_exits_2(shards, tmp_path):
    """As torchrun starts each rank: ``python -m tools.cli train`` (one process here, no torchrun)."""
    cmd = [sys.executable, "-m", "tools.cli", "train", *_args(shards, tmp_path / "run", "parallel.sp=2")]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "parallel.sp=2" in done.stderr and "world size 1" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()

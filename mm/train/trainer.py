"""The training loop: any recipe, with checkpoint/resume, logging, progress and non-finite guards."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils._pytree import tree_map_only
from tqdm import tqdm

from mm.config import ConfigError, to_yaml
from mm.cuda_graph import StepGraph
from mm.train import parallel as par
from mm.train.activation_checkpointing import apply_activation_checkpointing
from mm.train.checkpoint import (
    DCP,
    CheckpointError,
    CheckpointManager,
    is_complete,
    load_ema,
    load_train_state,
    load_weights,
)
from mm.train.config import RecipeConfig
from mm.train.ema import EMA
from mm.train.optim import build_optimizer, build_scheduler, set_update_mode
from mm.train.plot import plot_runs
from mm.train.recipe import Recipe
from mm.train.run_log import RunLog
from mm.train.seed import rng_state, seed_everything, set_deterministic, set_rng_state
from mm.train.signals import StopOnSignal


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # optimizer steps done
    train_loss: float | None  # mean loss of the last log window
    eval_metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    interrupted_by: int | None = None  # signal number when stopped by SIGTERM/SIGINT
    already_complete: bool = False  # resumed at or past train.steps: nothing was trained, evaluated or written


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast(device: torch.device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _to_device(batch, device: torch.device):
    return tree_map_only(torch.Tensor, lambda t: t.to(device, non_blocking=True), batch)


@contextlib.contextmanager
def _preserved_rng():
    """Evaluation must not shift the training RNG streams (resume equality depends on it)."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def _host_floats(metrics: dict[str, float | torch.Tensor]) -> dict[str, float]:
    """Metrics as Python floats, the device scalars among them in one device-to-host copy."""
    tensors = {k: v for k, v in metrics.items() if isinstance(v, torch.Tensor)}
    values = iter(torch.stack([v.detach().float().reshape(()) for v in tensors.values()]).tolist() if tensors else [])
    return {k: next(values) if k in tensors else float(v) for k, v in metrics.items()}


class _Window:
    """Running sums between two log events."""

    def __init__(self, unit: str):
        self.rate_key = f"{unit}_per_s"
        self.reset()

    def reset(self):
        self.loss_sum, self.loss_steps, self.units, self.start = 0.0, 0, 0, time.perf_counter()
        self.extra: dict[str, float] = defaultdict(float)

    def add(self, loss: float, units: int, extra: dict[str, float]):
        self.units += units
        if math.isfinite(loss):
            self.loss_sum += loss
            self.loss_steps += 1
            for key, value in extra.items():
                self.extra[key] += value

    def summary(self) -> dict[str, float]:
        seconds = max(time.perf_counter() - self.start, 1e-9)
        n = max(self.loss_steps, 1)
        loss = self.loss_sum / self.loss_steps if self.loss_steps else float("nan")
        return {"loss": loss, self.rate_key: self.units / seconds, **{k: v / n for k, v in self.extra.items()}}


class Trainer:
    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.cfg: RecipeConfig = recipe.cfg
        self.run_dir = Path(self.cfg.run.dir)
        self.device = resolve_device(self.cfg.run.device)
        # under torchrun: the process group (world size checked against cfg.parallel first), else None
        self.world = par.init_from_env(self.cfg.parallel, self.device)
        if self.world is not None:
            self.device = self.world.device
            if self.cfg.train.cuda_graph:
                raise ConfigError("train.cuda_graph is single-process only; set train.cuda_graph=false under torchrun")
        self.main = self.world is None or self.world.main  # the rank that writes metrics and checkpoints
        self.sharded = self.world is not None and self.cfg.parallel.fsdp  # checkpoints through DCP
        if self.world is None and self.cfg.parallel.co2.enabled:
            raise ConfigError("parallel.co2.enabled=true averages the parameters of several ranks: launch with "
                              "torchrun (torchrun --nproc_per_node=N -m tools.cli train ...)")
        if self.sharded and self.cfg.train.ema:
            raise ConfigError("train.ema keeps whole weights on every rank: not with parallel.fsdp=true")
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", self.cfg.checkpoint.keep_last)
        self.config_yaml = to_yaml(self.cfg)

    # -- set-up -------------------------------------------------------------------------------
    def _build(self):
        seed_everything(self.cfg.run.seed)
        set_deterministic(self.cfg.run.deterministic)
        self.model: nn.Module = self.recipe.build_model().to(self.device)
        if self.cfg.train.activation_checkpointing:  # on the blocks themselves, before DDP/FSDP wrap them
            apply_activation_checkpointing(self.model)
        self.layout = None  # how gradients are combined across ranks (loss_scale, reduce_gradients)
        if self.world is not None:  # before the optimizer (FSDP2 replaces parameters) and the data
            self.model, self.layout = self.recipe.parallelize(self.model, self.cfg.parallel, self.device)
        self.module = par.unwrap(self.model)  # parameter names as in single-process checkpoints
        # expert parallelism: checkpoints gather the experts' slices and cut them again on resume
        self.experts = self.layout.experts if self.layout is not None else None
        graphed = self.cfg.train.cuda_graph
        if graphed and self.device.type != "cuda":
            raise ValueError(f"train.cuda_graph needs a CUDA device, got run.device={self.cfg.run.device!r} "
                             f"({self.device})")
        self.optimizer = build_optimizer(self.module, self.cfg.optim, capturable=graphed)
        self.step_graph = StepGraph(self._device_step) if graphed else None
        self.co2 = None  # parallel.co2: the outer loop over this rank's local inner steps (mm.train.co2)
        if self.world is not None and self.cfg.parallel.co2.enabled:
            from mm.train.co2 import build_co2

            self.co2 = build_co2(self.module, self.optimizer, self.cfg.parallel.co2)
        self.scheduler = build_scheduler(self.optimizer, self.cfg.schedule, self.cfg.train.steps)
        self.ema = EMA(self.module, self.cfg.train.ema) if self.cfg.train.ema else None
        self.data = self.recipe.build_train_data()
        self.step = 0
        self.nonfinite_total = 0

    def _train_state(self) -> dict:
        return {
            "step": self.step,
            **({} if self.sharded else {"optimizer": self._optimizer_state()}),  # FSDP: in the DCP dir
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "data": self.data.state_dict(),
            "nonfinite_total": self.nonfinite_total,
        }

    def _optimizer_state(self) -> dict:
        """The optimizer state in the single-process layout (under EP gathered: a collective)."""
        return self.experts.whole_optimizer_state(self.optimizer) if self.experts else self.optimizer.state_dict()

    def _resume(self, spec: str) -> Path:
        path = self.checkpoints.resolve(spec)
        state = load_train_state(path)
        if (path / DCP).is_dir() and self.experts is not None:
            raise CheckpointError(f"--resume {path}: a DCP checkpoint (FSDP) does not load under parallel.ep > 1; "
                                  "resume it with parallel.ep=1")
        if (path / DCP).is_dir():  # written under FSDP by any world size: DCP reshards on load
            from mm.distributed.checkpoint import load_dcp

            load_dcp(path / DCP, self.module, self.optimizer)
        elif self.sharded:
            raise CheckpointError(f"--resume {path}: an FSDP run resumes from a DCP checkpoint ({DCP}/), "
                                  "this one holds whole weights: resume it with parallel.fsdp=false")
        elif self.experts is not None:  # whole tensors: each rank keeps its experts' rows
            with self.experts.loading():
                load_weights(path, self.module)
            self.experts.load_optimizer_state(self.optimizer, state["optimizer"])
        else:
            load_weights(path, self.module)
            self.optimizer.load_state_dict(state["optimizer"])
        set_update_mode(self.optimizer, capturable=self.step_graph is not None)  # whatever run saved it
        self.scheduler.load_state_dict(state["scheduler"])
        ranks = state.get("ranks") or [{"data": state["data"], "rng": state["rng"]}]  # per rank under torchrun
        world = self.world.size if self.world else 1
        if len(ranks) == world:
            mine = ranks[self.world.rank if self.world else 0]
            self.data.load_state_dict(mine["data"])
            set_rng_state(mine["rng"])
        else:  # R ranks' streams dealt out over this world size (data_pipelines/positions.py) when they split
            self._move_data_positions(path, [r["data"] for r in ranks], world)
            set_rng_state(ranks[0]["rng"])
        if self.co2 is not None:  # each rank's local weights, moments and outer state, else a fresh outer loop
            from mm.train.co2 import load_rank_state

            if not load_rank_state(self.co2, path, self.world.rank, self.world.size):
                self.co2.restart()
        if self.ema is not None:
            ema = load_ema(path)
            if ema is None:
                raise CheckpointError(f"--resume {path}: train.ema is on but the checkpoint has no EMA weights")
            self.ema.load_state_dict(self.experts.local_named(ema) if self.experts else ema, source=str(path))
        self.step = int(state["step"])
        self.nonfinite_total = int(state["nonfinite_total"])
        return path

    def _move_data_positions(self, path: Path, states: list[dict], world: int) -> None:
        """Every saved rank's data position onto this world size; where they do not map (or the data
        source keeps no per-stream positions) the stream starts afresh, with a warning saying why."""
        from data_pipelines.positions import DataResumeError

        load = getattr(self.data, "load_world_state", None)
        try:
            if load is None:
                raise DataResumeError(f"{type(self.data).__name__} has no load_world_state")
            load(states)
        except DataResumeError as err:
            warnings.warn(f"--resume {path}: written by {len(states)} process(es), resumed by {world}: model, "
                          f"optimizer and schedule continue exactly, the data stream starts afresh ({err})",
                          stacklevel=3)
            self.data = self.recipe.build_train_data()  # nothing half-loaded

    def save(self) -> Path:
        state = self._train_state()
        ema = self.ema.state_dict() if self.ema is not None else None
        if ema is not None and self.experts is not None:
            ema = self.experts.whole_named(ema)  # a collective
        if self.world is None:
            return self.checkpoints.save(self.step, self.module, state, self.config_yaml, ema=ema)
        # under torchrun: every rank's data position and RNG, then rank 0 commits (temp dir, rename,
        # COMPLETE) after the weights are written: by rank 0 (DDP, identical replicas) or DCP (FSDP)
        final = self.checkpoints.path(self.step)
        done = is_complete(final)  # every rank looks before the gather below, so before rank 0 writes
        state["ranks"] = par.gather_objects({"data": state["data"], "rng": state["rng"]})
        if done:
            return final
        tmp = self.checkpoints.tmp_path(self.step, tag="dist") if self.sharded or self.co2 is not None else None
        if tmp is not None:
            if self.main:
                self.checkpoints.begin(self.step, tag="dist")
            dist.barrier()
        if self.sharded:
            from mm.distributed.checkpoint import save_dcp

            save_dcp(tmp / DCP, self.module, self.optimizer)  # a collective; returns once the metadata is written
        if self.co2 is not None:  # every rank's local weights, moments and outer state (mm.train.co2)
            from mm.train.co2 import save_rank_state

            save_rank_state(self.co2, tmp, self.world.rank)
            dist.barrier()  # all written before rank 0 commits
        # DDP: rank 0's replica; EP: rank 0 holds every expert while it writes (a collective)
        with self.experts.gathered() if self.experts else contextlib.nullcontext():
            if self.main:
                self.checkpoints.save(self.step, None if self.sharded else self.module, state, self.config_yaml,
                                      tmp=tmp, ema=ema)
        dist.barrier()
        return final

    def _data_metrics(self) -> dict[str, float]:
        """Skip counts and the like, when the data source reports them (``metrics()``)."""
        metrics = getattr(self.data, "metrics", None)
        return metrics() if callable(metrics) else {}

    # -- one optimizer step -------------------------------------------------------------------
    def _device_step(self, batches) -> dict[str, float | torch.Tensor]:
        """The step's device work, with nothing that waits on the device: forward/backward over the
        micro-batches, gradient clipping, and an AdamW update that the fused kernel itself skips when
        the loss or the gradient norm is not finite (``found_inf``). Returns device scalars (loss,
        grad_norm, units, the recipe's metrics) for the caller to read."""
        self.optimizer.zero_grad(set_to_none=True)
        accum = self.cfg.train.grad_accum
        loss_sum, units, extra = torch.zeros((), device=self.device), 0, {}
        for batch in batches:
            with _autocast(self.device, self.cfg.run.precision):
                out = self.recipe.loss(self.model, batch)
            (out.loss * out.count).backward()  # the sum over units; normalised below (mm.train.parallel)
            loss_sum = loss_sum + out.loss.detach().float() * out.count
            units = units + out.count
            for key, value in out.metrics.items():
                extra[key] = extra.get(key, 0.0) + value / accum
        loss, units, extra = self._normalise(loss_sum, units, extra)
        clip = self.cfg.optim.grad_clip or float("inf")
        if self.layout is None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        else:  # under EP the norm sums every rank's experts
            grad_norm = self.layout.clip_grad_norm_(self.model, clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        self.optimizer.found_inf = (~(loss.isfinite() & grad_norm.isfinite())).float()
        self.optimizer.step()
        return {"loss": loss, "grad_norm": grad_norm, "units": units, **extra}

    def _normalise(self, loss_sum, units, extra: dict):
        """Divide the summed gradients by the global unit count N (all micro-batches, all ranks);
        return the global mean loss, N and the recipe metrics averaged over ranks."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if self.world is None:
            n = units.clamp(min=1) if isinstance(units, torch.Tensor) else max(units, 1)
            if grads:
                torch._foreach_div_(grads, n)
            return loss_sum / n, units, extra
        self.layout.reduce_gradients(self.module)
        keys = list(extra)
        stats = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device).reshape(())
                             for v in (loss_sum, units, *(extra[k] for k in keys))])
        # CO2 (mm.train.co2): each rank steps on the mean over its own units; else the global count
        own = stats[1].clamp(min=1) if self.layout.own_units else None  # a copy: all_sum works in place
        stats = par.all_sum(stats)
        n = stats[1].clamp(min=1)
        scale = float(self.layout.loss_scale / (n if own is None else own))  # a float scales DTensors too
        for g in grads:
            g.mul_(scale)
        mean = (stats[2:] / self.world.size).tolist()
        return (stats[0] / n).float(), stats[1], {k: mean[i] for i, k in enumerate(keys)}

    def _step(self, batches) -> tuple[float, float, int, dict[str, float]]:
        """One optimizer step over ``grad_accum`` micro-batches; the update is skipped (on the device)
        when the loss or the gradient norm is not finite. With ``train.cuda_graph`` the micro-batches
        are fetched first and the recorded step replays on them."""
        self.model.train()
        self.recipe.start_step(self.module, self.step)
        if self.world is not None:  # DDP reduces the parameters that were trainable when it was built
            self.model = par.follow_trainable(self.model)
        micro = (_to_device(self.recipe.device_batch(next(batches)), self.device)
                 for _ in range(self.cfg.train.grad_accum))
        out = self.step_graph([*micro]) if self.step_graph else self._device_step(micro)
        values = _host_floats(out)
        loss, grad_norm, units = values.pop("loss"), values.pop("grad_norm"), values.pop("units")
        self.scheduler.step()
        self.step += 1
        if self.co2 is not None:  # after the inner step: every tau-th launches/applies the outer step
            self.co2.advance()
        return loss, grad_norm, int(units), values

    def _evaluate(self, log: RunLog) -> dict[str, float]:
        self.model.eval()
        averaged = self.ema.applied(self.module) if self.ema is not None else contextlib.nullcontext()
        with torch.no_grad(), _preserved_rng(), _autocast(self.device, self.cfg.run.precision), averaged:
            metrics = self.recipe.evaluate(self.module, self.device)  # on every rank (FSDP/SP need them all)
        if metrics:
            log.log(self.step, metrics, split="eval")
        return metrics

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, resume: str | None = None) -> TrainResult:
        self._build()
        resumed_from = self._resume(resume) if resume else None
        if resumed_from and self.step >= self.cfg.train.steps:  # a larger train.steps continues the run
            return TrainResult(self.run_dir, self.step, None, checkpoint=resumed_from, already_complete=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.main:
            (self.run_dir / "config.yaml").write_text(self.config_yaml)
        log = RunLog(self.run_dir, resume_step=self.step if resumed_from else None, write=self.main)
        loop = self.cfg.train
        window, consecutive_bad = _Window(self.recipe.unit), 0
        last_loss, eval_metrics, checkpoint = None, {}, None
        batches = iter(self.data)
        bar = tqdm(total=loop.steps, initial=self.step, disable=not (loop.progress and self.main), desc="train",
                   dynamic_ncols=True)
        stopped = False
        try:
            with StopOnSignal() as stop:
                # every rank stops at the same step when a signal reached any of them
                while self.step < loop.steps and not (stopped := par.any_rank(stop.requested, self.device)):
                    loss, grad_norm, units, extra = self._step(batches)
                    finite = math.isfinite(loss) and math.isfinite(grad_norm)
                    consecutive_bad = 0 if finite else consecutive_bad + 1
                    self.nonfinite_total += 0 if finite else 1
                    if finite and self.ema is not None:  # a skipped update leaves the average alone too
                        self.ema.update(self.module)
                    window.add(loss, units, extra)
                    bar.update(1)
                    if self.step % loop.log_every == 0 or self.step == loop.steps or not finite:
                        summary = window.summary()
                        last_loss = summary["loss"]
                        lr = float(self.optimizer.param_groups[0]["lr"])
                        log.log(self.step, {**summary, "lr": lr, "grad_norm": grad_norm,
                                            "nonfinite_steps": self.nonfinite_total, **self._data_metrics()})
                        rate = {f"{self.recipe.unit}/s": f"{summary[window.rate_key]:.0f}"}
                        bar.set_postfix(loss=f"{last_loss:.4f}", **rate)
                        window.reset()
                    if consecutive_bad >= loop.max_nonfinite:
                        latest = self.checkpoints.latest()
                        raise TrainingDiverged(
                            f"stopping at step {self.step}: {consecutive_bad} consecutive steps with a non-finite "
                            f"loss or gradient norm; last good checkpoint: {latest.path if latest else 'none'}"
                        )
                    if loop.eval_every and self.step % loop.eval_every == 0 and self.step < loop.steps:
                        eval_metrics = self._evaluate(log)
                    if self.cfg.checkpoint.every and self.step % self.cfg.checkpoint.every == 0 and not consecutive_bad:
                        # no periodic saves inside a non-finite streak: the last good one stays the latest
                        checkpoint = self.save()
                if stopped or par.any_rank(stop.requested, self.device):
                    checkpoint = self.save()
                    return TrainResult(self.run_dir, self.step, last_loss, eval_metrics, checkpoint, stop.signum)
            if self.co2 is not None:  # the last rounds applied: every rank holds the same weights
                self.co2.finish()
            eval_metrics = self._evaluate(log) or eval_metrics
            checkpoint = self.save()
        finally:
            bar.close()
            log.close()
        if self.main:
            plot_runs([self.run_dir], self.run_dir / "curves.png")
        return TrainResult(self.run_dir, self.step, last_loss, eval_metrics, checkpoint)

"""CO2: local updates with an outer step whose all-reduce overlaps the next round (DESIGN §10).

Sun et al., "CO2: Efficient Distributed Training with Full Communication-Computation Overlap"
(ICLR 2024, arXiv 2401.16265), Algorithm 1. Every rank of the replica group runs tau steps of any
inner optimizer on its own batches; round t starts from the replicated outer point x_t,0 and ends
at the local x_t,tau. Then:

1. a SNAPSHOT of x_t,tau (a flat copy, so the next round's steps cannot change what is reduced)
   is summed over the group with ``all_reduce(async_op=True)``: it travels while the next tau inner
   steps compute, and its mean x̄_t,tau is used one round later (one-round staleness);
2. the outer step uses the previous round's mean (§3.2, Algorithm 1):

       Δ    = Λ ⊙ (x_t-1,0 − x̄_t-1,tau)       the pseudo-gradient of round t-1, penalised
       m    ← β m + Δ;   m ← m · min(1, c / ‖m‖)      outer momentum, clipped (assigned, not discarded)
       x_t+1,0 = x_t,0 − α m                     and every rank restarts from x_t+1,0.

   Λ is the staleness-gap penalty: Δ was measured from x_t-1,0 but is applied at x_t,0, a gap of
   g = x_t,0 − x_t-1,0 (the last outer step). Each element is damped by Λ = 1 / max(1, |g| / C),
   C the mean |Δ| of its tensor (the gap-aware penalty of Barkai et al., ICLR 2020, that §3.2
   builds on): an element whose staleness gap exceeds a typical update moves less.
   ``penalty=False`` sets Λ = 1.

Paper check (2026-11-30): the paper's §3.2 text could not be retrieved here (only its abstract and
the ICLR reviews, which confirm that Λ_t is computed in Algorithm 1 after x_t,0 is set, that the
clip has a threshold φ, and that the convergence theorem ignores the clip), so the exact
normaliser of Λ and whether the clip bounds the norm or each element remain unchecked; the
formulas above are this module's reading. The public code (``weigao266/fairscale-CO2``,
``gossip/co2.py``) differs: its "penalty" divides the pseudo-gradient by a constant
(``co2_gap_penalty``, default 1) with no gap measured at all; its clip is an element-wise
``torch.clamp(m, -c, c)`` whose result is discarded (the momentum is never clipped; here the clip
is on the global L2 norm and assigned); its all-reduce runs in a thread on the live parameters
while the next steps mutate them (here a snapshot); it shards the momentum buffer over up to 32
ranks with reduce/broadcast.

With ``overlap=False`` the all-reduce is waited for at once and used in the same round (no
staleness, g = 0): with tau = 1, β = 0, α = 1 that is synchronous parameter averaging.
No extra process or thread: the overlap is the collective's own asynchrony (gloo on CPU, NCCL on
GPU); give CO2 a process group of its own (``group``) so that other collectives of the step (loss
logging) do not queue behind the snapshot on the same communicator. FSDP2-sharded parameters
(DTensors) are handled per shard: each rank averages its local shard over ``group``, which must
then be the replica group of that shard (the ranks holding the same shard; HSDP's replicate mesh
dimension); C of the penalty and ‖m‖ of the clip stay over whole tensors (the shards' sums added
over the default group, which must hold exactly replicas × shards). Pure FSDP over all ranks has
no replica: there CO2 has nothing to average (``mm train`` refuses it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["CO2", "CO2Config"]


@dataclass
class CO2Config:
    enabled: bool = False  # mm train under torchrun: local inner steps and this outer loop instead of DDP
    tau: int = 12  # inner steps per round (the paper uses 12-48)
    outer_lr: float = 1.0  # α
    outer_momentum: float = 0.2  # β (0.2-0.6 by world size in the paper)
    penalty: bool = True  # staleness-gap penalty Λ
    clip: float = 1.0  # c: bound on the outer momentum's global L2 norm (0: no clipping)
    overlap: bool = True  # one-round-stale asynchronous all-reduce; False: synchronous averaging

    def __post_init__(self):
        if self.tau < 1:
            raise ValueError(f"co2.tau must be >= 1, got {self.tau}")
        if not 0.0 <= self.outer_momentum < 1.0:
            raise ValueError(f"co2.outer_momentum must be in [0, 1), got {self.outer_momentum}")
        if self.outer_lr <= 0 or self.clip < 0:
            raise ValueError(f"co2.outer_lr must be > 0 and co2.clip >= 0, got {self.outer_lr}, {self.clip}")


@dataclass
class _InFlight:
    work: dist.Work | _Done  # the async all-reduce
    total: torch.Tensor  # [numel] the snapshot, summed in place over the group
    anchor: torch.Tensor  # [numel] x_t,0 of the round the snapshot ends


class _Done:
    """A finished all-reduce (a round restored from a checkpoint)."""

    def wait(self) -> bool:
        return True


def _local(p: torch.Tensor) -> torch.Tensor:
    """This rank's part of a parameter: the local shard of an FSDP2 DTensor, else the tensor itself."""
    return p.to_local() if hasattr(p, "to_local") else p


class CO2:
    """Wrap ``inner`` (any torch optimizer over ``params``): call :meth:`step` where ``inner.step``
    would be called (or :meth:`advance` right after it); every ``cfg.tau`` calls it takes the outer
    step (see the module doc).

    All ranks of ``group`` must start from the same parameters. After :meth:`finish` (or an outer
    step with ``overlap=False``) every rank holds the same parameters.
    """

    def __init__(self, params, inner: torch.optim.Optimizer, cfg: CO2Config, *, group=None):
        self.params = [p for p in params]
        if not self.params or len({p.dtype for p in self.params}) != 1:
            raise ValueError(f"CO2 needs a non-empty list of parameters of one dtype, got "
                             f"{sorted({str(p.dtype) for p in self.params})}")
        self.inner, self.cfg, self.group = inner, cfg, group
        self.world = dist.get_world_size(group)
        self.anchor = self._flat()  # x_t,0
        self.momentum = torch.zeros_like(self.anchor)
        self.sizes = [_local(p).numel() for p in self.params]  # this rank's elements of each tensor
        self.counts = torch.tensor(self.sizes, dtype=self.anchor.dtype, device=self.anchor.device)
        self.in_flight: _InFlight | None = None
        self.local_steps = 0

    def restart(self) -> None:
        """Start the outer loop afresh from the current parameters (no momentum, nothing in flight)."""
        self.anchor, self.in_flight, self.local_steps = self._flat(), None, 0
        self.momentum.zero_()

    def _flat(self) -> torch.Tensor:
        """A copy of the parameters (this rank's shards) as one flat vector (the snapshot)."""
        return torch.cat([_local(p).detach().reshape(-1) for p in self.params])

    def _load(self, flat: torch.Tensor) -> None:
        offset = 0
        with torch.no_grad():
            for p in map(_local, self.params):
                p.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.inner.step()
        self.advance()

    def advance(self) -> None:
        """Count one inner step (already taken); the outer step after every ``tau``-th."""
        self.local_steps += 1
        if self.local_steps % self.cfg.tau == 0:
            self.outer_step()

    def outer_step(self) -> None:
        """Launch the all-reduce of a snapshot of x_t,tau; apply the previous (or, without overlap,
        this) round's mean; restart every rank from the new outer point."""
        snapshot = self._flat()
        work = dist.all_reduce(snapshot, group=self.group, async_op=True)
        launched = _InFlight(work, snapshot, self.anchor.clone())
        ready, self.in_flight = (self.in_flight, launched) if self.cfg.overlap else (launched, None)
        if ready is not None:
            self._apply(ready)
        self._load(self.anchor)

    def _apply(self, ready: _InFlight) -> None:
        ready.work.wait()
        delta = ready.anchor - ready.total / self.world  # x_t-1,0 − x̄_t-1,tau
        if self.cfg.penalty:
            gap = (self.anchor - ready.anchor).abs()  # staleness gap (0 without overlap)
            pieces = delta.split(self.sizes)
            for d, g, typical in zip(pieces, gap.split(self.sizes), self._mean_abs(pieces), strict=True):
                d.div_((g / typical).clamp(min=1.0))  # Λ = 1 / max(1, |g| / C), in place in delta
        self.momentum.mul_(self.cfg.outer_momentum).add_(delta)
        if self.cfg.clip > 0:
            norm = self._norm(self.momentum)
            self.momentum.mul_((self.cfg.clip / norm.clamp(min=1e-30)).clamp(max=1.0))  # really clips
        self.anchor.sub_(self.cfg.outer_lr * self.momentum)

    @property
    def _sharded(self) -> bool:
        return any(hasattr(p, "to_local") for p in self.params)

    def _mean_abs(self, pieces: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """C per parameter tensor: the mean |Δ| over the whole tensor. With sharded parameters the
        shards' sums and sizes are summed over the default group (every replica adds the same values,
        which the ratio cancels): the default group must be the replicas × shards of the model."""
        sums, counts = torch.stack([d.abs().sum() for d in pieces]), self.counts
        if self._sharded:
            both = torch.cat([sums, counts])
            dist.all_reduce(both)
            sums, counts = both.split(len(pieces))
        return (sums / counts.clamp(min=1)).clamp(min=torch.finfo(sums.dtype).tiny)

    def _norm(self, flat: torch.Tensor) -> torch.Tensor:
        """‖m‖ over the whole model: with sharded parameters the shards' squares summed over the
        default group (replicas × shards), else the local norm."""
        if not self._sharded:
            return flat.norm()
        square = flat.square().sum()
        dist.all_reduce(square)  # every shard of every replica once per replica ...
        return (square / self.world).sqrt()  # ... and the replicas hold the same momentum

    def state_dict(self) -> dict:
        """Everything a resume of this rank needs: its local parameters and inner optimizer, the outer
        point and momentum, and the round in flight (waited for here: one lost overlap)."""
        state = {"inner": self.inner.state_dict(), "params": self._flat(), "anchor": self.anchor.clone(),
                 "momentum": self.momentum.clone(), "local_steps": self.local_steps}
        if self.in_flight is not None:
            self.in_flight.work.wait()
            state["in_flight"] = {"total": self.in_flight.total.clone(), "anchor": self.in_flight.anchor.clone()}
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["anchor"].shape != self.anchor.shape:
            raise ValueError(f"CO2 state of {state['anchor'].numel()} parameter elements does not fit this "
                             f"rank's {self.anchor.numel()}")
        self.inner.load_state_dict(state["inner"])
        self._load(state["params"])
        self.anchor.copy_(state["anchor"])
        self.momentum.copy_(state["momentum"])
        self.local_steps = int(state["local_steps"])
        pending = state.get("in_flight")
        self.in_flight = None if pending is None else _InFlight(_Done(), pending["total"].clone(),
                                                                pending["anchor"].clone())

    def finish(self) -> None:
        """End of training: close a partial round with an outer step, then apply the round still in
        flight. Afterwards the parameters are equal on every rank."""
        if self.local_steps % self.cfg.tau:
            self.outer_step()
        if self.in_flight is not None:
            ready, self.in_flight = self.in_flight, None
            self._apply(ready)
            self._load(self.anchor)

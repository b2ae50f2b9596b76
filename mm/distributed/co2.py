"""CO2: local updates with an outer step whose all-reduce overlaps the next round (DESIGN §10).

Every rank of the data-parallel group runs tau steps of any inner optimizer on its own batches;
round t starts from the replicated outer point x_t,0 and ends at the local x_t,tau. Then:

1. a SNAPSHOT of x_t,tau (a flat copy, so the next round's steps cannot change what is reduced)
   is summed over the group with ``all_reduce(async_op=True)``: it travels while the next tau inner
   steps compute, and its mean x̄_t,tau is used one round later (one-round staleness);
2. the outer step uses the previous round's mean (paper §3.2, Algorithm 1):

       Δ    = Λ ⊙ (x_t-1,0 − x̄_t-1,tau)       the pseudo-gradient of round t-1
       m    ← β m + Δ;   m ← m · min(1, c / ‖m‖)      outer momentum, clipped (assigned, not discarded)
       x_t+1,0 = x_t,0 − α m                     and every rank restarts from x_t+1,0.

   Λ is the staleness-gap penalty: Δ was measured from x_t-1,0 but is applied at x_t,0, a gap of
   g = x_t,0 − x_t-1,0 (the last outer step). Following the gap-aware penalty that §3.2 builds on
   (Barkai et al., ICLR 2020), each element is damped by 1 / max(1, |g| / C) with C the mean |Δ|
   of its tensor: an element whose staleness gap exceeds a typical update moves less. (The paper's
   exact normaliser could not be checked when this was written; the public code divides by a
   constant instead.) ``penalty=False`` sets Λ = 1.

With ``overlap=False`` the all-reduce is waited for at once and used in the same round (no
staleness, g = 0): with tau = 1, β = 0, α = 1 that is synchronous parameter averaging.
No extra process or thread: the overlap is the collective's own asynchrony (gloo on CPU, NCCL on
GPU). Parameters are plain replicated tensors (DDP style); FSDP2-sharded parameters are not
handled yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["CO2", "CO2Config"]


@dataclass
class CO2Config:
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


class CO2:
    """Wrap ``inner`` (any torch optimizer over ``params``): call :meth:`step` where ``inner.step``
    would be called; every ``cfg.tau`` calls it takes the outer step (see the module doc).

    All ranks must start from the same parameters. After :meth:`finish` (or an outer step with
    ``overlap=False``) every rank holds the same parameters.
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
        self.in_flight: _InFlight | None = None
        self.local_steps = 0

    def _flat(self) -> torch.Tensor:
        """A copy of the parameters as one flat vector (the snapshot)."""
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def _load(self, flat: torch.Tensor) -> None:
        offset = 0
        with torch.no_grad():
            for p in self.params:
                p.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.inner.step()
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
            offset = 0
            for p in self.params:
                d, g = delta[offset : offset + p.numel()], gap[offset : offset + p.numel()]
                typical = d.abs().mean().clamp(min=torch.finfo(d.dtype).tiny)
                d.div_((g / typical).clamp(min=1.0))  # Λ = 1 / max(1, |g| / C)
                offset += p.numel()
        self.momentum.mul_(self.cfg.outer_momentum).add_(delta)
        if self.cfg.clip > 0:
            norm = self.momentum.norm()
            self.momentum.mul_((self.cfg.clip / norm.clamp(min=1e-30)).clamp(max=1.0))  # really clips
        self.anchor.sub_(self.cfg.outer_lr * self.momentum)

    def state_dict(self) -> dict:
        """Everything a resume needs, the round in flight included (waited for here: one lost overlap)."""
        state = {"inner": self.inner.state_dict(), "anchor": self.anchor.clone(), "momentum": self.momentum.clone(),
                 "local_steps": self.local_steps}
        if self.in_flight is not None:
            self.in_flight.work.wait()
            state["in_flight"] = {"total": self.in_flight.total.clone(), "anchor": self.in_flight.anchor.clone()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state["inner"])
        self.anchor.copy_(state["anchor"])
        self.momentum.copy_(state["momentum"])
        self.local_steps = int(state["local_steps"])
        pending = state.get("in_flight")
        self.in_flight = None if pending is None else _InFlight(_Done(), pending["total"].clone(),
                                                                pending["anchor"].clone())

    def finish(self) -> None:
        """Apply the round still in flight (end of training): parameters equal on every rank."""
        if self.in_flight is not None:
            ready, self.in_flight = self.in_flight, None
            self._apply(ready)
            self._load(self.anchor)

"""spec-SAT's step: sharpness-aware training over the perturbation set of the fleet's process spec.

The objective (README, "spec-SAT"), over the on-chip controls theta::

    min_theta  E_xi  max_{dT in {-T, 0, +T}}  L(theta + xi + k dT 1 + rho * g / ||g||)

with xi ~ N(0, sigma^2 I) the independent per-device errors, k dT the common-mode
thermal shift over the deployment range, g the gradient at theta + xi + k dT and
rho = z sigma (:class:`~pnndeploy.training.perturbation_set.PerturbationSet`).
The max over dT is taken by evaluating the batch loss at the range's ends and
its middle: the loss is not monotone in dT (the trained point sits in a valley),
so a first-order sign would always pick an end and never train the chip at the
calibration temperature (what the phase-mesh demo's drift adversary did).

One step:

1. save theta, add a fresh noise draw xi;
2. evaluate the loss (no gradient) at the three shifts, keep the worst dT*;
3. g = grad L at theta + xi + k dT*, ascend by rho * g / ||g||;
4. backward at that point, restore theta bit for bit, step the optimiser.

With ``every`` > 1 (efficient spec-SAT) steps 2-3 run every ``every`` steps;
in between a step adds a fresh xi plus the cached shift and ascent and costs
one forward/backward.

The set is ramped in linearly over the first :data:`WARMUP` of the training
steps (``scale`` from 0 to 1 on sigma, the shift and rho): from a random start
the full worst case is so hard that a small model (8 hidden units) settles on a
constant output at chance and never leaves it.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from pnndeploy.training.adversary import AdversarialStep, Adversary
from pnndeploy.training.perturbation_set import PerturbationSet

#: Fraction of the training steps over which the perturbation set is ramped in from 0 to its full size.
WARMUP = 0.2


class SpecAdversary(Adversary):
    """The perturbations of one spec-SAT step, applied in place to the on-chip controls and undone exactly."""

    def __init__(self, params: Sequence[nn.Parameter], pset: PerturbationSet, every: int = 1,
                 eps: float = 1e-12) -> None:
        super().__init__(params, every)
        self.pset = pset
        self.eps = eps
        #: The temperatures the max over the common mode looks at (K).
        self.candidates = pset.common_temperatures
        #: The worst temperature picked at the last refresh (K), and how often each candidate won.
        self.last_delta_T = 0.0
        self.wins = {t: 0 for t in self.candidates}
        #: Fraction of the set applied now (the warm-up ramp, :meth:`ramp`).
        self.scale = 1.0
        #: Per parameter, the controls resting as faulty devices this step (:meth:`_fail`).
        self._failed: list[torch.Tensor] = []

    def ramp(self, step: int, total_steps: int) -> None:
        """Set :attr:`scale` for training step ``step`` (0-based) of ``total_steps``: linear over the warm-up."""
        warmup = WARMUP * total_steps
        self.scale = 1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup)

    # ------------------------------------------------------------------------------ the pieces
    @torch.no_grad()
    def begin(self) -> None:
        """Save theta and move to theta + xi (a fresh draw, sigma of the spec); with a spec that draws faulty
        devices, a fresh fraction of the controls rests where a faulty device would (:meth:`_fail`)."""
        self._save()
        sigma = self.pset.sigma * self.scale
        if sigma > 0:
            torch._foreach_add_(self.params, [sigma * torch.randn_like(p) for p in self.params])
        if self.pset.fault_rate > 0:
            self._fail()

    def _fail(self) -> None:
        """Each control, with the spec's fault rate (ramped in with the set), at rest as a faulty device: its
        fabrication offset N(0, offset_sigma) plus its drive (0 when dead, uniform over the heater range when
        stuck), whatever training wants; the step then learns weights that survive a device that does not respond."""
        pset, (lo, hi) = self.pset, self.pset.heater_range
        self._failed = []
        for p in self.params:
            u = torch.rand_like(p)
            drive = torch.where(u < pset.stuck_fraction * self.scale, lo + (hi - lo) * torch.rand_like(p),
                                torch.zeros_like(p))
            hit = u < pset.fault_rate * self.scale
            p.copy_(torch.where(hit, drive + pset.offset_sigma * torch.randn_like(p), p))
            self._failed.append(hit)

    @torch.no_grad()
    def restore(self) -> None:
        """Put theta back; a control that rested as a faulty device this step takes no gradient from it (as a
        dropped-out weight: what the loss says about its rest value says nothing about its setting)."""
        super().restore()
        for p, hit in zip(self.params, self._failed):
            if p.grad is not None:
                p.grad.masked_fill_(hit, 0.0)
        self._failed = []

    @torch.no_grad()
    def _shift(self, delta_T: float) -> None:
        if delta_T:
            torch._foreach_add_(self.params, self.pset.drift * delta_T * self.scale)

    def locate(self, loss_at: Callable[[], float]) -> None:
        """The worst common-mode shift (:meth:`worst_shift`)."""
        self.worst_shift(loss_at)

    @torch.no_grad()
    def worst_shift(self, loss_at: Callable[[], float]) -> float:
        """Apply the common-mode shift k dT with the largest batch loss among the candidates; returns dT."""
        if len(self.candidates) == 1:
            self.last_delta_T = self.candidates[0]
            return self.last_delta_T
        losses = []
        for t in self.candidates:
            self._shift(t)
            losses.append(loss_at())
            self._shift(-t)
        finite = [v if math.isfinite(v) else math.inf for v in losses]
        worst = max(range(len(finite)), key=lambda i: finite[i])
        t = self.candidates[worst]
        self._shift(t)
        self.last_delta_T = t
        self.wins[t] += 1
        return t

    @torch.no_grad()
    def ascend(self, grads: Sequence[torch.Tensor | None]) -> float:
        """Add rho * g / ||g|| (skipped for a zero or non-finite gradient); caches shift + ascent; returns ||eps||."""
        grads = [g if g is not None else torch.zeros_like(p) for p, g in zip(self.params, grads)]
        norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
        rho = self.pset.rho * self.scale
        if rho == 0 or not math.isfinite(norm) or norm <= self.eps:
            ascent = [torch.zeros_like(p) for p in self.params]
        else:
            ascent = torch._foreach_mul(grads, rho / norm)
            torch._foreach_add_(self.params, ascent)
        shift = self.pset.drift * self.last_delta_T * self.scale
        self._cached = [a + shift for a in ascent]
        self.steps += 1
        self.refreshes += 1
        return rho if any(float(a.abs().max()) > 0 for a in ascent) else 0.0


class SpecSATStep(AdversarialStep):
    """spec-SAT's step: the set ramped in over the warm-up, then the adversarial step around it."""

    def __init__(self, adversary: SpecAdversary, ascent: str, optimizer: torch.optim.Optimizer,
                 total_steps: int) -> None:
        super().__init__(adversary, ascent, optimizer)
        self.total_steps = total_steps

    def prepare(self, index: int) -> None:
        self.adversary.ramp(index, self.total_steps)

    def records(self) -> dict:
        """The perturbation set it trained against (the model file records it)."""
        return {"perturbation_set": self.adversary.pset}

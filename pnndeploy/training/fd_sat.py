"""Finite-difference ascent for parameters without a gradient: a free-space setup's misalignment (FD-SAT).

SAT needs the direction in which the loss rises fastest.  For physical
parameters the trainer cannot differentiate (a free-space setup's rotation,
shift and magnification), it is estimated from loss evaluations only:

* coordinates are scaled by each parameter's tolerance (``scale``), so that one
  unit means as much for a degree of rotation as for a pixel of shift;
* probes come in blocks of d orthonormal directions of a random rotation (each
  direction uniform on the sphere, so ``E[d (u·g) u] = g``: unbiased), and each
  probe is a central difference ``(L(z + h u) − L(z − h u)) / 2h``, exact for a
  quadratic loss and O(h²) otherwise (the authors' notebooks used one-sided,
  unnormalised probes: biased by O(h) and with a step that grows with ‖g‖);
* the ascent is normalised: the adversarial state lies ``rho`` tolerance units
  away along ĝ = g / ‖g‖, whatever the loss's scale.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def fd_gradient(loss: Callable[[np.ndarray], float], phi: np.ndarray, scale: np.ndarray, probes: int,
                h: float, rng: np.random.Generator) -> np.ndarray:
    """Estimate of ∇L with respect to the scaled coordinates z = phi / scale, from 2·probes evaluations."""
    phi = np.asarray(phi, np.float64)
    scale = np.asarray(scale, np.float64)
    d = phi.size
    if probes < 1 or not h > 0 or not np.all(scale > 0):
        raise ValueError("need probes >= 1, h > 0 and every scale > 0")
    g = np.zeros(d)
    done = 0
    while done < probes:
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        q *= np.sign(np.diag(r))                        # a uniformly random rotation (Haar)
        for u in q.T[:probes - done]:
            step = h * scale * u
            g += d * (loss(phi + step) - loss(phi - step)) / (2.0 * h) * u
            done += 1
    return g / probes


def fd_ascent(loss: Callable[[np.ndarray], float], phi: np.ndarray, scale: np.ndarray, rho: float,
              probes: int, h: float, rng: np.random.Generator) -> np.ndarray:
    """The adversarial state: ``rho`` tolerance units from ``phi`` along the estimated ascent direction."""
    g = fd_gradient(loss, phi, scale, probes, h, rng)
    norm = float(np.linalg.norm(g))
    if norm == 0.0 or not np.isfinite(norm):            # flat, or a probe's loss was not finite: no ascent
        return np.asarray(phi, np.float64).copy()
    return np.asarray(phi, np.float64) + rho * np.asarray(scale, np.float64) * g / norm


class MisalignmentAdversary:
    """FD-SAT's state of a setup for one training step: where in the required box the loss is worst nearby.

    Per step: a state u drawn uniformly in the box ``centre +- tolerance`` (the misalignments a deployed
    setup may have), then :func:`fd_ascent` of ``rho`` tolerance units from u, clipped back into the box.
    The random draw covers the whole box (as noise-aware training would); the ascent moves each draw
    towards the box's worst side for the current masks, at a cost of ``2 * probes`` loss evaluations.
    """

    def __init__(self, centre: Sequence[float], tolerance: Sequence[float], rho: float, seed: int,
                 probes: int | None = None, h: float = 0.1) -> None:
        self.centre = np.asarray(centre, np.float64)
        self.tolerance = np.asarray(tolerance, np.float64)
        if self.centre.shape != self.tolerance.shape or not np.all(self.tolerance >= 0):
            raise ValueError("need one tolerance >= 0 per parameter")
        self.rho = float(rho)
        self.probes = probes if probes is not None else self.centre.size
        self.h = float(h)
        self.rng = np.random.default_rng(seed)
        self.evaluations = 0

    def state(self, loss: Callable[[np.ndarray], float]) -> np.ndarray:
        """The adversarial misalignment for the loss of this step (``loss(phi)`` at a misalignment phi)."""
        free = self.tolerance > 0
        u = self.centre + self.tolerance * self.rng.uniform(-1.0, 1.0, self.centre.size)
        if self.rho == 0 or not free.any():
            return u

        def counted(phi: np.ndarray) -> float:
            self.evaluations += 1
            return loss(phi)

        # the ascent runs in the coordinates with a tolerance only (a fixed parameter has scale 0)
        def sub(z: np.ndarray) -> float:
            phi = u.copy()
            phi[free] = z
            return counted(phi)

        moved = u.copy()
        moved[free] = fd_ascent(sub, u[free], self.tolerance[free], self.rho, self.probes, self.h, self.rng)
        return np.clip(moved, self.centre - self.tolerance, self.centre + self.tolerance)

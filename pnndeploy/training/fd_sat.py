"""Finite-difference ascent for parameters without a gradient (a setup's misalignment): groundwork of issue 14.

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

from typing import Callable

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
    if norm == 0.0:
        return np.asarray(phi, np.float64).copy()
    return np.asarray(phi, np.float64) + rho * np.asarray(scale, np.float64) * g / norm

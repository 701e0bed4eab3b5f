"""Microring-resonator (MRR) weight bank.

Each weight is one ring read out by balanced detection.  With the detuning x
(nm) between the laser line and the ring resonance, half-width gamma (nm) and
extinction a (dimensionless, 0 < a <= 1)::

    W(x) = 1 - 2a / (1 + (x/gamma)^2)

W = 1 - 2a on resonance (x = 0) and tends to +1 far from it; the slope is
steepest at |x| = gamma/sqrt(3).  The function is even in x, so a weight has
two controls (+x and -x); the sign matters once the chip drifts, because a
common thermal shift moves every ring the same way.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from pnndeploy.platforms.base import Platform


class MRRPlatform(Platform):
    """Lorentzian microring weight bank with heater-tuned detuning (nm)."""

    name = "mrr"
    control_units = "nm"
    offset_name = "resonance_offset"
    param_units = {"gamma": "nm", "a": "1"}
    nominal = {"gamma": 0.15, "a": 1.0}
    #: Detunings training may choose (about 17 half-widths).  Kept inside the chips'
    #: heater range (+-3 nm in the default process) so the heater has headroom
    #: left to cancel each ring's resonance offset.
    control_range = (-2.5, 2.5)
    #: Typical thermal shift of a resonance, nm/K (silicon rings: about 80 pm/K).
    nominal_drift = 0.080

    def transfer(self, control: Any, gamma: Any = 0.15, a: Any = 1.0) -> Any:
        u = control / gamma
        return 1.0 - 2.0 * a / (1.0 + u * u)

    def derivative(self, control: Any, gamma: Any = 0.15, a: Any = 1.0) -> Any:
        u = control / gamma
        return 4.0 * a * u / (gamma * (1.0 + u * u) ** 2)

    def inverse(self, weight: np.ndarray, sign: np.ndarray | float = 1.0, limit: float | None = None,
                gamma: Any = 0.15, a: Any = 1.0) -> tuple[np.ndarray, np.ndarray]:
        weight = np.asarray(weight, dtype=np.float64)
        gamma = np.asarray(gamma, dtype=np.float64)
        a = np.asarray(a, dtype=np.float64)
        lo, hi = self.control_range if limit is None else (-limit, limit)
        x_max = min(abs(lo), abs(hi))
        w_min = 1.0 - 2.0 * a                      # on resonance
        w_max = self.transfer(x_max, gamma, a) if np.isfinite(x_max) else np.float64(1.0)
        reachable = (weight >= w_min - 1e-12) & (weight <= w_max + 1e-12)
        w = np.clip(weight, w_min, w_max)
        # 1 + u^2 = 2a / (1 - W)  ->  u = sqrt(2a/(1-W) - 1)
        u2 = np.maximum(2.0 * a / np.maximum(1.0 - w, 1e-300) - 1.0, 0.0)
        x = gamma * np.sqrt(u2)
        s = np.where(np.asarray(sign) < 0, -1.0, 1.0)
        return np.clip(s * x, lo, hi), np.broadcast_to(reachable, x.shape).copy()

    def init_controls(self, shape: tuple[int, ...], generator: Any, bound: float = 0.9) -> Any:
        """Detunings whose nominal weights are uniform in [-bound, bound].

        Weights are mapped through the nominal inverse with a random sign, so
        training starts on both flanks of the Lorentzian.
        """
        import torch

        w = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        sign = torch.where(torch.rand(shape, generator=generator, dtype=torch.float64) < 0.5, -1.0, 1.0)
        g, a = self.nominal["gamma"], self.nominal["a"]
        x = g * torch.sqrt(torch.clamp(2 * a / (1 - w) - 1, min=0.0))
        return (sign * x).to(torch.float32)

    def sample_fabrication(self, spec: Mapping[str, Any], shape: tuple[int, int],
                           rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Rings of one chip: offset N(0, s_r), gamma and a within a few percent, drift N(k, s_k).

        ``spec`` is the ``ring`` section of process.yaml (all lengths in nm).
        """
        gamma = spec["gamma_nm"] * (1.0 + spec["gamma_rel_sigma"] * rng.standard_normal(shape))
        a = spec["a"] * (1.0 - np.abs(spec["a_rel_sigma"] * rng.standard_normal(shape)))
        offset = spec["resonance_offset_sigma_nm"] * rng.standard_normal(shape)
        drift = spec["drift_nm_per_K"] * (1.0 + spec["drift_rel_sigma"] * rng.standard_normal(shape))
        return {
            self.offset_name: offset,
            "gamma": np.maximum(gamma, 1e-3),
            "a": np.clip(a, 1e-3, 1.0),
            "drift_coefficient": drift,
        }


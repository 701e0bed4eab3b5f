"""Drift compensation at deployment: one common control bias per chip, re-fitted from a short reference measurement.

A temperature change moves every control device of a chip the same way
(``k * dT``, k within a few percent from device to device), so one common
bias ``b`` added to every setting cancels all but its spread.  The station
does not know dT: right after programming it records the chip's outputs on a
few reference inputs (no labels needed); later it measures them again and
picks the ``b`` whose outputs come closest (least squares) to the record.
The analogue of aihwkit's global drift compensation, with a control bias in
place of an output scale, because here the drift is in the controls.

The search is a coarse grid over the window followed by a finer one around
the best point, so it needs no gradient and works the same on a real chip
(each point is one measurement of the reference batch).  Measurements use
their own detector-noise draws (:data:`RECORD_SEED`, :data:`MEASURE_SEED`),
distinct from the evaluation's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pnndeploy.simulation.fleet import Conditions, SimulatedFleet

#: Reference inputs measured for a compensation (the first samples of the evaluation set, labels unused).
REFERENCE_SAMPLES = 32
#: Detector-noise draws of the record at programming time and of the later measurements.
RECORD_SEED, MEASURE_SEED = 0x7265, 0x6D65
#: Points of the coarse grid over the window, and of the fine grid around its best point.
COARSE_POINTS, FINE_POINTS = 41, 21


@dataclass(frozen=True)
class DriftCompensation:
    """How a chip's common bias is re-fitted: the reference batch and the search window."""

    window: float               # the bias is searched in [-window, +window], control units
    samples: int = REFERENCE_SAMPLES

    @classmethod
    def for_range(cls, drift: float, temperature_K: float) -> "DriftCompensation":
        """A window covering the drift of a temperature range with 50 % margin (at least 1 K's worth)."""
        return cls(window=1.5 * abs(drift) * max(abs(temperature_K), 1.0))

    def to_dict(self) -> dict:
        return {"window": self.window, "reference_samples": self.samples,
                "grid": [COARSE_POINTS, FINE_POINTS], "objective": "least squares to the outputs recorded at 0 K"}


def _common_shift(fleet: SimulatedFleet, bias: np.ndarray, base: np.ndarray | None) -> np.ndarray:
    """(chips, *device_shape) shift: each chip's bias on every control device, plus ``base`` (ageing)."""
    shape = fleet.platform.device_shape(fleet.array)
    shift = np.broadcast_to(np.asarray(bias, np.float64).reshape(-1, *([1] * len(shape))),
                            (len(fleet), *shape)).copy()
    return shift if base is None else shift + base


def fit_bias(fleet: SimulatedFleet, X_scaled: np.ndarray, conditions: Conditions,
             compensation: DriftCompensation) -> np.ndarray:
    """Per chip, the common bias (control units) that brings its reference outputs back to the record."""
    X_ref = np.asarray(X_scaled)[:compensation.samples]
    chips = slice(0, len(fleet))
    record = fleet.scores(X_ref, Conditions(eval_seed=RECORD_SEED), chips)

    def misfit(bias: np.ndarray) -> np.ndarray:
        shifted = Conditions(delta_T=conditions.delta_T, eval_seed=MEASURE_SEED,
                             control_shift=_common_shift(fleet, bias, conditions.control_shift))
        return ((fleet.scores(X_ref, shifted, chips) - record) ** 2).mean(axis=(1, 2))

    w = compensation.window
    coarse = np.linspace(-w, w, COARSE_POINTS)
    costs = np.stack([misfit(np.full(len(fleet), b)) for b in coarse])          # (points, chips)
    best = coarse[np.argmin(costs, axis=0)]
    step = coarse[1] - coarse[0] if COARSE_POINTS > 1 else w
    offsets = np.linspace(-step, step, FINE_POINTS)
    fine = np.stack([misfit(best + o) for o in offsets])
    return best + offsets[np.argmin(fine, axis=0)]


def compensated_accuracy(fleet: SimulatedFleet, X_scaled: np.ndarray, y: np.ndarray, conditions: Conditions,
                         compensation: DriftCompensation) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of every chip after re-fitting its common bias under ``conditions``; returns (accuracy, bias)."""
    bias = fit_bias(fleet, X_scaled, conditions, compensation)
    shifted = Conditions(delta_T=conditions.delta_T, eval_seed=conditions.eval_seed,
                         control_shift=_common_shift(fleet, bias, conditions.control_shift))
    return fleet.accuracy(X_scaled, y, shifted), bias

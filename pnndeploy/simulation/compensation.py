"""Drift compensation at deployment: what a deployment re-fits at run time from a short reference measurement.

A strategy (:class:`Compensation`) says what is re-fitted: nothing (``none``), one common control bias per chip
(``bias``, below), or that bias and then a gain and a bias per output (``gain-bias``, aihwkit's per-column drift
compensation in our setting: the outputs' affine drift that a common bias cannot reach).  Strategies are looked up
by name in :data:`COMPENSATIONS`; a new one is a class and one line there.

The common control bias:

A temperature change moves every control device of a chip the same way
(``k * dT``, k within a few percent from device to device), so one common
bias ``b`` added to every setting cancels all but its spread.  The station
does not know dT: right after programming it records the chip's outputs on a
few reference inputs (no labels needed); later it measures them again and
picks the ``b`` whose outputs come closest (least squares) to the record.
The analogue of aihwkit's global drift compensation, with a control bias in
place of an output scale, because here the drift is in the controls.

The search is a coarse grid over a window of 1.5 K's worth of nominal drift
(whatever the sweep), moved to the edge point and repeated while a chip's best
point lies on the window's edge (a larger drift, up to :data:`MAX_MOVES`
windows away), then a golden-section search in the grid cell around the best
point; all chips at once, each with its own bias.  It needs no gradient and
works the same on a real chip: each point is one measurement of the reference
batch, 13 + 14 in all when the drift is inside the first window.  Measurements use
their own detector-noise draws (:data:`RECORD_SEED`, :data:`MEASURE_SEED`),
distinct from the evaluation's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:         # the fleet (h5py, onnx) loads when a strategy runs, not when its name is looked up
    from pnndeploy.simulation.fleet import Conditions, SimulatedFleet

#: Reference inputs measured for a compensation (the first samples of the evaluation set, labels unused).
REFERENCE_SAMPLES = 32
#: Detector-noise draws of the record at programming time and of the later measurements.
RECORD_SEED, MEASURE_SEED = 0x7265, 0x6D65
#: Points of the coarse grid over the window, and golden-section steps in the cells around its best point.
COARSE_POINTS, GOLDEN_STEPS = 13, 14
#: How many times the window may move towards a chip whose best point lies on its edge.
MAX_MOVES = 8



def _conditions(**settings: Any) -> "Conditions":
    """The fleet's evaluation conditions (imported here: looking up a strategy's name must not load the fleet)."""
    from pnndeploy.simulation.fleet import Conditions

    return Conditions(**settings)


@dataclass(frozen=True)
class DriftCompensation:
    """How a chip's common bias is re-fitted: the reference batch and the search window."""

    window: float               # the first search covers [-window, +window], control units
    samples: int = REFERENCE_SAMPLES

    @classmethod
    def for_drift(cls, drift: float) -> "DriftCompensation":
        """The first window covers 1.5 K's worth of drift (``drift`` in control units per K); it moves if needed."""
        return cls(window=1.5 * abs(drift))

    def to_dict(self) -> dict:
        return {"window": self.window, "max_moves": MAX_MOVES, "reference_samples": self.samples,
                "coarse_points": COARSE_POINTS,
                "golden_steps": GOLDEN_STEPS, "objective": "least squares to the outputs recorded at 0 K"}


def _common_shift(fleet: SimulatedFleet, bias: np.ndarray, base: np.ndarray | None) -> np.ndarray:
    """(chips, *device_shape) shift: each chip's bias on every control device that responds, plus ``base``
    (ageing, which moves faulty devices too)."""
    shape = fleet.platform.device_shape(fleet.array)
    shift = np.broadcast_to(np.asarray(bias, np.float64).reshape(-1, *([1] * len(shape))),
                            (len(fleet), *shape)).copy()
    responds = getattr(fleet, "responds", None)      # (a chip on a station ignores the bias by itself)
    if responds is not None:                         # a bias is programmed: a faulty device ignores it
        shift *= responds
    return shift if base is None else shift + base


def reference_record(fleet: SimulatedFleet, X_scaled: np.ndarray, compensation: DriftCompensation) -> np.ndarray:
    """The chips' outputs on the reference inputs right after programming (0 K): what a re-fit aims back at."""
    return fleet.scores(np.asarray(X_scaled)[:compensation.samples], _conditions(eval_seed=RECORD_SEED),
                        slice(0, len(fleet)))


def fit_bias(fleet: SimulatedFleet, X_scaled: np.ndarray, conditions: Conditions,
             compensation: DriftCompensation, record: np.ndarray | None = None) -> np.ndarray:
    """Per chip, the common bias (control units) that brings its reference outputs back to the record.

    ``record`` is :func:`reference_record` (taken here when not given; one record serves every later re-fit).
    """
    X_ref = np.asarray(X_scaled)[:compensation.samples]
    chips = slice(0, len(fleet))
    if record is None:
        record = reference_record(fleet, X_scaled, compensation)

    def misfit(bias: np.ndarray) -> np.ndarray:
        shifted = _conditions(delta_T=conditions.delta_T, eval_seed=MEASURE_SEED,
                             control_shift=_common_shift(fleet, bias, conditions.control_shift))
        squared = (fleet.scores(X_ref, shifted, chips) - record) ** 2
        if np.isfinite(squared).all():
            return squared.mean(axis=(1, 2))
        # a chip behind a backend returned NaN for some outputs: compare the finite ones; none: never chosen
        finite = np.isfinite(squared)
        count = finite.sum(axis=(1, 2))
        total = np.where(finite, squared, 0.0).sum(axis=(1, 2))
        return np.where(count > 0, total / np.maximum(count, 1), np.inf)

    w = compensation.window
    offsets = np.linspace(-w, w, COARSE_POINTS)
    step = offsets[1] - offsets[0]
    chips_ = np.arange(len(fleet))
    centre = np.zeros(len(fleet))
    for _ in range(MAX_MOVES + 1):
        costs = np.stack([misfit(centre + o) for o in offsets])                  # (points, chips)
        at = np.argmin(costs, axis=0)
        best = centre + offsets[at]
        best_cost = costs[at, chips_]
        edge = (at == 0) | (at == COARSE_POINTS - 1)
        if not edge.any():
            break
        centre = np.where(edge, best, centre)       # move the window of the chips whose optimum is beyond it
    # golden-section search over [best - step, best + step], per chip (vectorised)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    lo, hi = best - step, best + step
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = misfit(a), misfit(b)
    for _ in range(GOLDEN_STEPS - 2):
        left = fa <= fb                       # the minimum is in [lo, b] where True, else in [a, hi]
        hi = np.where(left, b, hi)
        lo = np.where(left, lo, a)
        new_a, new_b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        probe = np.where(left, new_a, new_b)
        fp = misfit(probe)
        a, b, fa, fb = (np.where(left, new_a, b), np.where(left, a, new_b),
                        np.where(left, fp, fb), np.where(left, fa, fp))
    candidates = np.stack([best, a, b])
    values = np.stack([best_cost, fa, fb])
    return candidates[np.argmin(values, axis=0), np.arange(len(fleet))]


def compensated_accuracy(fleet: SimulatedFleet, X_scaled: np.ndarray, y: np.ndarray, conditions: Conditions,
                         compensation: DriftCompensation,
                         record: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of every chip after re-fitting its common bias under ``conditions``; returns (accuracy, bias)."""
    bias = fit_bias(fleet, X_scaled, conditions, compensation, record)
    shifted = _conditions(delta_T=conditions.delta_T, eval_seed=conditions.eval_seed,
                         control_shift=_common_shift(fleet, bias, conditions.control_shift))
    return fleet.accuracy(X_scaled, y, shifted), bias


# ------------------------------------------------------------------------------------------ strategies
class Compensation:
    """A drift-compensation strategy: what a deployment re-fits from the reference record at each measurement.

    ``accuracy`` returns each chip's accuracy under ``conditions`` after the re-fit, and what was fitted (arrays
    with a leading chip axis, for the audit document).  The default is no re-fit at all.
    """

    name = "none"
    #: What the strategy re-fits, for help texts.
    summary = "nothing: the chips run as programmed"
    #: The audit document's key of the temperature sweep judged with this strategy.
    sweep_key = "temperature_K"
    #: Whether spec-SAT trains for a deployment that cancels the common-mode drift.
    cancels_common_mode = False

    def accuracy(self, group: Any, X_scaled: np.ndarray, y: np.ndarray, conditions: Conditions,
                 compensation: DriftCompensation, record: np.ndarray | None) -> tuple[np.ndarray, dict[str, Any]]:
        return group.accuracy(X_scaled, y, conditions), {}


class BiasCompensation(Compensation):
    """One common control bias per chip (:func:`fit_bias`): cancels the common-mode thermal shift."""

    name = "bias"
    summary = "one common control bias per chip"
    sweep_key = "temperature_K_compensated"
    cancels_common_mode = True

    def accuracy(self, group: Any, X_scaled: np.ndarray, y: np.ndarray, conditions: Conditions,
                 compensation: DriftCompensation, record: np.ndarray | None) -> tuple[np.ndarray, dict[str, Any]]:
        accuracy, bias = compensated_accuracy(group, X_scaled, y, conditions, compensation, record)
        return accuracy, {"bias": bias}


class GainBiasCompensation(BiasCompensation):
    """The common control bias, then per output a gain and a bias re-fitted by least squares to the record.

    After the bias the outputs that moved with the drift no common shift can undo (a ring's width or depth
    changing with temperature, a mesh's couplers) are often an affine change per output; the station corrects
    it digitally, as aihwkit's per-column compensation does, from the same reference measurement.
    """

    name = "gain-bias"
    summary = "that bias, then a gain and a bias per output"
    sweep_key = "temperature_K_gain_bias"

    def accuracy(self, group: Any, X_scaled: np.ndarray, y: np.ndarray, conditions: Conditions,
                 compensation: DriftCompensation, record: np.ndarray | None) -> tuple[np.ndarray, dict[str, Any]]:
        X_ref = np.asarray(X_scaled)[:compensation.samples]
        if record is None:
            record = reference_record(group, X_scaled, compensation)
        bias = fit_bias(group, X_scaled, conditions, compensation, record)
        shift = _common_shift(group, bias, conditions.control_shift)
        measured = group.scores(X_ref, _conditions(delta_T=conditions.delta_T, eval_seed=MEASURE_SEED,
                                                  control_shift=shift), slice(0, len(group)))
        gain, offset = output_affine(measured, record)
        scores = group.scores(np.asarray(X_scaled), _conditions(delta_T=conditions.delta_T,
                                                               eval_seed=conditions.eval_seed, control_shift=shift),
                              slice(0, len(group)))
        adjusted = gain[:, :, None] * scores + offset[:, :, None]
        from pnndeploy.simulation.fleet import correct_fraction

        accuracy = correct_fraction(adjusted, np.asarray(y))
        return np.asarray(accuracy, np.float64), {"bias": bias, "output_gain": gain, "output_bias": offset}


def output_affine(measured: np.ndarray, record: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per chip and output, the gain g and bias b minimising sum over the reference inputs of (g m + b - r)^2.

    ``measured`` and ``record`` are (chips, outputs, samples).  An output that did not vary keeps g = 1 (only its
    mean is matched); non-finite measurements give g = 1, b = 0 (no correction).
    """
    m = np.asarray(measured, np.float64)
    r = np.asarray(record, np.float64)
    m_mean, r_mean = m.mean(axis=2), r.mean(axis=2)
    dm, dr = m - m_mean[..., None], r - r_mean[..., None]
    var = (dm * dm).sum(axis=2)
    cov = (dm * dr).sum(axis=2)
    flat = var <= 1e-12 * np.maximum(1.0, (m_mean * m_mean))
    gain = np.where(flat, 1.0, cov / np.where(flat, 1.0, var))
    offset = r_mean - gain * m_mean
    ok = np.isfinite(gain) & np.isfinite(offset)
    return np.where(ok, gain, 1.0), np.where(ok, offset, 0.0)


#: The strategies, by the name `--compensation` takes.
COMPENSATIONS: dict[str, Compensation] = {c.name: c for c in (Compensation(), BiasCompensation(),
                                                              GainBiasCompensation())}


def get_compensation(name: str) -> Compensation:
    """The strategy called ``name``; one clear line for an unknown one."""
    from pnndeploy.errors import ConfigError

    try:
        return COMPENSATIONS[name]
    except KeyError:
        raise ConfigError(f"--compensation {name!r} is unknown; use one of {', '.join(COMPENSATIONS)}") from None

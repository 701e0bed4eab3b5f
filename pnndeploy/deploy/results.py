"""What transfer and audit find, as typed results; ``to_json()`` writes the documents DESIGN.md fixes.

Report, demo and sweep read these objects; the command line prints their ``to_json()``.  Accuracies are
fractions in [0, 1]; a point a chip could not measure (a station's NaN) is None in JSON and left out of
the fleet's statistics.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


def _value(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


@dataclass
class Sweep:
    """One sweep of an audit: accuracy of every chip at every value of one perturbation axis."""

    values: list[float]
    names: list[str]
    accuracy: np.ndarray                  # (chips, values), NaN where a chip could not be measured
    extra: dict[str, Any] = field(default_factory=dict)    # units, label, draws, fitted biases, ...

    @classmethod
    def of(cls, values: Sequence[float], names: Sequence[str], accuracy: np.ndarray,
           extra: dict[str, Any] | None = None) -> "Sweep":
        return cls([float(v) for v in values], list(names), np.asarray(accuracy, np.float64), dict(extra or {}))

    @property
    def fleet_mean(self) -> list[float | None]:
        return [_value(v) for v in self._stat(np.mean, np.nanmean)]

    @property
    def fleet_min(self) -> list[float | None]:
        return [_value(v) for v in self._stat(np.min, np.nanmin)]

    def _stat(self, plain: Any, nan_aware: Any) -> np.ndarray:
        if not self.names:
            return np.empty(0)
        if np.isfinite(self.accuracy).all():
            return plain(self.accuracy, axis=0)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)      # a point no chip could measure: None
            return nan_aware(self.accuracy, axis=0)

    def device(self, name: str) -> np.ndarray:
        """One chip's accuracy along the sweep."""
        return self.accuracy[self.names.index(name)]

    def to_json(self) -> dict[str, Any]:
        return {"values": list(self.values),
                "devices": {n: [_value(a) for a in self.accuracy[i]] for i, n in enumerate(self.names)},
                "fleet_mean": self.fleet_mean, "fleet_min": self.fleet_min, **self.extra}


def tolerance_interval(values: list[float], accuracy: np.ndarray, threshold: float,
                       centre: float = 0.0) -> list[float] | None:
    """Widest [lo, hi] around ``centre`` on the grid with accuracy >= threshold everywhere inside; None if the
    centre fails."""
    values_arr = np.asarray(values)
    zero = int(np.argmin(np.abs(values_arr - centre)))
    if not accuracy[zero] >= threshold:          # NaN (not measurable) fails too
        return None
    lo = hi = zero
    while lo - 1 >= 0 and accuracy[lo - 1] >= threshold:
        lo -= 1
    while hi + 1 < len(values) and accuracy[hi + 1] >= threshold:
        hi += 1
    return [float(values_arr[lo]), float(values_arr[hi])]


def time_to_threshold(days: list[float], accuracy: np.ndarray, threshold: float) -> float | None:
    """Last day on the grid before the (median-over-draws) accuracy first drops below threshold.

    The same curve decides pass/fail and is plotted, so the three agree.
    None: never below within the horizon; 0.0: below already at the first day.
    """
    below = np.nonzero(np.asarray(accuracy) < threshold)[0]
    if below.size == 0:
        return None
    return 0.0 if below[0] == 0 else float(days[below[0] - 1])


@dataclass
class AuditResult:
    """An audit: every sweep, the tolerances, the time to threshold and the verdict (``to_json()``: `audit --json`)."""

    head: dict[str, Any]                 # model, model_sha256, method, dataset, samples, nominal_accuracy
    threshold: float
    threshold_source: str
    require: dict[str, float]            # per axis (document key): the requirement around its centre
    strategy: str                        # the drift compensation the verdict uses
    window: Any                          # the bias search (DriftCompensation)
    sweeps: dict[str, Sweep] = field(default_factory=dict)
    axes: dict[str, Any] = field(default_factory=dict)                   # sweep key -> its AxisSweep
    judged: dict[str, tuple[Any, str]] = field(default_factory=dict)     # axis name -> (AxisSweep, sweep key)
    failures: list[str] = field(default_factory=list)
    not_checked: dict[str, str] = field(default_factory=dict)
    invalid_samples: dict[str, int] = field(default_factory=dict)
    tolerance: dict[str, dict[str, list[float] | None]] = field(default_factory=dict)
    time_to_threshold_days: dict[str, float | None] = field(default_factory=dict)

    @classmethod
    def begin(cls, prepared: Any, nominal: float, threshold: float, source: str, sweeps: Sequence[Any],
              strategy: str, window: Any) -> "AuditResult":
        head = {"model": str(prepared.model.path), "model_sha256": prepared.model.sha256,
                "method": prepared.model.method, "dataset": prepared.data.name, "samples": int(prepared.data.y.size),
                "nominal_accuracy": nominal}
        return cls(head, threshold, source, {s.name: s.require for s in sweeps}, strategy, window)

    def add_sweep(self, axis_sweep: Any, key: str, sweep: Sweep, judged: bool) -> None:
        """Record a sweep under ``key``; the one ``judged`` for its axis decides the verdict."""
        self.sweeps[key] = sweep
        self.axes[key] = axis_sweep
        if judged:
            self.judged[axis_sweep.name] = (axis_sweep, key)

    @property
    def passed(self) -> bool:
        return not self.failures

    def finish(self, names: Sequence[str], boards: dict[str, Any]) -> None:
        """Tolerances, time to threshold and the verdict, once every sweep is in (``boards``: the chips behind a
        backend, whose invalid samples are reported)."""
        self.invalid_samples = {n: board.max_invalid for n, board in boards.items()}
        for key, sweep in self.sweeps.items():
            axis = self.axes[key].axis
            if axis.kind != "ageing":
                self.tolerance[key] = {n: tolerance_interval(sweep.values, sweep.device(n), self.threshold,
                                                             axis.centre) for n in sweep.names}
        ageing = next(((a, k) for a, k in self.judged.values() if a.axis.kind == "ageing"), None)
        if ageing is not None:
            sweep = self.sweeps[ageing[1]]
            self.time_to_threshold_days = {n: time_to_threshold(sweep.values, sweep.device(n), self.threshold)
                                           for n in sweep.names}
        for n in names:
            for axis_sweep, key in self.judged.values():
                self.failures += self._failures(n, axis_sweep, self.sweeps[key])

    def _failures(self, name: str, axis_sweep: Any, sweep: Sweep) -> list[str]:
        if name not in sweep.names:
            return []
        axis, acc = axis_sweep.axis, sweep.device(name)
        inside = axis_sweep.within(sweep.values)
        t = f"{self.threshold:.3f}"
        if axis.kind == "ageing":
            return [f"{name}: below {t} within {axis_sweep.require:g} days"] if np.any(acc[inside] < self.threshold) \
                else []
        if np.all(acc[inside] >= self.threshold):            # NaN (nothing measurable) fails too
            return []
        if axis.kind == "temperature":
            note = {"none": "", "bias": " (drift-compensated)"}.get(self.strategy, f" (drift-compensated, {self.strategy})")
            return [f"{name}: below {t} within ±{axis_sweep.require:g} K{note}"]
        if axis.centre == 0:
            return [f"{name}: below {t} within ±{axis_sweep.require:g} {axis.units} of {axis.label}"]
        return [f"{name}: below {t} within {axis.label} {axis.centre:g} ± {axis_sweep.require:g}"]

    @property
    def recommended_recalibration_days(self) -> float | None:
        """The fleet's smallest time to threshold (None: every chip lasts beyond the horizon)."""
        finite = [v for v in self.time_to_threshold_days.values() if v is not None]
        return min(finite) if finite else None

    @property
    def horizon_days(self) -> float | None:
        ageing = next((k for a, k in self.judged.values() if a.axis.kind == "ageing"), None)
        return float(self.sweeps[ageing].values[-1]) if ageing is not None else None

    def to_json(self) -> dict[str, Any]:
        """The `audit --json` document (DESIGN.md's keys, in their order)."""
        return {
            **self.head,
            "threshold": float(self.threshold),
            "threshold_source": self.threshold_source,
            "require": dict(self.require),
            "passed": self.passed,
            "failures": list(self.failures),
            "drift_compensation": {**self.window.to_dict(), "used_for_verdict": self.strategy != "none",
                                   "strategy": self.strategy},
            "sweeps": {k: s.to_json() for k, s in self.sweeps.items()},
            # what could not be checked on some chip, and why (chips behind a backend cannot be aged)
            "not_checked": dict(self.not_checked),
            # chips behind a backend: the most samples of one measurement pass whose outputs were NaN or inf
            "invalid_samples": dict(self.invalid_samples),
            "tolerance": dict(self.tolerance),
            "time_to_threshold_days": dict(self.time_to_threshold_days),
            "recommended_recalibration_days": self.recommended_recalibration_days,
            "horizon_days": self.horizon_days,
        }


@dataclass
class FleetSummary:
    """A fleet's statistics: mean, spread, worst chip and yield (fraction of chips at or above ``threshold``)."""

    count: int
    mean: float
    std: float
    min: float
    p5: float
    median: float
    worst_device: str
    threshold: float
    yield_: float

    @classmethod
    def of(cls, devices: Sequence[str], accuracies: Sequence[float], threshold: float) -> "FleetSummary":
        acc = np.asarray(accuracies, dtype=np.float64)
        return cls(count=int(acc.size), mean=float(acc.mean()), std=float(acc.std(ddof=1)) if acc.size > 1 else 0.0,
                   min=float(acc.min()), p5=float(np.percentile(acc, 5)), median=float(np.median(acc)),
                   worst_device=devices[int(np.argmin(acc))], threshold=float(threshold),
                   yield_=float((acc >= threshold).mean()))

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "std": self.std, "min": self.min, "p5": self.p5,
                "median": self.median, "worst_device": self.worst_device, "threshold": self.threshold,
                "yield": self.yield_}


def clipping_document(deployment: Any) -> dict[str, Any] | None:
    """A deployment's clipped devices by cause, the chip's sum and each layer's (``transfer --json``'s
    ``clipping``); None when a layer does not know its causes (a deployment file written before they were)."""
    total = deployment.clipping
    if total is None:
        return None
    return {**total.to_json(), "layers": [{"layer": layer.name, **layer.clipping.to_json()}
                                          for layer in deployment.layers]}


@dataclass
class DeviceResult:
    """One chip of a transfer: its accuracy (None when it was only mapped: a real chip without a backend)."""

    device: str
    simulated: bool
    evaluated_by: str | None            # "simulator", "backend:KIND" or None
    accuracy: float | None
    ci95: list[float] | None
    delta_vs_nominal: float | None
    invalid_samples: int                # samples whose measured outputs held NaN or inf (left out)
    clipped_weights: int
    mapping_residual: list[float]       # per layer: the mapping's own error before drift and noise
    deployment: str | None
    calibration_measured_at: str
    #: ``clipped_weights`` by cause (reach, range, faulty) out of the chip's devices, with a "layers" list of the
    #: same per layer (:meth:`~pnndeploy.platforms.base.Clipping.to_json`); None when the causes are unknown
    clipping: dict[str, Any] | None = None
    #: The chip's faulty devices (:func:`fault_document`); None when its calibration flags none.
    faults: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def fault_document(devices: int, faulty: int, compensated: bool, accuracy: float | None,
                   if_working: float | None) -> dict[str, Any]:
    """A chip's faulty devices for `transfer --json`: how many of its devices the calibration flags, whether the
    mapping made up for them (a ring bank: with the model's input moments; a mesh: by its fit), and (simulated
    chips) its accuracy had they worked, the same chip otherwise, and the cost (accuracy - that; negative = lost)."""
    return {"devices": int(faulty), "fraction": faulty / devices if devices else 0.0, "compensated": compensated,
            "accuracy_if_working": if_working,
            "cost": None if accuracy is None or if_working is None else accuracy - if_working}


@dataclass
class TransferReport:
    """A model on chips (``to_json()``: the `transfer --json` document)."""

    model: str
    model_sha256: str
    method: str
    dataset: str
    samples: int
    nominal_accuracy: float
    temperature_delta_K: float
    devices: list[DeviceResult]
    fleet: FleetSummary | None           # over the evaluated chips; None when every chip is real

    @property
    def not_evaluated(self) -> list[str]:
        return [d.device for d in self.devices if d.accuracy is None]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "model_sha256": self.model_sha256, "method": self.method,
                "dataset": self.dataset, "samples": self.samples, "nominal_accuracy": self.nominal_accuracy,
                "temperature_delta_K": self.temperature_delta_K, "devices": [d.to_json() for d in self.devices],
                "fleet": self.fleet.to_json() if self.fleet is not None else None,
                "not_evaluated": self.not_evaluated}

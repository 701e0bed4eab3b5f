"""Drift robustness: accuracy versus temperature and versus days since calibration, per chip and fleet.

* Temperature: every control device (a ring's resonance, a phase shifter)
  shifts by its own ``k * dT``.  The tolerance of a chip is the widest interval
  around 0 K inside which its accuracy stays at or above the threshold.
* Misalignment (platforms with ``perturbation_axes``, the free-space setup):
  each axis (rotation, shift along x, along y, magnification) is swept on its own,
  moving every setup away from its calibrated state by the same amount, with its
  own units, tolerance interval around the unperturbed value and requirement.
* Ageing: each control device follows a random walk at the profile's ageing
  rate (control units/sqrt(day)), drawn from a stream per device and draw.  Accuracy is
  the median over draws; the time to threshold is the last day on the grid
  before that median curve first falls below the threshold, and the
  recommended recalibration interval is the fleet's smallest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from pnndeploy.deploy.compensation import DriftCompensation, compensated_accuracy, reference_record
from pnndeploy.deploy.transfer import PreparedFleet
from pnndeploy.errors import ConfigError
from pnndeploy.simulation.fleet import Conditions
from pnndeploy.simulation.streams import device_rng


@dataclass(frozen=True)
class SweepRange:
    """LO:HI:STEP with HI included."""

    lo: float
    hi: float
    step: float

    @classmethod
    def parse(cls, text: str, flag: str) -> "SweepRange":
        parts = text.split(":")
        try:
            lo, hi, step = (float(p) for p in parts)
        except ValueError:
            raise ConfigError(f"{flag} {text!r}: expected LO:HI:STEP with three numbers, e.g. -2:2:0.25") from None
        if not all(math.isfinite(v) for v in (lo, hi, step)) or step <= 0 or hi < lo:
            raise ConfigError(f"{flag} {text!r}: need finite LO <= HI and STEP > 0, e.g. -2:2:0.25")
        if (hi - lo) / step > 10000:
            raise ConfigError(f"{flag} {text!r}: more than 10000 points; use a larger STEP")
        return cls(lo, hi, step)

    def values(self, extra: tuple[float, ...] = ()) -> list[float]:
        """The grid (HI included, rounding-safe) plus ``extra`` points, sorted and unique."""
        n = int(math.floor((self.hi - self.lo) / self.step + 1e-9))
        grid = [round(self.lo + i * self.step, 10) for i in range(n + 1)]
        if not math.isclose(grid[-1], self.hi, abs_tol=1e-9):
            grid.append(self.hi)
        return sorted(set(grid) | {round(v, 10) for v in extra})


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


#: Tag of the ageing-walk streams (keeps them apart from fabrication and detector noise).
AGEING_STREAM = 0x61676531


def ageing_shifts(prepared: PreparedFleet, days: list[float], draw: int, seed: int = 0) -> list[np.ndarray]:
    """Control shifts (chips, *device shape) at each day: a random walk per device, stream per chip and draw.

    The walk is drawn in one-day steps up to the last requested day and read
    off (linearly between whole days), so a chip's day-30 shift is the same
    whatever other days the sweep asks for.
    """
    fleet = prepared.fleet
    if fleet is None:
        raise ConfigError("an ageing sweep needs simulated chips (a real chip cannot be aged on demand)")
    shape = fleet.platform.device_shape(fleet.array)
    horizon = int(math.ceil(max(days))) if days else 0
    by_id = {p.device_id: p for p in prepared.profiles}
    out = [np.zeros((len(fleet), *shape)) for _ in days]
    for d, profile in enumerate(by_id[name] for name in fleet.device_ids):
        rng = device_rng(profile.device_id, seed, draw, AGEING_STREAM)
        steps = profile.environment.ageing_rate * rng.standard_normal((horizon, *shape))
        walk = np.concatenate([np.zeros((1, *shape)), np.cumsum(steps, axis=0)])
        for k, day in enumerate(days):
            lo = int(math.floor(day))
            frac = day - lo
            out[k][d] = walk[lo] if frac == 0 else (1 - frac) * walk[lo] + frac * walk[lo + 1]
    return out


@dataclass(frozen=True)
class AxisSweep:
    """One misalignment axis of an audit: its grid and requirement (centre +- require)."""

    axis: Any               # the platform's PerturbationAxis (name, label, units, centre)
    values: SweepRange
    require: float

    @property
    def name(self) -> str:
        return self.axis.name

    def points(self) -> list[float]:
        """The grid, with the unperturbed value and the requirement's ends on it."""
        c = self.axis.centre
        return self.values.values(extra=(c, c - self.require, c + self.require))


def axis_sweeps(platform: Any, ranges: Mapping[str, str | None], requires: Mapping[str, float | None],
                flags: Mapping[str, str]) -> list[AxisSweep]:
    """The platform's perturbation axes with the grids and requirements given (the axis's defaults otherwise).

    ``ranges`` / ``requires`` are keyed by axis name, ``flags`` names the option of each for errors.  A value
    given for a platform without that axis is refused: it would silently check nothing.
    """
    known = {a.name: a for a in platform.perturbation_axes}
    for table, prefix in ((ranges, ""), (requires, "require-")):
        for name, value in table.items():
            if value is not None and name not in known:
                raise ConfigError(f"{flags.get(prefix + name, name)} sweeps a free-space setup's misalignment; "
                                  f"{platform.name} chips have none; drop it")
    out = []
    for axis in platform.perturbation_axes:
        flag, require_flag = flags.get(axis.name, axis.name), flags.get("require-" + axis.name, axis.name)
        text = ranges.get(axis.name)
        grid = SweepRange.parse(axis.sweep if text is None else text, flag)
        require = requires.get(axis.name)
        require = axis.require if require is None else require
        if not math.isfinite(require) or require < 0:
            raise ConfigError(f"{require_flag} {require}: a requirement is a finite number of {axis.units}, "
                              f"0 or more, around {axis.centre:g}")
        if axis.name == "scale" and grid.lo <= 0:
            raise ConfigError(f"{flag} {grid.lo:g}:{grid.hi:g}:{grid.step:g}: a magnification must be > 0; "
                              "sweep e.g. 0.8:1.2:0.025")
        if axis.name == "scale" and require >= axis.centre:
            raise ConfigError(f"{require_flag} {require:g}: a magnification of 1 ± {require:g} reaches 0; "
                              "require less than 1 (0.1 is x0.9 to x1.1)")
        out.append(AxisSweep(axis, grid, float(require)))
    return out


def audit_passes(temperatures: SweepRange, days: SweepRange, require_temperature: float, require_days: float,
                 draws: int, axes: Sequence[AxisSweep] = ()) -> int:
    """Evaluation passes of an audit (its progress bar's total)."""
    return len(temperatures.values((0.0, -require_temperature, require_temperature))) \
        + draws * len(days.values((0.0, require_days))) + sum(len(a.points()) for a in axes)


def run_audit(prepared: PreparedFleet, temperatures: SweepRange, days: SweepRange,
              threshold: float | None = None, require_temperature: float = 1.0, require_days: float = 30.0,
              draws: int = 5, progress: Callable[[int], None] | None = None,
              drift_compensation: bool | None = None, axes: Sequence[AxisSweep] | None = None) -> dict:
    """The `audit --json` document: sweeps, tolerances, time to threshold, pass/fail.

    The temperature sweep is reported twice: as programmed, and with drift compensation (each chip's
    common bias re-fitted at every temperature, :mod:`~pnndeploy.deploy.compensation`).  The verdict
    uses the compensated sweep when ``drift_compensation`` (the deployment re-fits the bias), else
    the programmed one; None: what the model was trained for (spec-sat's ``drift_compensation``).
    ``axes``: the misalignment sweeps of a platform that has them (None: each axis's defaults).
    """
    if days.lo < 0:
        raise ConfigError(f"--days starts at {days.lo}: days since calibration cannot be negative")
    if not (math.isfinite(require_temperature) and math.isfinite(require_days)) \
            or require_temperature < 0 or require_days < 0:
        raise ConfigError(f"--require-temperature ({require_temperature}) and --require-days ({require_days}) "
                          "must be finite numbers, 0 or more")
    if draws < 1:
        raise ConfigError("--draws must be at least 1")
    prepared.require_measurable("an audit")
    for name, board in prepared.hardware.items():
        if not board.has_temperature:
            raise ConfigError(f"{name}: its station has no temperature controller, and an audit sweeps the chip's "
                              "temperature; audit it on a station with a TEC, or use `pnndeploy transfer` for it")
    groups = prepared.groups
    platform = groups[0].platform
    if drift_compensation is None:
        drift_compensation = model_assumes_compensation(prepared.model.metadata)
    nominal = prepared.nominal_accuracy()
    threshold_source = "given"
    if threshold is None:
        threshold = max(0.0, nominal - 0.05)
        threshold_source = "nominal accuracy - 0.05"
    X, y = prepared.data.X, prepared.data.y
    tick = progress or (lambda n: None)
    axis_failures: dict[str, list[str]] = {}

    # rows in group order (the simulated fleet, then each chip behind a backend), reported by name
    order = [name for group in groups for name in group.device_ids]
    t_values = temperatures.values(extra=(0.0, -require_temperature, require_temperature))
    t_acc = np.empty((len(order), len(t_values)))
    compensation = DriftCompensation.for_drift(platform.nominal_drift)
    records = [reference_record(group, X, compensation) for group in groups]   # taken once, after programming
    t_comp = np.empty_like(t_acc)
    t_bias = np.empty_like(t_acc)
    for k, t in enumerate(t_values):
        start = 0
        for group, record in zip(groups, records):
            rows = slice(start, start + len(group))
            t_acc[rows, k] = group.accuracy(X, y, Conditions(delta_T=t))
            t_comp[rows, k], t_bias[rows, k] = compensated_accuracy(group, X, y, Conditions(delta_T=t),
                                                                    compensation, record)
            start = rows.stop
        tick(1)
    for board in prepared.hardware.values():
        board.restore()                      # each station back at its calibration temperature, as programmed

    # ageing: the simulated chips only (a real chip cannot be aged on demand)
    fleet = prepared.fleet
    aged = fleet.device_ids if fleet is not None else []
    d_values = days.values(extra=(0.0, require_days))
    per_draw = np.empty((draws, len(aged), len(d_values)))
    for draw in range(draws):
        shifts = ageing_shifts(prepared, d_values, draw) if fleet is not None else [None] * len(d_values)
        for k, shift in enumerate(shifts):
            # the same detector-noise draw as the temperature sweep: only the ageing walk varies,
            # so day 0 and 0 K are the same measurement
            if fleet is not None:
                per_draw[draw, :, k] = fleet.accuracy(X, y, Conditions(control_shift=shift))
            tick(1)
    d_acc = np.median(per_draw, axis=0)
    not_checked = {n: f"ageing: a real chip cannot be aged on demand; audit it again {require_days:g} days "
                      "after its calibration" for n in prepared.hardware}

    # misalignment: each axis alone, every simulated setup moved from its calibrated state by the same amount
    if axes is None:
        axes = axis_sweeps(platform, {}, {}, {})
    axis_docs, axis_tolerance = {}, {}
    for sweep in axes:
        axis, values = sweep.axis, sweep.points()
        acc = np.empty((len(aged), len(values)))
        for k, v in enumerate(values):
            if fleet is not None:
                acc[:, k] = fleet.accuracy(X, y, Conditions(perturbation={sweep.name: float(v)}))
            tick(1)
        axis_docs[sweep.name] = {**_sweep_doc(values, aged, acc), "units": axis.units, "label": axis.label,
                                 "centre": axis.centre, "require": sweep.require}
        axis_tolerance[sweep.name] = {n: tolerance_interval(values, acc[i], threshold, axis.centre)
                                      for i, n in enumerate(aged)}
        inside = np.abs(np.asarray(values) - axis.centre) <= sweep.require + 1e-9
        for i, n in enumerate(aged):
            if np.any(~(acc[i, inside] >= threshold)):
                axis_failures.setdefault(n, []).append(f"{n}: below {threshold:.3f} within ±{sweep.require:g} {axis.units} of "
                                     f"{axis.label}" if axis.centre == 0 else
                                     f"{n}: below {threshold:.3f} within {axis.label} {axis.centre:g} ± "
                                     f"{sweep.require:g}")
    if axes:
        for n in prepared.hardware:
            not_checked[n] += "; misalignment: a setup behind a backend cannot be misaligned on demand"

    row = {n: i for i, n in enumerate(order)}
    aged_row = {n: i for i, n in enumerate(aged)}
    names = [p.device_id for p in prepared.profiles]
    t_acc, t_comp, t_bias = (a[[row[n] for n in names]] for a in (t_acc, t_comp, t_bias))
    t_verdict = t_comp if drift_compensation else t_acc
    tolerance = {n: tolerance_interval(t_values, t_acc[i], threshold) for i, n in enumerate(names)}
    tolerance_comp = {n: tolerance_interval(t_values, t_comp[i], threshold) for i, n in enumerate(names)}
    time_to = {n: _time_to_threshold(d_values, d_acc[i], threshold) for i, n in enumerate(aged)}
    finite = [v for v in time_to.values() if v is not None]
    recommended = min(finite) if finite else None   # None: every chip lasts beyond the horizon

    t_mask = np.abs(np.asarray(t_values)) <= require_temperature + 1e-9
    d_mask = np.asarray(d_values) <= require_days + 1e-9
    failures = []
    for i, n in enumerate(names):
        if np.any(~(t_verdict[i, t_mask] >= threshold)):      # NaN (nothing measurable) fails too
            failures.append(f"{n}: below {threshold:.3f} within ±{require_temperature:g} K"
                            + (" (drift-compensated)" if drift_compensation else ""))
        if n in aged_row and np.any(d_acc[aged_row[n], d_mask] < threshold):
            failures.append(f"{n}: below {threshold:.3f} within {require_days:g} days")
        failures.extend(axis_failures.get(n, []))
    return {
        "model": str(prepared.model.path),
        "model_sha256": prepared.model.sha256,
        "method": prepared.model.method,
        "dataset": prepared.data.name,
        "samples": int(y.size),
        "nominal_accuracy": nominal,
        "threshold": float(threshold),
        "threshold_source": threshold_source,
        "require": {"temperature_K": require_temperature, "days": require_days,
                    **{a.name: a.require for a in axes}},
        "passed": not failures,
        "failures": failures,
        "drift_compensation": {**compensation.to_dict(), "used_for_verdict": drift_compensation},
        "sweeps": {
            "temperature_K": _sweep_doc(t_values, names, t_acc),
            "temperature_K_compensated": {
                **_sweep_doc(t_values, names, t_comp),
                "bias": {n: [float(b) for b in t_bias[i]] for i, n in enumerate(names)},
                "bias_units": platform.control_units},
            "days": {**_sweep_doc(d_values, aged, d_acc), "draws": draws, "statistic": "median over draws"},
            **axis_docs,
        },
        # what could not be checked on some chip, and why (chips behind a backend cannot be aged)
        "not_checked": not_checked,
        # chips behind a backend: the most samples of one measurement pass whose outputs were NaN or inf
        "invalid_samples": {n: board.max_invalid for n, board in prepared.hardware.items()},
        "tolerance": {"temperature_K": tolerance, "temperature_K_compensated": tolerance_comp, **axis_tolerance},
        "time_to_threshold_days": time_to,
        "recommended_recalibration_days": recommended,
        "horizon_days": float(d_values[-1]),
    }


def model_assumes_compensation(metadata: dict) -> bool:
    """True when the model was trained for a deployment that re-fits a common bias (spec-sat's setting)."""
    config = metadata.get("config")
    return isinstance(config, dict) and config.get("drift_compensation") is True


def _sweep_doc(values: list[float], names: list[str], acc: np.ndarray) -> dict:
    """One sweep as JSON; a point a chip could not measure (NaN) is null and left out of the fleet's statistics."""
    if not names:
        return {"values": [float(v) for v in values], "devices": {}, "fleet_mean": [], "fleet_min": []}
    finite = np.isfinite(acc)
    if finite.all():
        mean, low = acc.mean(axis=0), acc.min(axis=0)
    else:
        import warnings

        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)      # a point no chip could measure: None below
            mean, low = np.nanmean(acc, axis=0), np.nanmin(acc, axis=0)

    def value(v: float) -> float | None:
        return float(v) if np.isfinite(v) else None

    return {"values": [float(v) for v in values],
            "devices": {n: [value(a) for a in acc[i]] for i, n in enumerate(names)},
            "fleet_mean": [value(v) for v in mean],
            "fleet_min": [value(v) for v in low]}


def _time_to_threshold(days: list[float], acc: np.ndarray, threshold: float) -> float | None:
    """Last day on the grid before the (median-over-draws) accuracy first drops below threshold.

    The same curve decides pass/fail and is plotted, so the three agree.
    None: never below within the horizon; 0.0: below already at the first day.
    """
    below = np.nonzero(np.asarray(acc) < threshold)[0]
    if below.size == 0:
        return None
    return 0.0 if below[0] == 0 else float(days[below[0] - 1])

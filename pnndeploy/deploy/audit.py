"""Drift robustness: one sweep per perturbation axis of the platform, and a drift-compensation strategy.

The sweeps are composed from the axes the platform declares (:mod:`pnndeploy.platforms.axes`), by kind:

* temperature: every control device (a ring's resonance, a phase shifter) shifts by its own ``k * dT``,
  judged as programmed and after each drift-compensation strategy asked for
  (:mod:`~pnndeploy.simulation.compensation`: ``bias`` always, and the verdict's).  The tolerance of a chip
  is the widest interval around 0 K inside which its accuracy stays at or above the threshold.
* ageing: each control device follows a random walk at the profile's ageing rate (control units/sqrt(day)),
  drawn from a stream per device and draw.  Accuracy is the median over draws; the time to threshold is
  the last day on the grid before that median curve first falls below the threshold, and the recommended
  recalibration interval is the fleet's smallest.
* setup (a free-space setup's misalignment): each axis swept on its own, moving every setup away from its
  calibrated state by the same amount, with its own units, tolerance interval and requirement.

:func:`run_audit` returns an :class:`~pnndeploy.deploy.results.AuditResult` whose ``to_json()`` is the
`audit --json` document.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from pnndeploy.simulation.compensation import COMPENSATIONS, DriftCompensation, get_compensation, reference_record
from pnndeploy.deploy.results import AuditResult, Sweep, tolerance_interval  # noqa: F401 - re-exported
from pnndeploy.deploy.transfer import PreparedFleet, accuracy_if_working
from pnndeploy.errors import ConfigError
from pnndeploy.platforms.faults import faulty_mask
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
    """One perturbation axis of an audit: its grid and requirement (centre +- require)."""

    axis: Any               # the platform's PerturbationAxis (name, label, units, centre, kind)
    values: SweepRange
    require: float

    @property
    def name(self) -> str:
        return self.axis.name

    def points(self) -> list[float]:
        """The grid, with the unperturbed value and the requirement's ends on it (ageing: its end only)."""
        c = self.axis.centre
        extra = (c, c + self.require) if self.axis.kind == "ageing" else (c, c - self.require, c + self.require)
        return self.values.values(extra=extra)

    def within(self, values: Sequence[float]) -> np.ndarray:
        """Which points lie inside the requirement."""
        offset = np.asarray(values) - self.axis.centre
        return offset <= self.require + 1e-9 if self.axis.kind == "ageing" else np.abs(offset) <= self.require + 1e-9


def axis_sweeps(platform: Any, ranges: Mapping[str, str | None], requires: Mapping[str, float | None],
                flags: Mapping[str, str] | None = None) -> list[AxisSweep]:
    """The platform's perturbation axes (:attr:`Platform.axes`) with the grids and requirements given, by option
    stem (``axis.flag``: "temperature", "shift", ...), each axis's defaults otherwise.

    A value given for a stem the platform does not have is refused: it would silently check nothing.  ``flags``
    names an option for errors (default ``--STEM`` and ``--require-STEM``).
    """
    flags = flags or {}
    stems = {axis.flag or axis.name for axis in platform.axes}
    for table, prefix in ((ranges, ""), (requires, "require-")):
        for stem, value in table.items():
            if value is not None and stem not in stems:
                raise ConfigError(f"{flags.get(prefix + stem, f'--{prefix}{stem}')} sweeps a setup's misalignment; "
                                  f"{platform.name} chips have none; drop it")
    out = []
    for axis in platform.axes:
        stem = axis.flag or axis.name
        flag, require_flag = flags.get(stem, f"--{stem}"), flags.get("require-" + stem, f"--require-{stem}")
        text = ranges.get(stem)
        grid = SweepRange.parse(axis.sweep if text is None else text, flag)
        require = requires.get(stem)
        require = axis.require if require is None else require
        if not math.isfinite(require) or require < 0:
            raise ConfigError(f"{require_flag} {require}: a requirement is a finite number of {axis.units}, "
                              f"0 or more, around {axis.centre:g}")
        if axis.compose == "multiply" and grid.lo <= 0:
            raise ConfigError(f"{flag} {grid.lo:g}:{grid.hi:g}:{grid.step:g}: a {axis.label} must be > 0; "
                              f"sweep e.g. {axis.sweep}")
        if axis.compose == "multiply" and require >= axis.centre:
            raise ConfigError(f"{require_flag} {require:g}: a {axis.label} of {axis.centre:g} ± {require:g} reaches 0; "
                              f"require less than {axis.centre:g} ({axis.require:g} is the default)")
        if axis.kind == "ageing" and grid.lo < 0:
            raise ConfigError(f"{flag} starts at {grid.lo}: days since calibration cannot be negative")
        out.append(AxisSweep(axis, grid, float(require)))
    return out


def audit_passes(sweeps: Sequence[AxisSweep], draws: int) -> int:
    """Evaluation passes of an audit (its progress bar's total)."""
    return sum(len(s.points()) * (draws if s.axis.kind == "ageing" else 1) for s in sweeps)


def audit_sweeps(platform: Any, temperatures: SweepRange, days: SweepRange, require_temperature: float,
                 require_days: float, axes: Sequence[AxisSweep] | None = None) -> list[AxisSweep]:
    """Every sweep of an audit from the classic arguments: temperature and ageing given, setup axes ``axes``
    (None: each setup axis's defaults)."""
    if not (math.isfinite(require_temperature) and math.isfinite(require_days)) \
            or require_temperature < 0 or require_days < 0:
        raise ConfigError(f"--require-temperature ({require_temperature}) and --require-days ({require_days}) "
                          "must be finite numbers, 0 or more")
    if days.lo < 0:
        raise ConfigError(f"--days starts at {days.lo}: days since calibration cannot be negative")
    given = {"temperature": (temperatures, require_temperature), "ageing": (days, require_days)}
    setup = list(axes) if axes is not None else [s for s in axis_sweeps(platform, {}, {}) if s.axis.kind == "setup"]
    return [AxisSweep(a, *given[a.kind]) for a in platform.axes if a.kind in given] + setup


def run_audit(prepared: PreparedFleet, temperatures: SweepRange, days: SweepRange,
              threshold: float | None = None, require_temperature: float = 1.0, require_days: float = 30.0,
              draws: int = 5, progress: Callable[[int], None] | None = None,
              drift_compensation: bool | None = None, axes: Sequence[AxisSweep] | None = None,
              compensation: str | None = None, compare: Sequence[str] = ()) -> AuditResult:
    """Audit a prepared fleet: the temperature and ageing sweeps given and the platform's setup axes (``axes``,
    None: their defaults), judged against ``threshold`` (None: nominal accuracy - 0.05).

    The temperature sweep is reported as programmed, with the ``bias`` compensation, with the verdict's strategy
    and with every strategy in ``compare``; the verdict uses ``compensation`` (a name of
    :data:`~pnndeploy.simulation.compensation.COMPENSATIONS`), else ``drift_compensation`` (True: bias, False: none),
    else what the model was trained for.
    """
    if draws < 1:
        raise ConfigError("--draws must be at least 1")
    sweeps = audit_sweeps(prepared.groups[0].platform if prepared.groups else None, temperatures, days,
                          require_temperature, require_days, axes) if prepared.groups else []
    return audit(prepared, sweeps, threshold, draws, progress,
                 _verdict_strategy(prepared, compensation, drift_compensation), compare)


def _verdict_strategy(prepared: PreparedFleet, name: str | None, drift_compensation: bool | None) -> str:
    if name is not None:
        return get_compensation(name).name
    if drift_compensation is not None:
        return "bias" if drift_compensation else "none"
    return model_compensation(prepared.model.metadata)


def fault_report(prepared: PreparedFleet) -> dict[str, dict[str, Any]]:
    """Per chip whose calibration flags faulty devices: how many, and (simulated chips) what they cost at the
    calibration temperature against the same chip had they worked ({} when no chip has any)."""
    flagged = {p.device_id: faulty_mask(p.calibration) for p in prepared.profiles}
    flagged = {name: mask for name, mask in flagged.items() if mask is not None}
    if not flagged:
        return {}
    working = accuracy_if_working(prepared, Conditions())
    measured = {}
    if prepared.fleet is not None and working:
        acc = prepared.fleet.accuracy(prepared.data.X, prepared.data.y, Conditions())
        measured = dict(zip(prepared.fleet.device_ids, (float(a) for a in acc)))
    return {name: {"devices": int(mask.sum()), "fraction": float(mask.mean()),
                   "cost_at_calibration": (measured[name] - working[name]) if name in working else None}
            for name, mask in flagged.items()}


def audit(prepared: PreparedFleet, sweeps: Sequence[AxisSweep], threshold: float | None, draws: int,
          progress: Callable[[int], None] | None, strategy: str, compare: Sequence[str] = ()) -> AuditResult:
    """The audit of ``sweeps`` (one per axis) with the verdict's compensation ``strategy``."""
    prepared.require_measurable("an audit")
    for name, board in prepared.hardware.items():
        if not board.has_temperature:
            raise ConfigError(f"{name}: its station has no temperature controller, and an audit sweeps the chip's "
                              "temperature; audit it on a station with a TEC, or use `pnndeploy transfer` for it")
    nominal = prepared.nominal_accuracy()
    source = "given" if threshold is not None else "nominal accuracy - 0.05"
    threshold = float(threshold) if threshold is not None else max(0.0, nominal - 0.05)
    tick = progress or (lambda n: None)
    strategies = [s for s in dict.fromkeys(["bias", strategy, *compare]) if s != "none"]
    names = [p.device_id for p in prepared.profiles]
    result = AuditResult.begin(prepared, nominal, threshold, source, sweeps, strategy,
                               DriftCompensation.for_drift(prepared.groups[0].platform.nominal_drift))
    faults = fault_report(prepared)
    if faults:
        result.head["faults"] = faults
    for sweep in sweeps:
        if sweep.axis.kind == "temperature":
            _temperature(prepared, sweep, strategies, result, tick)
        elif sweep.axis.kind == "ageing":
            _ageing(prepared, sweep, draws, result, tick)
        else:
            _setup(prepared, sweep, result, tick)
    result.finish(names, prepared.hardware)
    return result


def _temperature(prepared: PreparedFleet, sweep: AxisSweep, strategies: list[str], result: AuditResult,
                 tick: Callable[[int], None]) -> None:
    """Accuracy vs temperature of every chip as programmed and after each strategy (references taken once)."""
    X, y = prepared.data.X, prepared.data.y
    groups = prepared.groups
    order = [name for group in groups for name in group.device_ids]
    values = sweep.points()
    window = result.window
    records = [reference_record(group, X, window) for group in groups]   # taken once, after programming
    acc = {s: np.empty((len(order), len(values))) for s in ["none", *strategies]}
    bias = {s: np.empty((len(order), len(values))) for s in strategies}
    for k, t in enumerate(values):
        start = 0
        for group, record in zip(groups, records):
            rows = slice(start, start + len(group))
            acc["none"][rows, k] = group.accuracy(X, y, Conditions(delta_T=t))
            for s in strategies:
                acc[s][rows, k], fitted = COMPENSATIONS[s].accuracy(group, X, y, Conditions(delta_T=t), window,
                                                                    record)
                bias[s][rows, k] = fitted["bias"]
            start = rows.stop
        tick(1)
    for board in prepared.hardware.values():
        board.restore()                      # each station back at its calibration temperature, as programmed
    row = {n: i for i, n in enumerate(order)}
    names = [p.device_id for p in prepared.profiles]
    pick = [row[n] for n in names]
    units = prepared.groups[0].platform.control_units
    for s, a in acc.items():
        extra = {} if s == "none" else {"bias": {n: [float(b) for b in bias[s][pick][i]] for i, n in enumerate(names)},
                                        "bias_units": units}
        result.add_sweep(sweep, COMPENSATIONS[s].sweep_key, Sweep.of(values, names, a[pick], extra),
                         judged=(s == result.strategy))


def _ageing(prepared: PreparedFleet, sweep: AxisSweep, draws: int, result: AuditResult,
            tick: Callable[[int], None]) -> None:
    """Accuracy vs days of the simulated chips (a real chip cannot be aged on demand): median over draws."""
    X, y = prepared.data.X, prepared.data.y
    fleet = prepared.fleet
    aged = fleet.device_ids if fleet is not None else []
    values = sweep.points()
    per_draw = np.empty((draws, len(aged), len(values)))
    for draw in range(draws):
        shifts = ageing_shifts(prepared, values, draw) if fleet is not None else [None] * len(values)
        for k, shift in enumerate(shifts):
            # the same detector-noise draw as the temperature sweep: only the ageing walk varies,
            # so day 0 and 0 K are the same measurement
            if fleet is not None:
                per_draw[draw, :, k] = fleet.accuracy(X, y, Conditions(control_shift=shift))
            tick(1)
    result.add_sweep(sweep, sweep.name, Sweep.of(values, aged, np.median(per_draw, axis=0),
                                                 {"draws": draws, "statistic": "median over draws"}), judged=True)
    for n in prepared.hardware:
        result.not_checked[n] = (f"ageing: a real chip cannot be aged on demand; audit it again "
                                 f"{sweep.require:g} days after its calibration")


def _setup(prepared: PreparedFleet, sweep: AxisSweep, result: AuditResult, tick: Callable[[int], None]) -> None:
    """One setup axis alone: every simulated setup moved from its calibrated state by the same amount."""
    X, y = prepared.data.X, prepared.data.y
    fleet = prepared.fleet
    aged = fleet.device_ids if fleet is not None else []
    values = sweep.points()
    acc = np.empty((len(aged), len(values)))
    for k, v in enumerate(values):
        if fleet is not None:
            acc[:, k] = fleet.accuracy(X, y, Conditions(perturbation={sweep.name: float(v)}))
        tick(1)
    axis = sweep.axis
    result.add_sweep(sweep, sweep.name, Sweep.of(values, aged, acc, {"units": axis.units, "label": axis.label,
                                                                     "centre": axis.centre,
                                                                     "require": sweep.require}), judged=True)
    for n in prepared.hardware:
        if "misalignment" not in result.not_checked.get(n, ""):
            result.not_checked[n] = result.not_checked.get(n, "") + \
                "; misalignment: a setup behind a backend cannot be misaligned on demand"


def model_compensation(metadata: dict) -> str:
    """The compensation strategy the model was trained for: spec-sat's ``compensation`` (or its older
    ``drift_compensation`` flag: bias), else none."""
    config = metadata.get("config")
    if not isinstance(config, dict):
        return "none"
    named = config.get("compensation")
    if isinstance(named, str) and named in COMPENSATIONS:
        return named
    return "bias" if config.get("drift_compensation") is True else "none"


def model_assumes_compensation(metadata: dict) -> bool:
    """True when the model was trained for a deployment that re-fits the drift (spec-sat's setting)."""
    return model_compensation(metadata) != "none"

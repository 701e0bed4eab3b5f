"""What a deployed chip may drift along, declared by its platform: the perturbation axes.

Every consumer reads the axes from here (the audit's sweeps and verdict, the `audit` and `train` flags, spec-SAT's
perturbation set and FD-SAT's box); none names one.  An axis says what it is (name, label, units, the unperturbed
value), what an audit does by default (sweep, requirement), how a value enters the physics (its ``kind`` and, for
a whole-setup axis, how it moves the calibrated state), whether training can differentiate through it (else
FD-SAT's finite differences), and where a process spec says how far a deployed chip moves along it.

Kinds:

* ``temperature``: every control device shifts by its own k dT (:class:`~pnndeploy.platforms.base.ChipState`'s
  ``delta_T``); a drift compensation strategy may re-fit the deployment at each temperature.
* ``ageing``: every control device random-walks at the profile's ageing rate (a control shift), several draws.
* ``setup``: the whole setup moves from its calibrated state (a free-space relay's rotation, shift, magnification;
  a diffractive mask's rotation), the same for every chip: ``ChipState.perturbation`` {name: value}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

KINDS = ("temperature", "ageing", "setup")


@dataclass(frozen=True)
class PerturbationAxis:
    """One way a deployed chip or setup drifts.  Values are absolute (a rotation of 2 deg, a magnification of 1.1);
    ``centre`` is the unperturbed value."""

    name: str        # key in the audit document ("rotation_deg")
    label: str       # what a person reads ("rotation")
    units: str
    centre: float
    sweep: str       # default grid, LO:HI:STEP
    require: float   # default requirement: the verdict needs the threshold within centre +- require
    #: Stem of the command-line options: `audit --FLAG LO:HI:STEP --require-FLAG R`, `train --robust-FLAG R`.
    #: Axes that share a stem are swept and trained together (a shift along x and along y).
    flag: str = ""
    kind: str = "setup"
    #: Whether training can differentiate the loss with respect to it (else FD-SAT's finite-difference ascent).
    differentiable: bool = True
    #: How a value moves the calibrated state: "add" (rotation, shift) or "multiply" (a magnification).
    compose: str = "add"
    #: Key of the setups' spread of this parameter (a std) in the process spec's device section, and key of the
    #: relative error of its measurement in ``calibration.param_rel_sigma`` (None: not in the spec).
    spread_key: str | None = None
    calibration_key: str | None = None
    #: What `audit --help` says of the sweep.
    help: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.compose not in ("add", "multiply"):
            raise ValueError(f"axis {self.name}: kind {self.kind!r} / compose {self.compose!r} unknown")

    def move(self, base: float, value: float) -> float:
        """The state of a setup at ``base`` moved by an audit value ``value`` of this axis."""
        return base + value if self.compose == "add" else base * value

    def box_half_width(self, process: Mapping[str, Any], section: str, z: float) -> float | None:
        """How far a deployed setup may sit from its calibrated state along this axis, ``z`` stds of the setups'
        spread and of the calibration's error combined (the latter relative to the parameter's rms value), read off
        a process spec; None when the spec does not say."""
        if self.spread_key is None:
            return None
        spread = float(process[section][self.spread_key])
        rel = float(process["calibration"]["param_rel_sigma"].get(self.calibration_key, 0.0)) \
            if self.calibration_key else 0.0
        calibration = rel * math.sqrt(self.centre ** 2 + spread ** 2)
        return z * math.sqrt(spread ** 2 + calibration ** 2)


#: Every platform's chips drift with temperature (each control device by its own k dT) ...
TEMPERATURE = PerturbationAxis("temperature_K", "temperature", "K", 0.0, "-2:2:0.25", 1.0, flag="temperature",
                               kind="temperature",
                               help="Temperature sweep, K from the calibration temperature (HI included).")
#: ... and age (each control device random-walks at the profile's ageing rate).
AGEING = PerturbationAxis("days", "days since calibration", "days", 0.0, "0:180:15", 30.0, flag="days",
                          kind="ageing", help="Ageing sweep, days since calibration (HI included).")


def move_along(axes: tuple[PerturbationAxis, ...], values: list[Any],
               perturbation: Mapping[str, float] | None) -> list[Any]:
    """``values`` (one per axis of ``axes``: numbers or torch tensors) moved by an audit's perturbation {axis name:
    value}, each axis as it composes; a name that is none of the axes is a ValueError."""
    if not perturbation:
        return list(values)
    unknown = set(perturbation) - {a.name for a in axes}
    if unknown:
        raise ValueError(f"unknown perturbation axis {sorted(unknown)[0]!r}")
    return [axis.move(v, perturbation[axis.name]) if axis.name in perturbation else v for axis, v in zip(axes, values)]


def axis_groups(axes: tuple[PerturbationAxis, ...]) -> dict[str, list[PerturbationAxis]]:
    """The axes by option stem, in declaration order (a shift along x and along y share one)."""
    groups: dict[str, list[PerturbationAxis]] = {}
    for axis in axes:
        groups.setdefault(axis.flag or axis.name, []).append(axis)
    return groups

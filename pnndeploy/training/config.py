"""The settings of one training run: :class:`TrainConfig`, its checks, and YAML configs for `train`.

YAML is read with safe_load only; every key must be known and every value of the right type.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pnndeploy.errors import ConfigError
from pnndeploy.formats.yamlio import read_yaml_file
from pnndeploy.platforms import DEFAULT_PLATFORM, PLATFORMS, get_platform

METHODS = ("standard", "noise-aware", "sat", "spec-sat")
#: Settings of SAT's isotropic ascent (refused by the other methods, which would ignore them).
SAT_SETTINGS = ("rho", "adaptive", "perturb", "drift_budget")
#: Settings of spec-SAT's perturbation set (refused by the other methods).
SPEC_SETTINGS = ("robust_to", "require_temperature", "require_days", "robust_z", "drift_compensation")
#: FD-SAT's misalignment box (free-space only, sat and spec-sat): +- rotation (deg), +- shift (px), +- scale.
MISALIGNMENT_SETTINGS = ("robust_rotation", "robust_shift", "robust_scale", "misalignment_rho")
PERTURB_CHOICES = ("onchip", "all")
ASCENTS = ("gradient", "momentum")
#: Default hidden widths per method.  spec-sat: 128, the width at which it keeps every ring chip above 90 % over
#: +-1 K and 180 days (README; a ring step is dispatch-bound, so it costs what 32 did).  The other methods keep
#: round 1's 32, so their default runs reproduce bit for bit.
DEFAULT_HIDDEN: dict[str, list[int]] = {"spec-sat": [128], "*": [32]}


@dataclass
class TrainConfig:
    """Every setting of one training run (what ``--config FILE.yaml`` may set)."""

    #: spec-sat (the default since round 2: it wins the demo with drift compensation, README).
    method: str = "spec-sat"
    platform: str = DEFAULT_PLATFORM
    #: Hidden widths; None: the method's default (:data:`DEFAULT_HIDDEN`).
    hidden: list[int] | None = None
    #: Channels of a digital conv front end (3x3 conv, ReLU, 2x2 max-pool per stage); needs image data.
    conv: list[int] = field(default_factory=list)
    #: How many of the linear layers (the last ones) are on chip; 0: all of them.  The others are digital.
    onchip: int = 0
    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.01
    seed: int = 0
    rho: float = 0.1
    adaptive: bool = False
    #: Std (nm) of Gaussian noise on every control at each training forward.  None means the
    #: method's default: 0.05 nm for noise-aware, 0 (off) for SAT; the baseline has no controls.
    noise: float | None = None
    perturb: str = "onchip"
    drift_budget: float = 0.0
    sat_every: int = 1
    #: Direction of the ascent (sat and spec-sat): "gradient" (a clean forward/backward first) or
    #: "momentum" (Adam's first moment, no extra pass: Momentum-SAM, Becker et al. 2023).
    ascent: str = "gradient"
    #: spec-sat: the process spec of the fleet (None: the platform's default fleet's process.yaml).
    robust_to: str | None = None
    #: spec-sat: the deployment range of the common-mode thermal shift, +- K.
    require_temperature: float = 1.0
    #: spec-sat: days since calibration the model must last (the ageing walk's spread).
    require_days: float = 30.0
    #: spec-sat: quantile (in std) of the independent errors the ascent guards: rho = z * sigma.
    robust_z: float = 2.0
    #: spec-sat: the deployment re-fits a common bias per chip (audit --drift-compensation), which removes
    #: the common-mode shift; only its device-to-device spread remains in the perturbation set.
    drift_compensation: bool = True
    #: Free-space, sat and spec-sat: the misalignment box FD-SAT trains for, +- deg of rotation, +- px of
    #: shift along x and y, +- relative magnification (None: the platform's audit requirement, 2 / 2 / 0.1).
    robust_rotation: float | None = None
    robust_shift: float | None = None
    robust_scale: float | None = None
    #: Free-space: FD-SAT's ascent from a random state of the box, in box half-widths.
    misalignment_rho: float = 0.5

    def __post_init__(self) -> None:
        if self.hidden is None:
            self.hidden = list(DEFAULT_HIDDEN.get(self.method, DEFAULT_HIDDEN["*"]))

    def validate(self) -> None:
        """Refuse settings that would train nonsense, with the flag to change."""
        for name in ("lr", "rho", "noise", "drift_budget"):
            if getattr(self, name) is not None and not math.isfinite(getattr(self, name)):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number (got {getattr(self, name)})")
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method!r} is unknown; use one of {', '.join(METHODS)}")
        if self.perturb not in PERTURB_CHOICES:
            raise ConfigError(f"perturb {self.perturb!r} is unknown; use one of {', '.join(PERTURB_CHOICES)}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1 (got {self.epochs})")
        if self.sat_every < 1:
            raise ConfigError(f"--sat-every must be at least 1 (got {self.sat_every})")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive (got {self.lr})")
        if not self.rho >= 0:
            raise ConfigError(f"--rho must be 0 or more (got {self.rho})")
        if not self.drift_budget >= 0:
            raise ConfigError(f"--drift-budget must be 0 or more kelvin (got {self.drift_budget})")
        for name in ("require_temperature", "require_days", "robust_z"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, 0 or more "
                                  f"(got {getattr(self, name)})")
        defaults = TrainConfig()
        refused = {"sat": SPEC_SETTINGS, "spec-sat": SAT_SETTINGS + ("noise",)}.get(
            self.method, SAT_SETTINGS + SPEC_SETTINGS + ("sat_every", "ascent"))
        if self.ascent not in ASCENTS:
            raise ConfigError(f"--ascent {self.ascent!r} is unknown; use one of {', '.join(ASCENTS)}")
        if self.ascent == "momentum" and self.sat_every != 1:
            raise ConfigError("--ascent momentum takes no extra pass to reuse; drop --sat-every (it caches a "
                              "gradient ascent) or use --ascent gradient")
        for name in refused:
            if getattr(self, name) != getattr(defaults, name):
                flag = "--" + name.replace("_", "-")
                if self.method == "spec-sat":
                    raise ConfigError(f"{flag} is not a setting of spec-sat, which reads its perturbations "
                                      "(noise, drift, radius) from the process spec; change --robust-to, "
                                      "--require-temperature, --require-days or --robust-z, or use --method sat")
                owner = "SAT's ascent step" if name in SAT_SETTINGS + ("sat_every", "ascent") \
                    else "spec-SAT's perturbation set"
                use = "sat" if name in SAT_SETTINGS else "spec-sat" if name in SPEC_SETTINGS else "sat or spec-sat"
                raise ConfigError(f"{flag} is a setting of {owner} and --method {self.method} "
                                  f"would ignore it; use it with --method {use}, or drop it")
        self._check_misalignment(defaults)
        known = PLATFORMS.get(self.platform)
        units, noun = (known.control_units, known.control_noun) if known else ("control units", "control")
        if self.adaptive and known is not None and known.periodic:
            raise ConfigError(f"--adaptive scales SAT's perturbation by |{noun}|, which means nothing for the "
                              f"periodic {noun}s of --platform {self.platform} (0 and 2 pi are the same {noun}); "
                              "drop --adaptive")
        if self.noise is not None and not self.noise >= 0:
            raise ConfigError(f"--noise must be 0 or more {units} (got {self.noise})")
        if self.noise and self.method == "standard":
            raise ConfigError(f"--noise perturbs the {noun}s, which --method standard does not train; "
                              "use --method noise-aware or sat")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"--hidden must be positive widths (got {self.hidden})")
        if any(c < 1 for c in self.conv):
            raise ConfigError(f"--conv must be positive channel counts (got {self.conv})")
        linear = len(self.hidden) + 1
        if not 0 <= self.onchip <= linear:
            raise ConfigError(f"--onchip {self.onchip}: the model has {linear} linear layers (--hidden "
                              f"{','.join(map(str, self.hidden))} and the output); give 1..{linear}, or 0 for all")
        get_platform(self.platform)

    def _check_misalignment(self, defaults: "TrainConfig") -> None:
        """FD-SAT's settings: only for platforms that image their inputs, only for sat and spec-sat."""
        given = [n for n in MISALIGNMENT_SETTINGS if getattr(self, n) != getattr(defaults, n)]
        known = PLATFORMS.get(self.platform)
        if given and (known is None or not known.perturbation_axes):
            imaging = ", ".join(n for n, p in sorted(PLATFORMS.items()) if p.perturbation_axes)
            raise ConfigError(f"--{given[0].replace('_', '-')} sets the misalignment box of a free-space setup; "
                              f"--platform {self.platform} has no misalignment; drop it or use --platform {imaging}")
        if given and self.method not in ("sat", "spec-sat"):
            raise ConfigError(f"--{given[0].replace('_', '-')} is a setting of FD-SAT's misalignment ascent and "
                              f"--method {self.method} would ignore it; use it with --method sat or spec-sat")
        for name in MISALIGNMENT_SETTINGS:
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, 0 or more (got {value})")
        if self.robust_scale is not None and self.robust_scale >= 0.5:
            raise ConfigError(f"--robust-scale {self.robust_scale}: a magnification error of 50 % or more is not a "
                              "misalignment; give a fraction below 0.5 (0.1 is x0.9 to x1.1)")

    @property
    def misalignment_box(self) -> tuple[list[float], list[float]] | None:
        """(centre, half-widths) of FD-SAT's box over (rotation_deg, shift_x_px, shift_y_px, scale), or None."""
        known = PLATFORMS.get(self.platform)
        if known is None or not known.perturbation_axes or self.method not in ("sat", "spec-sat"):
            return None
        axes = {a.name: a for a in known.perturbation_axes}
        rotation = axes["rotation_deg"].require if self.robust_rotation is None else self.robust_rotation
        shift = axes["shift_x_px"].require if self.robust_shift is None else self.robust_shift
        scale = axes["scale"].require if self.robust_scale is None else self.robust_scale
        return [0.0, 0.0, 0.0, 1.0], [float(rotation), float(shift), float(shift), float(scale)]

    @property
    def control_noise(self) -> float:
        """The noise actually used (control units): the given value or the method's default.

        noise-aware's default is the platform's (``Platform.default_noise``).
        """
        if self.noise is not None:
            return self.noise
        return get_platform(self.platform).default_noise if self.method == "noise-aware" else 0.0

    def to_dict(self) -> dict:
        """The settings as the model file records them (spec-SAT's only for spec-sat, so other files stay as they were)."""
        out = {**asdict(self), "noise": self.control_noise}
        # spec-sat's noise and radius come from its perturbation set, which the model file records beside
        for name in (SAT_SETTINGS + ("noise",) if self.method == "spec-sat" else SPEC_SETTINGS):
            out.pop(name)
        for name in ("conv", "onchip"):         # an all-on-chip MLP's file stays as it was
            if not out[name]:
                out.pop(name)
        if out["ascent"] == "gradient":
            out.pop("ascent")
        box = self.misalignment_box
        for name in MISALIGNMENT_SETTINGS:      # only a free-space sat/spec-sat file records its box
            out.pop(name)
        if box is not None:
            rotation, shift, _, scale = box[1]
            out.update(robust_rotation=rotation, robust_shift=shift, robust_scale=scale,
                       misalignment_rho=self.misalignment_rho)
        return out

    def layer_split(self) -> tuple[list[int], list[int]]:
        """(digital dense widths, on-chip hidden widths): the last ``onchip`` linear layers are on chip."""
        linear = len(self.hidden) + 1
        digital = linear - (self.onchip or linear)
        return list(self.hidden[:digital]), list(self.hidden[digital:])


#: Keys a train config may hold beyond TrainConfig's fields: what to train on, where to write, where to compute
#: (the run's, not the model's: a model trained on a GPU is the same model).
EXTRA_KEYS = {"dataset": str, "out": str, "compute": str, "threads": "int | auto"}


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in fields(TrainConfig)} | EXTRA_KEYS


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a train config; unknown keys, wrong types and Python-object tags are refused."""
    path = Path(path)
    where = f"config {path}"
    data = read_yaml_file(path, where, "check the --config path")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    types = _field_types()
    result: dict[str, Any] = {}
    for key, value in data.items():
        if key not in types:
            close = difflib.get_close_matches(str(key), list(types), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(types))}"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
        if key == "threads":            # a count or "auto", as the flag takes
            from pnndeploy.compute import ComputeError, parse_threads

            try:
                result[key] = parse_threads(value, f"{where}: key 'threads'")
            except ComputeError as exc:
                raise ConfigError(str(exc)) from None
            continue
        result[key] = _coerce(where, key, value, types[key])
    return result


def _coerce(where: str, key: str, value: Any, kind: Any) -> Any:
    """Check a value against the field type; ints are accepted where floats are expected."""
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}: {key} must be {expected}, got {value!r}")

    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind):
        if value is None:
            return None
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if kind is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if kind is float:
        if isinstance(value, str):      # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if typing.get_origin(kind) is list:
        items = value if isinstance(value, list) else [value]
        if (not items and key != "conv") or any(isinstance(v, bool) or not isinstance(v, int) for v in items):
            raise bad("an integer or a list of integers")     # (conv: [] is the default, no front end)
        return list(items)
    raise bad(str(kind))

"""The settings of one training run: :class:`TrainConfig`, its checks, and YAML configs for `train`.

YAML is read with safe_load only; every key must be known and every value of the right type.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from dataclasses import MISSING, Field, field, fields, make_dataclass
from pathlib import Path
from typing import Any

from pnndeploy.errors import ConfigError
from pnndeploy.formats.digital import KERNEL, MAX_KERNEL
from pnndeploy.formats.yamlio import read_yaml_file
from pnndeploy.platforms import PLATFORMS, get_platform
from pnndeploy.training.methods import METHODS, get_method
from pnndeploy.training.methods.base import SetupBox, box_setting, setting_names, setup_axes, setup_box
from pnndeploy.training.settings import IMPORTED_FRONT_LR, RunSettings, check, default_of, described, flag

class _TrainConfigRules:
    """What a :class:`TrainConfig` does with its settings (the fields are generated: :func:`_setting_fields`)."""

    def __post_init__(self) -> None:
        method = get_method(self.method)
        if self.hidden is None:
            default = get_platform(self.platform).default_hidden
            object.__setattr__(self, "hidden", list(method.default_hidden if default is None else default))
        # the options as the platform types them (a flag's text "128" is the integer 128), checked
        configured = self.chip_platform
        object.__setattr__(self, "platform_options", {k: getattr(configured, k) for k in self.platform_options})
        self.validate()

    @property
    def chip_platform(self) -> Any:
        """The platform with this run's options set: what the on-chip layers are."""
        return get_platform(self.platform).configure(self.platform_options, ConfigError)

    def validate(self) -> None:
        """Refuse settings that would train nonsense, with the flag to change (run once, on construction)."""
        method = get_method(self.method)
        for f in fields(self):
            if not (f.name == "epochs" and self.epochs == 0 and self.init_from is not None):   # 0: map only
                check(f, getattr(self, f.name))
        get_platform(self.platform)
        takes = setting_names(method) | RUN_SETTINGS
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in takes and value != default_of(f) and value not in described(f).inert:
                if f.name in BOX_SETTINGS:
                    self._box_axes(f.name)
                raise ConfigError(method.refusal(f.name, self))
        for name in BOX_SETTINGS:
            if getattr(self, name) != default_of(SETUP_BOX_FIELDS[name]):
                self._check_box(name)
        method.check(self)
        if self.init_from is None and self.init_mapping != default_of(_FIELDS["init_mapping"]):
            raise ConfigError(f"--init-mapping {self.init_mapping} chooses how --init-from's weights start on the "
                              "chip, and there is no --init-from; give --init-from MODEL.onnx or drop --init-mapping")
        linear = len(self.hidden) + 1
        if not 0 <= self.onchip <= linear:
            raise ConfigError(f"--onchip {self.onchip}: the model has {linear} linear layers (--hidden "
                              f"{','.join(map(str, self.hidden))} and the output); give 1..{linear}, or 0 for all")
        self._check_front_end()

    def _check_front_end(self) -> None:
        """--kernel and --batch-norm shape the digital front end: refused where it lacks what they act on."""
        if self.kernel % 2 == 0 or self.kernel > MAX_KERNEL:
            raise ConfigError(f"--kernel {self.kernel}: give an odd size from 1 to {MAX_KERNEL} (zero padding "
                              "K//2 keeps the image's size only for an odd K)")
        if self.kernel != KERNEL and not self.conv:
            raise ConfigError(f"--kernel {self.kernel} sizes the conv front end's kernels, and there is none; give "
                              "--conv too (e.g. --conv 6,16) or drop --kernel")
        if self.front_lr is not None and not self.conv and not self.layer_split()[0]:
            raise ConfigError(f"--front-lr {self.front_lr:g} sets the digital front end's learning rate, and there "
                              "is none (every layer is on the chip); give --conv, or --onchip N to run the earlier "
                              "dense layers in electronics, or drop --front-lr")
        if self.batch_norm and not self.conv and not self.layer_split()[0]:
            raise ConfigError("--batch-norm normalises the digital front end's layers, and there are none; give "
                              "--conv, or --onchip N to run the earlier dense layers in electronics, or drop "
                              "--batch-norm")

    def _box_axes(self, name: str) -> list[Any]:
        """The platform's axes a setup-box setting sets; refused for a platform without one."""
        axes = [a for a in setup_axes(self.platform) if name == "misalignment_rho" or box_setting(a) == name]
        if not axes:
            having = ", ".join(n for n in PLATFORMS if any(name == "misalignment_rho" or box_setting(a) == name
                                                           for a in setup_axes(n)))
            raise ConfigError(f"{flag(name)} sets FD-SAT's box of a setup training cannot differentiate; --platform "
                              f"{self.platform} has no such axis; drop it or use --platform {having}")
        return axes

    def _check_box(self, name: str) -> None:
        """A setup-box setting given: its platform has the axis, and a relative one (magnification) is below 50 %."""
        axes = self._box_axes(name)
        value = getattr(self, name)
        if name != "misalignment_rho" and axes[0].compose == "multiply" and value is not None and value >= 0.5:
            raise ConfigError(f"{flag(name)} {value}: a {axes[0].label} error of 50 % or more is not a misalignment; "
                              "give a fraction below 0.5 (0.1 is x0.9 to x1.1)")

    @property
    def misalignment_box(self) -> tuple[list[float], list[float]] | None:
        """(centre, half-widths) of FD-SAT's box over the platform's non-differentiable axes, or None."""
        return setup_box(self)

    @property
    def front_lr_factor(self) -> float:
        """The front end's learning rate as a fraction of --lr: the given one, or a trained front end's (from
        --init-from) gentler default, or 1."""
        if self.front_lr is not None:
            return float(self.front_lr)
        return IMPORTED_FRONT_LR if self.init_from is not None else 1.0

    @property
    def control_noise(self) -> float:
        """The noise actually used (control units): the given value or the method's default."""
        return get_method(self.method).control_noise(self)

    def to_dict(self) -> dict:
        """The settings as the model file records them: the run's, the method's (round 1's methods: SAT's, at
        their defaults, as their files always did), FD-SAT's box as trained where there was one.  A setting that
        records only when changed is left out at its default, so older files stay byte for byte."""
        method = get_method(self.method)
        recorded = RUN_SETTINGS | {f.name for f in fields(method.recorded or method.settings)}
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in recorded and (described(f).record_default or value != default_of(f)):
                out[f.name] = list(value) if isinstance(value, list) else value
        if "noise" in out:
            out["noise"] = self.control_noise
        out = method.record(self, out)
        box = self.misalignment_box
        if box is not None:
            for axis, width in zip(setup_axes(self.platform), box[1]):
                out.setdefault(box_setting(axis), width)
            out["misalignment_rho"] = self.misalignment_rho
        return out

    def layer_split(self) -> tuple[list[int], list[int]]:
        """(digital dense widths, on-chip hidden widths): the last ``onchip`` linear layers are on chip."""
        linear = len(self.hidden) + 1
        digital = linear - (self.onchip or linear)
        return list(self.hidden[:digital]), list(self.hidden[digital:])


def _setting_fields() -> list[tuple[str, Any, Any]]:
    """The run's settings, then each method's in registry order (a shared one once, where it first appears), then
    FD-SAT's setup box: TrainConfig's fields, in the order a model file records them."""
    found: dict[str, tuple[Any, Field]] = {}
    for source in (RunSettings, *(m.settings for m in METHODS.values()), SetupBox):
        hints = typing.get_type_hints(source)
        for f in fields(source):
            if f.name in found:
                if default_of(found[f.name][1]) != default_of(f) or described(found[f.name][1]) != described(f):
                    raise TypeError(f"setting {f.name} of {source.__name__} differs from the one of the same name "
                                    "declared before; share one definition")
                continue
            found[f.name] = (hints[f.name], f)
    return [(name, kind, field(default=f.default, metadata=f.metadata) if f.default_factory is MISSING
             else field(default_factory=f.default_factory, metadata=f.metadata))
            for name, (kind, f) in found.items()]


#: Every setting of one training run (what ``--config FILE.yaml`` may set, what `train` takes as flags), generated
#: from :class:`RunSettings`, the methods' settings and FD-SAT's setup box; frozen and checked on construction.
TrainConfig = make_dataclass("TrainConfig", _setting_fields(), bases=(_TrainConfigRules,), frozen=True, kw_only=True,
                             namespace={"__module__": __name__,
                                        "__doc__": "Every setting of one training run, checked on construction."})
RUN_SETTINGS = frozenset(f.name for f in fields(RunSettings))
SETUP_BOX_FIELDS = {f.name: f for f in fields(SetupBox)}
_FIELDS = {f.name: f for f in fields(TrainConfig)}
BOX_SETTINGS = tuple(SETUP_BOX_FIELDS)


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
    if typing.get_origin(kind) is dict:
        if not isinstance(value, dict) or any(not isinstance(k, str) or isinstance(v, (dict, list)) or v is None
                                              for k, v in value.items()):
            raise bad("a mapping of option names to numbers or words")
        return dict(value)
    if typing.get_origin(kind) is list:
        items = value if isinstance(value, list) else [value]
        if (not items and not described(_FIELDS[key]).empty_ok) \
                or any(isinstance(v, bool) or not isinstance(v, int) for v in items):
            raise bad("an integer or a list of integers")     # (conv: [] is the default, no front end)
        return list(items)
    raise bad(str(kind))

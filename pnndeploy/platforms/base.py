"""What every on-chip technology must provide, one whole layer at a time: an optical operator.

Training, mapping, fleet evaluation, in-situ training, compensation, profiles and
audits work through this interface only, so a platform plugs in without
touching them.  A platform owns an on-chip layer, which maps (controls, inputs)
to outputs; the physics is written once, in torch:

* its **controls**: the trainable physical parameters of a layer (a detuning per
  ring, the phases of a mesh per tile, the transmissions of a mask pair),
  :meth:`Platform.control_shape`, :meth:`Platform.init_controls`, :meth:`Platform.project`;
* :meth:`Platform.forward`: the outputs the *nominal* device gives for inputs x
  at those controls, differentiable (training), optionally under a whole-setup
  perturbation (a free-space setup's misalignment);
* :meth:`Platform.fleet_layer` / :meth:`Platform.fleet_forward`: the same physics
  for a stack of *real* chips, with a leading chip axis: their programmed
  settings, fabrication truth, drift, ageing, whole-setup perturbations and
  detector noise, on any torch device (CPU threads or CUDA);
* :meth:`Platform.map_layer`: the settings that realise a trained layer on one
  chip, through that chip's *calibration* (never its fabrication truth);
* :meth:`Platform.onnx_layer` / :meth:`Platform.nominal_outputs`: the layer in
  the exported ONNX graph (standard operators only) and the same outputs
  without a runtime;
* its fabrication and drift model (:meth:`Platform.sample_fabrication`), the
  per-device fields of its profiles with units and shapes, and its ONNX
  parameters (:meth:`Platform.metadata`).

:class:`LinearPlatform` is the common case: a layer that is ``x -> W(controls) x``
(rings, the coherent mesh, free-space masks) implements the operator through its
weights, exports as a Gemm, and lets the paper's baseline train W itself.  A
non-linear readout (intensity detection, |Ux|^2) or an operator never
materialised as a matrix (propagation by FFT) implements :class:`Platform`
directly (``tests/test_platform_conformance.py`` holds one of each kind).

A chip realises ``control = setting + offset + drift_coefficient * dT (+ ageing
shift) (+ crosstalk)`` for every control device, where ``offset`` is the
fabrication error the setting must cancel; how the controls act on the light is
the platform's business.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from pnndeploy.platforms.axes import AGEING, TEMPERATURE, PerturbationAxis
from pnndeploy.platforms.mesh import TWO_PI
from pnndeploy.platforms.options import PlatformOption
from pnndeploy.untrusted import brief


class Range(NamedTuple):
    """An allowed interval of a per-device parameter."""

    lo: float
    hi: float
    lo_inclusive: bool = False
    hi_inclusive: bool = True

    def contains(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        above = values >= self.lo if self.lo_inclusive else values > self.lo
        below = values <= self.hi if self.hi_inclusive else values < self.hi
        return above & below

    def describe(self) -> str:
        left = "[" if self.lo_inclusive else "("
        right = "]" if self.hi_inclusive else ")"
        hi = "inf" if math.isinf(self.hi) else f"{self.hi:g}"
        return f"{left}{self.lo:g}, {hi}{right}"

    def clip(self, values: np.ndarray) -> np.ndarray:
        """``values`` moved into the range (open ends by one ulp)."""
        lo = self.lo if self.lo_inclusive else np.nextafter(self.lo, np.inf)
        hi = self.hi if self.hi_inclusive else np.nextafter(self.hi, -np.inf)
        return np.clip(values, lo, hi)


#: A per-device parameter with no range of its own must be > 0.
POSITIVE = Range(0.0, math.inf, lo_inclusive=False, hi_inclusive=False)


#: Why a device could not be set as the model wants, in the order a device is counted (once, under its first cause).
CLIP_CAUSES = ("reach", "range", "faulty")


@dataclass(frozen=True)
class Clipping:
    """The devices of a layer (or of a chip's layers) that mapping had to clip, counted by cause.

    A person judges a count only against the devices there are, so ``devices`` travels with the counts.  Causes
    are disjoint, so they add up to :attr:`total`: ``reach`` the wanted weight is beyond what the device can
    realise (a ring's extinction a < 1 cannot reach W = -1), ``range`` the setting that realises it is beyond the
    heater's (DAC's) range, ``faulty`` the device does not respond to its setting (the calibration flags it,
    :mod:`pnndeploy.platforms.faults`).
    """

    devices: int
    reach: int = 0
    range: int = 0
    faulty: int = 0

    @classmethod
    def of(cls, devices: int, reachable: np.ndarray | None = None, inside: np.ndarray | None = None,
           faulty: np.ndarray | None = None) -> "Clipping":
        """Counts from per-device masks (``reachable``, ``inside``: True = fine; ``faulty``: True = broken); a
        faulty device is counted as faulty only, one out of reach is not counted again as out of range."""
        out_of_reach, out_of_range, broken = _causes(reachable, inside, faulty)
        return cls(int(devices), int(np.count_nonzero(out_of_reach)), int(np.count_nonzero(out_of_range)),
                   int(np.count_nonzero(broken)))

    @classmethod
    def of_each(cls, devices: int, reachable: np.ndarray | None, inside: np.ndarray | None = None,
                faulty: np.ndarray | None = None) -> list["Clipping"]:
        """:meth:`of` for each chip of a stack: the masks broadcast together to (chips, ...); ``devices`` per chip.
        (A lot's mapping counted chip by chip spent a quarter of its time here.)"""
        causes = _causes(reachable, inside, faulty)
        if causes[0].ndim == 0:
            raise ValueError("Clipping.of_each needs masks with a leading chip axis")
        if len(causes[0]) == 1:                 # one chip: numpy's whole-array count is several times faster
            counts = [[np.count_nonzero(cause)] for cause in causes]
        else:
            counts = [np.count_nonzero(cause, axis=tuple(range(1, cause.ndim))) for cause in causes]
        return [cls(int(devices), int(r), int(g), int(f)) for r, g, f in zip(*counts, strict=True)]

    @property
    def total(self) -> int:
        return self.reach + self.range + self.faulty

    def __add__(self, other: "Clipping") -> "Clipping":
        return Clipping(self.devices + other.devices, self.reach + other.reach, self.range + other.range,
                        self.faulty + other.faulty)

    def to_json(self) -> dict[str, Any]:
        """Counts per cause and their fractions of the devices (``transfer --json``)."""
        counts = {cause: getattr(self, cause) for cause in CLIP_CAUSES}
        share = {cause: (n / self.devices if self.devices else 0.0) for cause, n in counts.items()}
        return {"devices": self.devices, "total": self.total, **counts,
                "fraction": {**share, "total": self.total / self.devices if self.devices else 0.0}}


def _causes(reachable: np.ndarray | None, inside: np.ndarray | None,
            faulty: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:class:`Clipping`'s disjoint causes per device (out of reach, out of range, faulty) from its masks (True =
    fine for ``reachable`` and ``inside``, True = broken for ``faulty``; None: none of that cause), broadcast."""
    given = [np.asarray(m, dtype=bool) for m in (reachable, inside, faulty) if m is not None]
    shape = np.broadcast_shapes(*(m.shape for m in given)) if given else ()

    def mask(m: np.ndarray | None, default: bool) -> np.ndarray:
        return np.full(shape, default) if m is None else np.broadcast_to(np.asarray(m, dtype=bool), shape)

    broken = mask(faulty, False)
    out_of_reach = ~broken & ~mask(reachable, True)
    return out_of_reach, ~broken & ~out_of_reach & ~mask(inside, True), broken


@dataclass
class LayerMapping:
    """One on-chip layer mapped onto one chip."""

    settings: np.ndarray   # what is programmed (control units), shape platform.control_shape(...)
    clipping: Clipping     # the devices the chip cannot realise or the DAC cannot set, by cause
    residual: float        # how far the calibrated model of the chip is from the target at these settings

    @property
    def clipped(self) -> int:
        """Every clipped device, whatever the cause (the count reports gave before the breakdown)."""
        return self.clipping.total


@dataclass(frozen=True)
class ChipState:
    """What a stack of chips experiences beyond its programmed settings, for one evaluation.

    ``delta_T`` (K since calibration) is a torch scalar or one value per chip of the stack, ``control_shift``
    an extra shift of every control device (ageing, a compensation bias; control units), a torch tensor
    (chips, *device_shape) or None, and ``perturbation`` a whole-setup perturbation {axis name: value} of the
    platform's :attr:`Platform.perturbation_axes` (the same for every chip) or None.
    """

    delta_T: Any
    control_shift: Any = None
    perturbation: Mapping[str, float] | None = None

    def temperature(self, dims: int) -> Any:
        """``delta_T`` shaped to broadcast against (chips, ``dims`` more axes)."""
        return self.delta_T if self.delta_T.ndim == 0 else self.delta_T.reshape(-1, *([1] * dims))


def quantise(settings: np.ndarray, heater_range: tuple[float, float], bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Settings on the DAC grid of ``bits`` over ``heater_range``; returns (quantised, in-range mask)."""
    lo, hi = heater_range
    step = (hi - lo) / (2 ** bits - 1)
    inside = (settings >= lo) & (settings <= hi)
    # np.clip's values without its dispatch (a -0.0 at a bound of 0.0 may come out +0.0: the same code), and
    # np.round's half-to-even at 0 decimals (rint)
    codes = np.rint((np.minimum(np.maximum(settings, lo), hi) - lo) / step)
    return lo + codes * step, inside


def solve_crosstalk(goal: np.ndarray, crosstalk: float, spill: Callable[[np.ndarray], np.ndarray],
                    bounds: tuple[float, float] | None = None, start: np.ndarray | None = None,
                    held: np.ndarray | None = None) -> np.ndarray:
    """Settings h with h + crosstalk * spill(h) = goal, where a device's control picks up ``crosstalk`` times the
    sum of its neighbours' settings (``spill``, at most two neighbours): a chip's heaters warm their neighbours, so
    a mapping that wants ``goal`` must set less where the neighbours are hot.

    A fixed-point (Jacobi) iteration, which contracts by 2 * crosstalk per sweep (< 1: the profile schema keeps
    crosstalk below 0.5); as many sweeps as bring that factor below 1e-13.  With ``bounds`` every sweep clips into
    them (a projected iteration, still a contraction): a device held at a bound then spills what it really gets
    and its neighbours compensate that, not the setting it could not take.  ``start``: where the iteration starts
    (default ``goal``).  ``held``: devices whose setting is 0 whatever is wanted (faulty: their heater gives no
    heat, so they spill nothing; the calibration folds a stuck drive into their offset).  Zero crosstalk returns
    ``goal`` (clipped, held at 0) unchanged.
    """
    def clip(h: np.ndarray) -> np.ndarray:          # in place: ``h`` is always an array made here
        if bounds is not None:                      # np.clip's values without its dispatch (a dozen sweeps a layer;
            np.maximum(h, bounds[0], out=h)         # a -0.0 at a bound of 0.0 may come out +0.0)
            np.minimum(h, bounds[1], out=h)
        return h if held is None else np.where(held, 0.0, h)

    dtype = np.result_type(goal, 0.0)               # float32 stays float32, as np.clip kept it
    if not crosstalk:
        return clip(np.array(goal, dtype))
    h = clip(np.array(goal if start is None else start, dtype))
    sweeps = int(np.ceil(np.log(1e-13) / np.log(2.0 * crosstalk))) + 1       # (2c)^sweeps below 1e-13
    for _ in range(sweeps):
        step = np.multiply(spill(h), crosstalk)
        h = clip(np.subtract(goal, step, out=step))
    return h


def stacked(arrays: Sequence[np.ndarray], device: Any, dtype: Any) -> Any:
    """Per-chip numpy arrays as one torch tensor with a leading chip axis on ``device``."""
    import torch

    return torch.from_numpy(np.stack([np.asarray(a) for a in arrays])).to(device=device, dtype=dtype)


class Platform(ABC):
    """An on-chip technology: how controls act on a layer's inputs, and how chips of it are made."""

    #: True when a layer is ``x -> W(controls) x`` (:class:`LinearPlatform`): it is then described by its
    #: weights, exported as a Gemm, and the paper's baseline may train W itself.
    linear: bool = False

    #: True when a fleet's chunks of chips run faster side by side on the CPU's threads, each on one intra-op
    #: thread (:meth:`SimulatedFleet.accuracy`), than one after another on torch's threads: where a chunk's time
    #: is mostly long work that holds no interpreter lock (a mesh's compiled loop).  The same bits either way;
    #: measured per platform (the ring bank's small ops ran slower side by side).
    chunks_side_by_side: bool = False

    def fleet_chip_bytes(self, weight_shape: tuple[int, int], samples: int,
                         params: Mapping[str, Any] | None = None) -> int:
        """Memory one chip's layer holds while a fleet evaluates ``samples`` inputs (its outputs and their
        temporaries, its realised weights), bytes: what bounds the chunks evaluated side by side."""
        out_f, in_f = weight_shape
        return 16 * samples * max(out_f, in_f) + 8 * out_f * in_f

    name: str
    #: What the chip is, for reports ("a microring weight bank").
    description: str
    #: Units of the control parameters (what the heaters / phase shifters set).
    control_units: str
    #: What one control is called in help and reports ("detuning", "phase").
    control_noun: str
    #: Key of the device count in profile summaries ("rings").
    device_noun: str
    #: The process.yaml section holding the spreads of the fabricated devices.
    device_section: str
    #: Folder of this platform's default fleet below the default profiles folder ("" = the folder itself).
    profiles_subdir: str
    #: Name of the additive per-device control error in profiles.
    offset_name: str
    #: Per-device parameters of the transfer function and their units.
    param_units: Mapping[str, str]
    #: Allowed range of each of those parameters (a parameter not listed must be > 0).
    param_ranges: Mapping[str, Range] = {}
    #: Nominal values of those parameters (the digital model used for training).
    nominal: Mapping[str, float]
    #: Range of the trainable controls (inclusive), in ``control_units``.
    control_range: tuple[float, float]
    #: Typical shift of a control per kelvin (control units / K): the common-mode thermal drift.
    nominal_drift: float
    #: Noise-aware training's default noise on every control (control units).
    default_noise: float
    #: True when the controls are periodic (phases): |control| then means nothing (no adaptive SAT).
    periodic: bool = False
    #: Whole-setup perturbations beside temperature and ageing (a free-space setup's misalignment), each an axis
    #: of kind "setup"; :class:`ChipState` then carries ``perturbation={axis name: value}``.
    perturbation_axes: tuple[PerturbationAxis, ...] = ()
    #: The dataset `pnndeploy demo` tells the story on (every platform: the embedded digits, or a view of them).
    demo_dataset: str = "digits"
    #: What a user may choose about the chips a model is for (a mesh's size, a setup's grid and distances): each an
    #: attribute of the platform, at its default here; :meth:`configure` sets them, the model file records them.
    options: tuple[PlatformOption, ...] = ()
    #: Hidden widths of a model when none are given (None: the method's); a diffractive setup is one layer.
    default_hidden: tuple[int, ...] | None = None
    #: Samples the model file's sharpness figures (top Hessian eigenvalue, trace; float64) are measured on: fewer
    #: where one sample's forward pass is costly (a diffractive layer propagates three fields by FFT).
    sharpness_samples: int = 1024

    # ---------------------------------------------------------------------------------------- options
    def configure(self, values: Mapping[str, Any] | None, error: type[Exception] = ValueError,
                  where: str = "--platform-option") -> "Platform":
        """This platform with ``values`` {option: value} set (the others at their defaults); an unknown option or a
        bad value raises ``error`` naming ``where``.  Without values, the platform itself."""
        if not values:
            return self
        known = {o.name: o for o in self.options}
        configured = copy.copy(self)
        for key, value in values.items():
            option = known.get(key)
            if option is None:
                offered = "; ".join(o.describe() for o in self.options) or "none"
                raise error(f"{where} {brief(key, quote=False)}: the {self.name} platform has no such option; its "
                            f"options: {offered}")
            if isinstance(value, str) and option.kind is not str:
                try:
                    value = option.parse(value)
                except ValueError as exc:
                    raise error(f"{where} {key}={brief(value, quote=False)}: expected {exc}") from None
            problem = option.problem(value)
            if problem is not None:
                raise error(f"{where} {key}={brief(value)}: expected {problem}")
            setattr(configured, key, option.kind(value))
        problem = configured.options_problem()
        if problem is not None:
            raise error(f"{where}: {problem}")
        return configured

    def layout_options(self, layout: tuple[int, int]) -> dict[str, Any]:
        """Options a chip's layout implies (a mesh's modes, a mask's grid): what a profile or process spec that does
        not state them means."""
        return {}

    def mismatch(self, chip: "Platform", layout: tuple[int, int]) -> str | None:
        """Why a model of this (configured) platform cannot run on ``chip`` (configured by its profile) of this
        ``layout``: an option of other value, or a layout the model does not fit; None when it can."""
        for option in self.options:
            wanted, has = getattr(self, option.name), getattr(chip, option.name)
            if wanted != has:
                units = "" if option.units == "1" else f" {option.units}"
                return (f"the chip has {option.name} {has}{units} but the model was trained for {wanted}{units}; "
                        f"retrain with --platform-option {option.name}={has} or use a chip the model was trained for")
        problem = self.layout_problem(tuple(layout))
        return None if problem is None else f"the chip is {layout[0]} x {layout[1]}: {problem}"

    def options_problem(self) -> str | None:
        """Why this combination of option values is not a chip (each value being valid alone), or None."""
        return None

    def option_values(self) -> dict[str, Any]:
        """The options as set on this platform."""
        return {o.name: getattr(self, o.name) for o in self.options}

    def recorded_options(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The option values a model file's ``platform_params`` record (an option it lacks: the default); a platform
        whose files once recorded an option otherwise reads the old form here."""
        return {o.name: params[o.name] for o in self.options if o.name in params}

    # ------------------------------------------------------------------------------------------ a layer
    @abstractmethod
    def control_shape(self, weight_shape: tuple[int, int], params: Mapping[str, Any] | None = None) -> tuple[int, ...]:
        """Shape of the controls of an (out, in) layer; ``params`` are the model's platform parameters."""

    @abstractmethod
    def init_controls(self, weight_shape: tuple[int, int], generator: Any) -> Any:
        """Initial trainable controls (a torch tensor) of an (out, in) layer."""

    @abstractmethod
    def project(self, controls: Any) -> None:
        """Bring trainable controls (a torch parameter) back to what the hardware can set, in place."""

    @abstractmethod
    def forward(self, controls: Any, x: Any, weight_shape: tuple[int, int], perturbation: Any = None) -> Any:
        """(batch, out) outputs of the nominal device at ``controls`` for inputs ``x`` (batch, in); torch,
        differentiable in both.  ``perturbation``: FD-SAT's state of the setup, a tensor of one value per axis of
        ``perturbation_axes`` that training cannot differentiate, in their order (the free-space misalignment:
        rotation, shift x, shift y, scale), or None for the calibrated setup."""

    # ------------------------------------------------------------------------------------------ export
    @abstractmethod
    def onnx_layer(self, name: str, weight: np.ndarray | None, controls: np.ndarray, weight_shape: tuple[int, int],
                   x_name: str, out_name: str, params: Mapping[str, Any] | None = None) -> tuple[list[Any], list[Any]]:
        """(ONNX nodes, initializers) computing ``out_name`` (batch, out) from ``x_name`` (batch, in) as the
        nominal device does: standard operators only (opset 17), names prefixed by ``name``."""

    def nominal_outputs(self, weight: np.ndarray | None, controls: np.ndarray, weight_shape: tuple[int, int],
                        x: np.ndarray, params: Mapping[str, Any] | None = None) -> np.ndarray:
        """(batch, out) float64 outputs of an exported layer on the nominal device (checks without a runtime):
        :meth:`forward` in float64 (a linear platform multiplies by the exported weights instead)."""
        import torch

        c = torch.from_numpy(np.asarray(controls, np.float64))
        return self.forward(c, torch.from_numpy(np.asarray(x, np.float64)), weight_shape).numpy()

    @property
    def axes(self) -> tuple[PerturbationAxis, ...]:
        """Every way this platform's chips drift: temperature and ageing (every platform), then its setup axes."""
        return (TEMPERATURE, AGEING, *self.perturbation_axes)

    def params_dict(self) -> dict[str, float]:
        """Nominal parameters as a plain dict (for metadata)."""
        return {k: float(v) for k, v in self.nominal.items()}

    def metadata(self) -> dict[str, Any]:
        """The platform's parameters as the model file records them (``pnndeploy.platform_params``): the nominal
        device parameters, the controls' units and range, and the options."""
        return {**self.params_dict(), "control_units": self.control_units, "control_range": list(self.control_range),
                **self.option_values()}

    # --------------------------------------------------------------------------------------- profiles
    #: The smallest valid layout (the process-spec check dry-runs the fabrication model on it).
    minimal_layout: tuple[int, int] = (1, 1)

    def layout_problem(self, layout: tuple[int, int]) -> str | None:
        """Why a (rows, cols) layout of positive sizes is not a chip of this platform, or None."""
        return None

    def field_shape(self, name: str, layout: tuple[int, int]) -> tuple[int, ...]:
        """Shape of a per-device field (offset, parameters) of a chip with this ``layout``."""
        return tuple(layout)

    def device_shape(self, layout: tuple[int, int]) -> tuple[int, ...]:
        """Shape of per-control-device arrays (drift coefficients, ageing shifts) for this ``layout``."""
        return tuple(layout)

    def device_count(self, layout: tuple[int, int]) -> int:
        """Number of control devices of a chip with this ``layout``."""
        return int(np.prod(self.device_shape(layout)))

    #: Whether chips of this platform may carry faulty devices (:mod:`pnndeploy.platforms.faults`): true where
    #: each setting drives one device (:meth:`per_setting`) and mapping knows what to do about one that is stuck.
    faults_supported: bool = False

    def device_spill(self, values: np.ndarray, layout: tuple[int, int]) -> np.ndarray:
        """Per device, the sum of ``values`` (one per device) over the neighbours whose heaters warm it: what its
        control picks up, times the chip's crosstalk.  Default: no neighbours (a platform without heater
        crosstalk)."""
        return np.zeros_like(np.asarray(values, np.float64))

    def per_setting(self, values: np.ndarray, settings_shape: tuple[int, ...], layout: tuple[int, int]) -> np.ndarray:
        """Per-device ``values`` (:meth:`device_shape`) at every setting of a layer (``settings_shape``): the value of
        the device each setting drives.  Default: the settings' trailing axes are the devices (a mesh's shifters,
        the same for each of its blocks)."""
        values = np.asarray(values)
        if tuple(settings_shape[len(settings_shape) - values.ndim:]) != values.shape:
            raise NotImplementedError(f"{self.name}: which device a setting of shape {settings_shape} drives is "
                                      "not known to this platform")
        return np.broadcast_to(values, settings_shape)

    @abstractmethod
    def sample_fabrication(self, spec: Mapping[str, Any], layout: tuple[int, int],
                           rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Draw the truth of one fabricated chip from its process.yaml section.

        Returns ``{offset_name: ..., **param_units keys, "drift_coefficient": ...}``, each of its
        :meth:`field_shape` (drift: :meth:`device_shape`).
        """

    # ---------------------------------------------------------------------------------------- mapping
    @abstractmethod
    def map_layer(self, weight: np.ndarray | None, controls: np.ndarray, calibration: Mapping[str, np.ndarray],
                  environment: Any, layout: tuple[int, int], params: Mapping[str, Any] | None = None,
                  weight_shape: tuple[int, int] | None = None) -> LayerMapping:
        """Settings realising a trained (out, in) = ``weight_shape`` layer on one chip: its logical ``weight``
        (linear platforms, whose shape it gives; None otherwise) and the ``controls`` training chose (the target
        of a non-linear layer, a guide otherwise).

        Only the chip's ``calibration`` and ``environment`` (heater range, DAC) are used.
        """

    def layer_settings(self, weight: np.ndarray | None, controls: np.ndarray, calibration: Mapping[str, np.ndarray],
                       environment: Any, layout: tuple[int, int], params: Mapping[str, Any] | None = None,
                       weight_shape: tuple[int, int] | None = None) -> np.ndarray:
        """:meth:`map_layer`'s settings alone, the same bits, for a caller that programs them and reads no report
        (in-situ training maps every layer at every pass); a platform whose report costs much overrides it."""
        return self.map_layer(weight, controls, calibration, environment, layout, params, weight_shape).settings

    def map_fleet_layer(self, weight: np.ndarray | None, controls: np.ndarray,
                        calibrations: Sequence[Mapping[str, np.ndarray]], environments: Sequence[Any],
                        layout: tuple[int, int], params: Mapping[str, Any] | None = None,
                        weight_shape: tuple[int, int] | None = None) -> list[LayerMapping]:
        """:meth:`map_layer` for many chips of one ``layout`` at once (their calibrations and environments, in
        order): a platform whose mapping is a fit overrides it to solve every chip together.  A chip's result must
        not depend on the chips mapped with it (beyond float rounding), and must be :meth:`map_layer`'s."""
        return [self.map_layer(weight, controls, calibration, environment, layout, params, weight_shape)
                for calibration, environment in zip(calibrations, environments, strict=True)]

    # ------------------------------------------------------------------------------------- simulation
    @abstractmethod
    def fleet_layer(self, weight_shape: tuple[int, int], settings: Sequence[np.ndarray], profiles: Sequence[Any],
                    layout: tuple[int, int], device: Any = "cpu", dtype: Any = None) -> dict[str, Any]:
        """What does not change between evaluations of one layer on these chips: torch tensors (float32 unless
        ``dtype`` says otherwise) with a leading chip axis, on the torch ``device``."""

    def fleet_truth(self, weight_shape: tuple[int, int], profiles: Sequence[Any], layout: tuple[int, int],
                    device: Any = "cpu", dtype: Any = None) -> dict[str, Any]:
        """The part of :meth:`fleet_layer`'s state that the chips alone decide, whatever the settings: a chip
        re-programmed at every in-situ step keeps it and pays only :meth:`fleet_programmed`.  By default nothing is
        gathered ahead (the arguments are kept); a platform whose gathering costs overrides both."""
        return {"weight_shape": weight_shape, "profiles": profiles, "layout": layout, "device": device,
                "dtype": dtype}

    def fleet_programmed(self, truth: dict[str, Any], settings: Sequence[np.ndarray]) -> dict[str, Any]:
        """:meth:`fleet_layer`'s state from :meth:`fleet_truth` and the chips' ``settings``."""
        return self.fleet_layer(truth["weight_shape"], settings, truth["profiles"], truth["layout"],
                                truth["device"], truth["dtype"])

    @abstractmethod
    def fleet_forward(self, state: dict[str, Any], chips: slice, h: Any, conditions: ChipState,
                      noise: Any = None, gain: Any = None) -> Any:
        """(chips, out, samples) outputs of the chips in ``chips`` for inputs ``h``, (in, samples) shared by
        every chip or (chips, in, samples), times the digital ``gain`` (out,) when given.

        Samples are on the fast axis so that every product is one contiguous GEMM per chip, of the same shape
        whatever the chips around it (a chip gives the same outputs, bit for bit, alone or in a fleet; the
        elementwise physics must round alike wherever a chip falls in the batch and whatever the threads: see
        ``mesh_unitary(aligned=True)``).  ``noise`` is the chips' detector-noise draw, (chips,
        *:meth:`noise_shape`), already scaled.  The result is a new tensor, which the caller changes in place.
        """

    def noise_shape(self, weight_shape: tuple[int, int], params: Mapping[str, Any] | None = None) -> tuple[int, ...]:
        """Shape of one chip's detector-noise draw for one layer and evaluation (default: the output vector)."""
        return (weight_shape[0],)

    # ----------------------------------------------------------------------------------- calibration
    #: True when a chip of this platform can be calibrated by sweeping its devices one at a time
    #: (:meth:`device_response` and :meth:`fit_response` are implemented).
    sweep_calibration: bool = False

    def device_response(self, truth: Mapping[str, np.ndarray], drift: np.ndarray, rows: np.ndarray,
                        cols: np.ndarray, controls: np.ndarray, delta_T: float) -> np.ndarray:
        """(devices, points) weight device (rows[d], cols[d]) realises at each control, every other device
        at 0 (no crosstalk): what a calibration sweep measures, before measurement noise."""
        raise NotImplementedError(f"calibration by measurement is not implemented for {self.name}")

    def fit_response(self, controls: np.ndarray, measured: np.ndarray, iterations: int = 40,
                     device: Any = "cpu") -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Fit the transfer function to a sweep, (devices, points): per device the calibration fields
        (offset and parameters, each (devices,)) and the rms fit residual (devices,); on the torch ``device``."""
        raise NotImplementedError(f"calibration by measurement is not implemented for {self.name}")


class PhaseControls:
    """Controls that are optical phases (rad, periodic): a layer starts from phases uniform in [0, 2 pi) and is
    wrapped back into [0, 2 pi) after each step, the same physics and what a phase drive sets (meshes, masks)."""

    def init_controls(self, weight_shape: tuple[int, int], generator: Any) -> Any:
        import torch

        shape = self.control_shape(weight_shape)               # type: ignore[attr-defined]
        return (torch.rand(shape, generator=generator, dtype=torch.float64) * TWO_PI).to(torch.float32)

    def project(self, controls: Any) -> None:
        import torch

        with torch.no_grad():
            controls.remainder_(TWO_PI)


class LinearPlatform(Platform):
    """A platform whose layer is linear in its inputs, ``y = W(controls) x``: rings, the coherent mesh, masks.

    It implements the operator through its weights: the nominal ``W`` (:meth:`nominal_weights`, training), the
    weights each real chip realises (:meth:`fleet_weights`, a stack of chips), and a Gemm in the ONNX graph with
    ``W`` as its initializer.  Detector noise is a perturbation of each realised weight (balanced detection of
    each weight's product, drawn once per chip and evaluation).
    """

    linear = True

    def row_period(self, layout: tuple[int, int]) -> int | None:
        """How many rows of devices a layer's rows are tiled over (a ring bank: its R rows), where mapping may move
        a layer's outputs onto other rows (padding the layer to whole tiles) to keep them off faulty devices;
        None where it may not (a mesh mixes every output of a block)."""
        return None

    def logical_weights(self, state: dict[str, Any], chips: slice, conditions: ChipState) -> Any:
        """:meth:`fleet_weights` in the layer's own output order: a chip whose mapping moved its outputs to other
        rows (``state["rows"]``, (chips, out) row of each output) has its rows gathered back."""
        W = self.fleet_weights(state, chips, conditions)
        rows = state.get("rows")
        if rows is None:
            return W
        index = rows[chips][:, :, None].expand(-1, -1, W.shape[2])
        return W.gather(1, index)

    def held_weights(self, calibration: Mapping[str, np.ndarray], layout: tuple[int, int],
                     weight_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
        """Weights a chip realises whatever is programmed, when each weight has a device of its own: per weight
        (out, in), whether its device is faulty and the weight it then gives.  None when the calibration flags no
        faulty device, or where a device sets many weights at once (a mesh: its mapper fits around a faulty one)."""
        return None

    @abstractmethod
    def nominal_weights(self, controls: Any, weight_shape: tuple[int, int]) -> Any:
        """(out, in) weights the nominal device realises at ``controls``; differentiable (torch)."""

    @abstractmethod
    def weights_to_controls(self, weight: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
        """Controls that realise ``weight`` on the nominal device: (controls, clipped, row_scale).

        The nominal device realises ``row_scale[:, None] * nominal_weights(controls)``, the
        closest it can get to ``weight``; ``row_scale`` (>= 1) is folded into the digital gain
        by the caller, and ``clipped`` counts the weights it could not reach.
        """

    #: Ways :meth:`import_controls` may choose among controls that realise the same nominal weights (``train
    #: --init-from``); a platform with one control per weight has only the plain mapping.
    import_mappings: tuple[str, ...] = ("positive",)

    def import_controls(self, weight: np.ndarray, input_mean: np.ndarray, mapping: str,
                        seed: int) -> tuple[np.ndarray, int, np.ndarray]:
        """Controls for an imported model's ``weight`` (as :meth:`weights_to_controls`, the same nominal weights),
        chosen by ``mapping`` among the equivalent ones; ``input_mean`` (in,) is the layer's mean input on the
        training set.  The default: :meth:`weights_to_controls`."""
        return self.weights_to_controls(weight)

    @abstractmethod
    def fleet_weights(self, state: dict[str, Any], chips: slice, conditions: ChipState) -> Any:
        """(chips, out, in) weights the chips in ``chips`` realise under ``conditions``, before detector noise: a new
        tensor (never a view of ``state``), which :meth:`fleet_forward` changes in place."""

    def perturb_inputs(self, x: Any, perturbation: Any) -> Any:
        """Torch: a layer's inputs as a perturbed setup shows them to the devices (free-space misalignment)."""
        raise NotImplementedError(f"{self.name} layers have no whole-setup perturbation")

    def forward(self, controls: Any, x: Any, weight_shape: tuple[int, int], perturbation: Any = None) -> Any:
        if perturbation is not None:
            x = self.perturb_inputs(x, perturbation)
        return x @ self.nominal_weights(controls, weight_shape).T

    def noise_shape(self, weight_shape: tuple[int, int], params: Mapping[str, Any] | None = None) -> tuple[int, ...]:
        return tuple(weight_shape)

    def fleet_forward(self, state: dict[str, Any], chips: slice, h: Any, conditions: ChipState,
                      noise: Any = None, gain: Any = None) -> Any:
        """``(W + noise) * gain`` times the inputs, one GEMM per chip; the gain is folded into the weights, which
        are smaller than the outputs whenever a batch has more samples than the layer has inputs."""
        import torch

        W = self.logical_weights(state, chips, conditions)
        if noise is not None:
            W += noise
        if gain is not None:
            W *= gain[:, None]
        # one GEMM per chip, also when the inputs are shared (matmul would fold the chips into one product,
        # whose kernel, and so the last bits, could depend on how many chips are evaluated together)
        return torch.bmm(W, h.expand(W.shape[0], *h.shape) if h.dim() == 2 else h)

    def onnx_layer(self, name: str, weight: np.ndarray | None, controls: np.ndarray, weight_shape: tuple[int, int],
                   x_name: str, out_name: str, params: Mapping[str, Any] | None = None) -> tuple[list[Any], list[Any]]:
        """``Gemm(x, W, transB=1)`` with the logical weights ``{name}.weight`` as the initializer."""
        from onnx import helper, numpy_helper

        weight_name = f"{name}.weight"
        return ([helper.make_node("Gemm", [x_name, weight_name], [out_name], transB=1, name=f"{name}.onchip")],
                [numpy_helper.from_array(np.asarray(weight, dtype=np.float32), weight_name)])

    def nominal_outputs(self, weight: np.ndarray | None, controls: np.ndarray, weight_shape: tuple[int, int],
                        x: np.ndarray, params: Mapping[str, Any] | None = None) -> np.ndarray:
        return np.asarray(x, np.float64) @ np.asarray(weight).T.astype(np.float64)

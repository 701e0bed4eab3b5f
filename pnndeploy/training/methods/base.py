"""What a training method is: its settings, its checks, its step, and what the model file records of it.

A method is a :class:`Method` subclass in one module of this package and one line in its registry
(:data:`pnndeploy.training.methods.METHODS`).  Everything else reads it from there: the `train` flags and their help,
the YAML config keys, the refusal of a setting another method owns, the demo's rows and the sweep's cells.
Modules here import no torch (the command line reads them to build its options); a step's torch work is imported
when training starts.

The setup box (:func:`setup_box_settings`) is not a method's: it is FD-SAT's, over the axes a platform declares it
cannot differentiate (a free-space setup's misalignment), for every method with ``trains_setup``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, make_dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pnndeploy.platforms import PLATFORMS, get_platform
from pnndeploy.platforms.axes import PerturbationAxis
from pnndeploy.training.settings import flag, setting

if TYPE_CHECKING:
    from pnndeploy.training.config import TrainConfig


@dataclass(frozen=True)
class NoSettings:
    """A method without settings of its own."""


@dataclass(frozen=True)
class MethodVariant:
    """One way to run a method that the demo compares: a row name, its settings, what it means."""

    name: str
    settings: dict[str, Any]
    what: str


class Step:
    """One training step of a method: forward and backward on a batch, leaving the gradient the optimiser steps
    with in ``.grad``; returns (logits, loss) of the pass the epoch's figures are counted on."""

    def __call__(self, model: Any, loss_fn: Any, xb: Any, yb: Any, index: int) -> tuple[Any, Any]:
        logits = model(xb)
        loss = loss_fn(logits, yb)
        loss.backward()
        return logits, loss

    def records(self) -> dict[str, Any]:
        """What the step learnt that the model file records (spec-SAT: its perturbation set)."""
        return {}


class Method:
    """A training method.  Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    #: One sentence for `train --method`'s help.
    summary: ClassVar[str]
    #: Its own settings (a frozen dataclass of :func:`~pnndeploy.training.settings.setting` fields).
    settings: ClassVar[type] = NoSettings
    #: Whose settings its model file records besides the run's (None: its own).
    recorded: ClassVar[type | None] = None
    default_hidden: ClassVar[tuple[int, ...]] = (32,)
    #: One of the paper's baselines: listed before the sharpness-aware methods where methods are compared (demo).
    baseline: ClassVar[bool] = False
    #: Trains the weight matrix W itself where a layer is one (the baseline), not the controls.
    trains_weights: ClassVar[bool] = False
    #: Trains against the setup box by FD-SAT on a platform with non-differentiable axes.
    trains_setup: ClassVar[bool] = False
    #: The setting to lower when training diverges, besides --lr (None: --lr only).
    radius: ClassVar[str | None] = None

    def check(self, config: "TrainConfig") -> None:
        """Rules across this method's settings (each setting's own bounds are checked already)."""

    def refusal(self, name: str, config: "TrainConfig") -> str:
        """The error for a setting this method does not take, given at a value other than its default."""
        from pnndeploy.training.methods import METHODS

        takers = [m.name for m in METHODS.values() if name in setting_names(m)]
        owner = owner_of(name)
        return (f"{flag(name)} is a setting of {owner} and --method {self.name} would ignore it; use it with "
                f"--method {' or '.join(takers)}, or drop it")

    def control_noise(self, config: "TrainConfig") -> float:
        """Std of the noise on every control at each training forward, control units."""
        return 0.0

    def box_half_widths(self, axes: list[PerturbationAxis], config: "TrainConfig") -> list[float]:
        """FD-SAT's box along ``axes`` when no ``--robust-*`` is given: the audit's requirement."""
        return [float(axis.require) for axis in axes]

    def start(self, model: Any, config: "TrainConfig", optimizer: Any, total_steps: int) -> Step:
        """The step this method takes, for a model about to be trained for ``total_steps`` steps."""
        model.set_control_noise(self.control_noise(config))
        return Step()

    def model_records(self, config: "TrainConfig", learnt: dict[str, Any]) -> dict[str, Any]:
        """What the model file records of the method beyond its settings: ``rho`` (its radius, 0 for none) and
        any further keys (``learnt``: the step's :meth:`Step.records`)."""
        return {"rho": 0.0, **learnt}

    def record(self, config: "TrainConfig", recorded: dict[str, Any]) -> dict[str, Any]:
        """The settings as the model file records them, given the generic record (a setting with two spellings
        records its resolved one); unchanged here."""
        return recorded

    def variants(self, platform: str) -> tuple[MethodVariant, ...]:
        """The demo's rows for this method on ``platform``."""
        return (MethodVariant(self.name, {"method": self.name}, self.summary),)

    def for_fleet(self, process_path: Any) -> dict[str, Any]:
        """Settings that aim the method at the fleet whose process spec is ``process_path`` (demo, sweep)."""
        return {}

    def reads(self, config: "TrainConfig") -> list[Any]:
        """The files a run reads beyond its settings, checked now (a sweep refuses a bad cell before any training
        and hashes these into the cell's key); none here."""
        return []


def setting_names(method: Method) -> set[str]:
    """The settings ``method`` takes: its own and, where it trains the setup, the setup box's."""
    own = {f.name for f in fields(method.settings)}
    return own | ({f.name for f in fields(SetupBox)} if method.trains_setup else set())


def owner_of(name: str) -> str:
    from pnndeploy.training.config import TrainConfig

    found = next((f for f in fields(TrainConfig) if f.name == name), None)
    return found.metadata["setting"].owner if found is not None else "another method"



# ------------------------------------------------------------------------------------- settings methods share
def per_platform(value: Any) -> str:
    """A per-platform figure for help texts: "VALUE UNITS (NAME), ..."."""
    return ", ".join(f"{value(p)} {p.control_units} ({name})" for name, p in sorted(PLATFORMS.items()))


def control_noise_setting() -> Any:
    """``--noise``: Gaussian noise on every control at each training forward (noise-aware and sat)."""
    return setting(None, minimum=0.0, owner="training noise on the controls", inert=(0.0,),
                   help="Std of Gaussian noise on each control at every training step, control units",
                   default_text=f"noise-aware: {per_platform(lambda p: p.default_noise)}; sat: 0, off (with "
                                "--drift-budget it covers random errors too)")


def sat_every_setting() -> Any:
    """``--sat-every``: efficient SAT's refresh period (sat and spec-sat)."""
    return setting(1, minimum=1, metavar="K", owner="SAT's ascent step",
                   help="sat and spec-sat: compute a fresh ascent every K steps and reuse it in between (one "
                        "forward/backward instead of two); 1: full SAT; 5 matched its fleet accuracy at 0 K over five "
                        "seeds at about 0.7x its time (README, Performance)")


def ascent_setting() -> Any:
    """``--ascent``: where the ascent points (sat and spec-sat)."""
    return setting("gradient", choices=("gradient", "momentum"), owner="SAT's ascent step", record_default=False,
                   help="sat and spec-sat: where the ascent points. gradient: a clean forward/backward first (two "
                        "passes per step); momentum: Adam's running mean of the gradients, no extra pass "
                        "(Momentum-SAM; the cheap efficient SAT, README Performance)")


def check_ascent(config: "TrainConfig") -> None:
    """A momentum ascent has no extra pass to reuse."""
    from pnndeploy.errors import ConfigError

    if config.ascent == "momentum" and config.sat_every != 1:
        raise ConfigError("--ascent momentum takes no extra pass to reuse; drop --sat-every (it caches a "
                          "gradient ascent) or use --ascent gradient")


# ------------------------------------------------------------------------------------------------ the setup box
def setup_axes(platform: str) -> list[PerturbationAxis]:
    """The axes of ``platform``'s setup that training cannot differentiate: FD-SAT's box, in the model's order."""
    return [a for a in get_platform(platform).axes if not a.differentiable]


def box_setting(axis: PerturbationAxis) -> str:
    """The config field of the box's half-width along ``axis`` (axes that share an option stem share one)."""
    return "robust_" + (axis.flag or axis.name).replace("-", "_")


def setup_box_settings() -> type:
    """FD-SAT's settings, generated from every platform's non-differentiable axes: a half-width per option stem
    (``--robust-STEM``) and the ascent's radius (``--misalignment-rho``)."""
    stems: dict[str, list[tuple[str, PerturbationAxis]]] = {}
    for name, platform in PLATFORMS.items():
        for axis in platform.axes:
            if not axis.differentiable:
                stems.setdefault(box_setting(axis), []).append((name, axis))
    specs: list[tuple[str, Any, Any]] = []
    for key, owners in stems.items():
        axis = owners[0][1]
        where = " and ".join(sorted({name for name, _ in owners}))
        labels = " and ".join(dict.fromkeys(a.label for _, a in owners))
        units = "FRAC" if axis.units in ("1", "") else axis.units.upper()
        relative = " (relative)" if axis.compose == "multiply" else ""
        specs.append((key, float | None, setting(
            None, minimum=0.0, metavar=units, owner="FD-SAT's setup box",
            help=f"{where} setups, sat and spec-sat: FD-SAT trains for setups off by up to ±{units} of {labels}"
                 f"{relative}",
            default_text=f"spec-sat: Z sigma of the process spec's spread and calibration error; sat: the audit's "
                         f"requirement, {axis.require:g}")))
    if stems:
        specs.append(("misalignment_rho", float, setting(
            0.5, minimum=0.0, metavar="R", owner="FD-SAT's setup box",
            help="Setups without a gradient: FD-SAT's finite-difference ascent from a random state of that box, in "
                 "box half-widths (0: the random draw only)")))
    return make_dataclass("SetupBox", specs, frozen=True, namespace={"__module__": __name__})


#: FD-SAT's settings (``robust_rotation``, ``robust_shift``, ``robust_scale``, ``misalignment_rho`` for the shipped
#: platforms).
SetupBox = setup_box_settings()


def setup_box(config: "TrainConfig") -> tuple[list[float], list[float]] | None:
    """(centre, half-widths) of FD-SAT's box over the platform's non-differentiable axes, or None when the method
    does not train the setup or the platform has no such axis.  A ``--robust-*`` given wins over the method's."""
    from pnndeploy.training.methods import get_method

    method = get_method(config.method)
    axes = setup_axes(config.platform)
    if not axes or not method.trains_setup:
        return None
    given = [getattr(config, box_setting(a)) for a in axes]
    defaults = method.box_half_widths(axes, config) if any(v is None for v in given) else [0.0] * len(axes)
    widths = [float(g) if g is not None else float(d) for g, d in zip(given, defaults)]
    # one width per option stem (the widest of its axes), so the box trained is the one a model file records
    stem = {box_setting(a): max(w for b, w in zip(axes, widths) if box_setting(b) == box_setting(a)) for a in axes}
    return [float(a.centre) for a in axes], [stem[box_setting(a)] for a in axes]

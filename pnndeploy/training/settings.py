"""Training settings declared once: each is a dataclass field whose metadata says what `--help` says of it, how it
is checked and whose it is.

A method's settings (:mod:`pnndeploy.training.methods`) and the run's common ones (:class:`RunSettings`) are
written with :func:`setting`; :class:`~pnndeploy.training.config.TrainConfig`, the `train` flags and their help
texts, the YAML config keys and the checks are all generated from these fields, so a default is written in one
place.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, dataclass, field
from typing import Any, Callable

from pnndeploy.errors import ConfigError
from pnndeploy.formats.digital import KERNEL, MAX_KERNEL
from pnndeploy.platforms import DEFAULT_PLATFORM


@dataclass(frozen=True)
class Setting:
    """How one training setting is described and checked."""

    help: str
    #: What the help says of the default when the value alone does not say it (a None meaning "the method's").
    default_text: str | None = None
    metavar: str | None = None
    #: The values it may take (a click choice on the command line); a callable is asked when the flag is built.
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    #: Bounds: the value must be at least ``minimum``, or above 0 with ``positive``.
    minimum: float | None = None
    positive: bool = False
    #: Comma-separated integers on the command line (widths, channels); ``empty_ok`` allows none.
    widths: bool = False
    empty_ok: bool = False
    #: Whose setting it is, for a refusal naming it ("SAT's ascent step").
    owner: str = ""
    #: Whether a model file records the setting at its default (False: only when changed, so older files stay
    #: byte for byte what they were).
    record_default: bool = True
    #: Values that mean "off", which a method that does not take the setting accepts as well as the default
    #: (``noise: 0``: the baseline's model file records it so).
    inert: tuple[Any, ...] = ()
    #: A file path on the command line (a folder is refused there).
    path: bool = False
    #: KEY=VALUE pairs: a repeatable flag (its name singular) on the command line, a mapping in a config file.
    pairs: bool = False


def setting(default: Any = MISSING, *, factory: Callable[[], Any] | None = None, **description: Any) -> Any:
    """A dataclass field that is a training setting (``description``: :class:`Setting`'s fields)."""
    metadata = {"setting": Setting(**description)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def described(f: Field) -> Setting:
    """The :class:`Setting` of a field made with :func:`setting`."""
    return f.metadata["setting"]


def default_of(f: Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def flag(name: str) -> str:
    """The command-line flag of a setting: ``--batch-size`` for ``batch_size``, ``--platform-option`` (repeatable)
    for ``platform_options``."""
    if name.endswith("_options"):
        name = name.removesuffix("s")
    return "--" + name.replace("_", "-")


def choices_of(s: Setting) -> tuple[str, ...] | None:
    return s.choices() if callable(s.choices) else s.choices


def help_text(f: Field) -> str:
    """What `train --help` says of a setting: its help, then its default."""
    s = described(f)
    default = default_of(f)
    if s.default_text is not None:
        shown = ": " + s.default_text
    elif isinstance(default, bool):
        shown = "on" if default else "off"
    elif isinstance(default, list):
        shown = ",".join(map(str, default)) or "none"
    else:
        shown = f"{default:g}" if isinstance(default, float) else str(default)
    return f"{s.help} (default{shown if s.default_text is not None else ' ' + shown})."


def check(f: Field, value: Any) -> None:
    """Refuse a value outside the setting's type, choices or bounds, naming the flag."""
    s, name = described(f), flag(f.name)
    if value is None:
        return
    choices = choices_of(s)
    if choices is not None and value not in choices:
        raise ConfigError(f"{name} {value!r} is unknown; use one of {', '.join(choices)}")
    if s.widths:
        if (not value and not s.empty_ok) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                                for v in value):
            raise ConfigError(f"{name} must be positive integers (got {value})")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number (got {value})")
    if s.positive and not value > 0:
        raise ConfigError(f"{name} must be positive (got {value})")
    if s.minimum is not None and not value >= s.minimum:
        wanted = f"at least {s.minimum:g}" if isinstance(value, int) else f"a finite number, {s.minimum:g} or more"
        raise ConfigError(f"{name} must be {wanted} (got {value})")


#: The front end's learning rate, as a fraction of --lr, when it comes trained from --init-from: at the full rate
#: five epochs of spec-SAT cost an imported LeNet about a point of its accuracy (README, Bring your own model).
IMPORTED_FRONT_LR = 0.1


@dataclass(frozen=True)
class RunSettings:
    """What every training run has, whatever its method: the model's shape, the data's passes, the seed."""

    #: spec-sat (the default since round 2: it wins the demo with drift compensation, README).
    method: str = setting("spec-sat", help="The training method")
    platform: str = setting(DEFAULT_PLATFORM, help="The platform of the on-chip layers")
    platform_options: dict[str, Any] = setting(
        factory=dict, pairs=True, record_default=False, metavar="KEY=VALUE", default_text="none",
        help="An option of the platform (repeatable; a config's platform_options: mapping), recorded in the model")
    hidden: list[int] | None = setting(
        None, widths=True, empty_ok=True, metavar="W[,W...]|none",
        help="Hidden layer widths, comma-separated; none: the inputs straight onto the output layer",
        default_text="the platform's (d2nn: none, the inputs are the field on its masks), else the method's: 128 "
                     "for spec-sat; 32, round 1's default, for the other methods, so their results reproduce")
    conv: list[int] = setting(
        factory=list, widths=True, empty_ok=True, metavar="C[,C...]", record_default=False,
        help="A digital conv front end: channels per stage (KxK conv, ReLU, 2x2 max-pool; K is --kernel), e.g. "
             "8,16 for 28x28 images; the on-chip layers follow it. Needs image data (digits, digits28, mnist:DIR, cifar10:DIR)")
    kernel: int = setting(
        KERNEL, minimum=1, metavar="K", record_default=False,
        help=f"The conv front end's kernel size, K x K (odd, at most {MAX_KERNEL}; zero padding K//2 keeps the "
             "image's size), e.g. 5 for the paper's LeNet-5. Needs --conv")
    batch_norm: bool = setting(
        False, record_default=False,
        help="Batch norm in the digital front end: after every conv and every digital dense layer, before its "
             "ReLU (the paper's LeNet-5). Folded into the layers' weights at export (exact), so the model file "
             "holds plain layers. Needs --conv or --onchip")
    onchip: int = setting(
        0, minimum=0, metavar="N", record_default=False,
        help="Put only the last N linear layers on the chip (the paper: its last two); the earlier ones run in "
             "electronics. 0: every linear layer on chip")
    epochs: int = setting(30, minimum=1, help="Passes over the training set (0: with --init-from, map the imported "
                                              "model onto the chip without fine-tuning)")
    batch_size: int = setting(32, minimum=1, help="Samples per step")
    lr: float = setting(0.01, positive=True, help="Adam learning rate")
    seed: int = setting(0, help="Seed for the split, the init and the shuffling")
    front_lr: float | None = setting(
        None, minimum=0.0, metavar="FACTOR", record_default=False,
        default_text=f"{IMPORTED_FRONT_LR:g} with --init-from (a trained front end is fine-tuned, not learned "
                     "again), else 1",
        help="The digital front end's learning rate as a fraction of --lr (0: its weights are not trained; batch "
             "norm statistics still follow the data); the on-chip layers and "
             "their digital gain and bias keep --lr. Needs a front end (--conv, or --onchip N below the model's "
             "linear layers)")
    init_from: str | None = setting(
        None, path=True, metavar="MODEL.onnx", record_default=False,
        help="Start from a plain digital ONNX model (Gemm/MatMul, Conv, BatchNormalization, Relu, MaxPool, input "
             "normalisation, as torch.onnx.export or tf2onnx write them): its layers and weights become the front "
             "end, its last --onchip linear layers are mapped onto the chip and fine-tuned. The architecture comes "
             "from the file (README, Bring your own model)")
    init_mapping: str = setting(
        "balanced", choices=("positive", "random", "balanced"), record_default=False,
        help="With --init-from, which of the equivalent controls the imported on-chip weights start at (on "
             "rings, the sign of each ring's detuning; the nominal weights are the same): positive, every ring on the same "
             "flank, so a common temperature shift moves every weight the same way; random, a sign per ring from "
             "--seed; balanced, signs chosen so that each output's drift sensitivity (dW/dx times the mean input) "
             "sums to about zero. Platforms with one control per weight, and methods that train W (standard), map "
             "as positive (README, Bring your own model)")

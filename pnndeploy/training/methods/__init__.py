"""The training methods, one module each, and their registry.

A new method is a :class:`~pnndeploy.training.methods.base.Method` subclass in a module here and one line in
:data:`METHODS` (README, "Adding a method"); the `train` flags, config keys, refusals, demo rows and sweep cells
follow from it.  The order of :data:`METHODS` is the order of the settings in a model file's ``config``.
"""

from __future__ import annotations

from typing import Any

from pnndeploy.errors import ConfigError
from pnndeploy.training.methods.base import Method, MethodVariant, Step
from pnndeploy.training.methods.noise_aware import NoiseAware
from pnndeploy.training.methods.sat import SAT
from pnndeploy.training.methods.spec_sat import SpecSAT
from pnndeploy.training.methods.standard import Standard

#: Every method by the name `--method` takes.
METHODS: dict[str, Method] = {m.name: m for m in (
    SAT(),
    SpecSAT(),
    Standard(),
    NoiseAware(),
)}


def get_method(name: str) -> Method:
    """The method called ``name``; one clear line for an unknown one."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"--method {name!r} is unknown; use one of {', '.join(METHODS)}") from None


#: Where the training loop's names lived before methods were a package (``pnndeploy.training.methods.train``).
_LOOP = ("train", "build_model", "TrainResult", "EpochRecord", "TrainingDiverged", "spec_perturbations",
         "evaluation_tensors")


def __getattr__(name: str) -> Any:
    if name in _LOOP:               # torch loads with the loop, not with the registry
        from pnndeploy.training import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["METHODS", "Method", "MethodVariant", "Step", "get_method"]

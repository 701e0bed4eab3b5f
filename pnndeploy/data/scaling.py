"""The raw-to-optical input scaling: raw features -> optical powers in [0, 1].

A physical network takes optical powers in [0, 1], so every dataset carries the
:class:`InputScaling` that maps its raw features there.  The scaling is stored in
the exported model's metadata so that deployment scales inputs exactly as
training did.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from pnndeploy.errors import DatasetError, ModelFileError
from pnndeploy.untrusted import brief

__all__ = ["InputScaling"]

def _one_line(text: object) -> str:
    """Errors are printed as one line by the CLI, so fold any newlines away."""
    return " ".join(str(text).split("\n")).strip()


def _data_error(msg: str) -> DatasetError:
    return DatasetError(_one_line(msg))


def _model_error(msg: str) -> ModelFileError:
    return ModelFileError(_one_line(msg))


def _normalize_param(name: str, value: float | np.ndarray) -> float | np.ndarray:
    """Store a parameter as a float32-exact Python float or a read-only float32 vector.

    Normalising once makes ``to_json`` exact and equality/hash well defined.
    Programming errors (not user input) raise ValueError here; ``from_json``
    validates user-facing metadata before it ever gets here.
    """
    if isinstance(value, bool):
        raise ValueError(f"InputScaling.{name} must be a number or a 1-D array, not bool")
    if isinstance(value, numbers.Real) or (isinstance(value, np.ndarray) and value.ndim == 0):
        v = np.float32(value)
        if not np.isfinite(v):
            raise ValueError(f"InputScaling.{name} must be finite in float32, got {value!r}")
        return float(v)
    arr = np.array(value, dtype=np.float32)  # copy: the caller's array must not alias ours
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"InputScaling.{name} must be a scalar or a non-empty 1-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"InputScaling.{name} must be finite in float32")
    arr = np.ascontiguousarray(arr)
    arr.setflags(write=False)
    return arr


def _param_key(value: float | np.ndarray) -> tuple:
    if isinstance(value, np.ndarray):
        return ("vec", value.tobytes())
    return ("scalar", value)


def _param_json(value: float | np.ndarray) -> float | list[float]:
    if isinstance(value, np.ndarray):
        return [float(v) for v in value]  # float32 -> float64 is exact
    return float(np.float32(value))


@dataclass(frozen=True, eq=True)
class InputScaling:
    """Raw features -> optical powers in [0, 1]: clip((raw - offset) * scale, 0, 1).

    ``offset`` and ``scale`` are each a scalar or a per-feature vector (shape (F,)).
    They are kept in float32 (the precision used on the device path) so that the
    JSON written into a model reproduces training's scaling bit for bit.
    """

    offset: float | np.ndarray
    scale: float | np.ndarray

    def __post_init__(self) -> None:
        offset = _normalize_param("offset", self.offset)
        scale = _normalize_param("scale", self.scale)
        if np.any(np.asarray(scale) <= 0):
            raise ValueError("InputScaling.scale must be > 0 (in float32)")
        if isinstance(offset, np.ndarray) and isinstance(scale, np.ndarray) and offset.shape != scale.shape:
            raise ValueError(f"InputScaling offset has {offset.size} features but scale has {scale.size}")
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "scale", scale)

    # Arrays make the generated __eq__/__hash__ unusable, so compare by value.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InputScaling):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple:
        return (_param_key(self.offset), _param_key(self.scale))

    @property
    def n_features(self) -> int | None:
        """Feature count fixed by per-feature parameters, or None when both are scalars."""
        for p in (self.offset, self.scale):
            if isinstance(p, np.ndarray):
                return int(p.size)
        return None

    def apply(self, X: np.ndarray) -> np.ndarray:
        """Scale raw features (last axis = features) to float32 optical powers in [0, 1].

        NaN inputs stay NaN (clip cannot map them); the loaders guarantee finite data.
        """
        try:
            Xf = np.asarray(X, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise _data_error(f"input features are not numeric ({exc}); pass a numeric array") from None
        nf = self.n_features
        if nf is not None and (Xf.ndim == 0 or Xf.shape[-1] != nf):
            got = "a scalar" if Xf.ndim == 0 else f"{Xf.shape[-1]} features"
            raise _data_error(
                f"input has {got} but the input scaling expects {nf}; use data with the same features as training"
            )
        offset = np.float32(self.offset) if not isinstance(self.offset, np.ndarray) else self.offset
        scale = np.float32(self.scale) if not isinstance(self.scale, np.ndarray) else self.scale
        out = (Xf - offset) * scale
        np.clip(out, 0.0, 1.0, out=out)
        return np.ascontiguousarray(out, dtype=np.float32)

    def to_json(self) -> dict:
        """JSON-ready dict for model metadata; floats are the exact float32 values."""
        return {"offset": _param_json(self.offset), "scale": _param_json(self.scale), "clip": [0.0, 1.0]}

    @classmethod
    def from_json(cls, d: dict) -> "InputScaling":
        """Rebuild from model metadata, refusing anything that ``to_json`` could not have written."""
        where = "model metadata input_scaling"
        fix = "the model file is damaged or was not written by pnndeploy; re-export it with pnndeploy"
        if not isinstance(d, dict):
            raise _model_error(f"{where} is a {type(d).__name__}, expected an object; {fix}")
        for key in ("offset", "scale"):
            if key not in d:
                raise _model_error(f"{where} has no '{key}' entry; {fix}")
        if "clip" in d:
            clip = d["clip"]
            ok = (
                isinstance(clip, (list, tuple))
                and len(clip) == 2
                and all(isinstance(c, numbers.Real) and not isinstance(c, bool) for c in clip)
                and float(clip[0]) == 0.0
                and float(clip[1]) == 1.0
            )
            if not ok:
                raise _model_error(f"{where} clip is {brief(clip)}, expected [0.0, 1.0]; {fix}")

        def number(key: str, v: object, i: int | None) -> float:
            label = key if i is None else f"{key}[{i}]"
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise _model_error(f"{where} {label} is {brief(v)}, expected a number; {fix}")
            f = float(v)
            f32 = np.float32(f) if math.isfinite(f) and abs(f) <= float(np.finfo(np.float32).max) else np.float32("inf")
            if not np.isfinite(f32):
                raise _model_error(f"{where} {label} is {brief(v)}, expected a finite float32 number; {fix}")
            if key == "scale" and not f32 > 0:
                raise _model_error(f"{where} {label} is {brief(v)}, expected a number > 0 (and above float32 underflow); {fix}")
            return f

        params: dict[str, float | np.ndarray] = {}
        for key in ("offset", "scale"):
            v = d[key]
            if isinstance(v, (list, tuple)):
                if len(v) == 0:
                    raise _model_error(f"{where} {key} is an empty list; {fix}")
                params[key] = np.array([number(key, x, i) for i, x in enumerate(v)], dtype=np.float64)
            else:
                params[key] = number(key, v, None)
        o, s = params["offset"], params["scale"]
        if isinstance(o, np.ndarray) and isinstance(s, np.ndarray) and o.shape != s.shape:
            raise _model_error(f"{where} offset has {o.size} values but scale has {s.size}; {fix}")
        try:
            return cls(offset=o, scale=s)
        except ValueError as exc:  # defensive: every case should be caught above
            raise _model_error(f"{where}: {exc}; {fix}") from None

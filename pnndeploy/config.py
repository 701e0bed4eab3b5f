"""YAML configs for `train`: safe_load only, every key known, every value of the right type."""

from __future__ import annotations

import difflib
import math
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from pnndeploy.errors import ConfigError
from pnndeploy.training import TrainConfig
from pnndeploy.yamlio import read_yaml_file

#: Keys a train config may hold beyond TrainConfig's fields.
EXTRA_KEYS = {"dataset": str, "out": str}


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
        if not items or any(isinstance(v, bool) or not isinstance(v, int) for v in items):
            raise bad("an integer or a list of integers")
        return list(items)
    raise bad(str(kind))

"""Read YAML from users safely: ``yaml.safe_load`` only, duplicate keys refused, every failure one line.

``safe_load`` never builds Python objects (a ``!!python/...`` tag is an
error), but it silently keeps the last of two equal keys; a config that says
``epochs: 5`` and, further down, ``epochs: 50`` is almost surely a mistake, so
the node tree is composed first (composing constructs nothing) and checked.
"""

from __future__ import annotations

from typing import Any

import yaml

from pnndeploy.errors import ConfigError


def _position(mark: Any) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _check_duplicates(node: Any, where: str, seen: set[int]) -> None:
    """Refuse a mapping with two equal scalar keys anywhere in the tree (aliases visited once)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, yaml.MappingNode):
            keys: dict[tuple[str, str], Any] = {}
            for key_node, value_node in current.value:
                if isinstance(key_node, yaml.ScalarNode):
                    ident = (key_node.tag, key_node.value)
                    if ident in keys:
                        first = keys[ident]
                        raise ConfigError(
                            f"{where}: key {key_node.value!r} appears twice (line {first.line + 1} and "
                            f"line {key_node.start_mark.line + 1}); keep one of them")
                    keys[ident] = key_node.start_mark
                stack.extend((key_node, value_node))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)


def load_yaml(text: str, where: str, fix: str = "fix the YAML") -> Any:
    """``yaml.safe_load(text)`` with duplicate keys refused; ConfigError (one line) naming ``where``."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_duplicates(node, where, set())
        return yaml.safe_load(text)
    except ConfigError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        context = getattr(exc, "context", None)
        if context and "constructor" in str(problem):
            problem = f"{problem} ({context})"
        text_problem = " ".join(str(problem).split())
        raise ConfigError(f"{where}: {text_problem}{_position(mark)}; {fix} "
                          "(only plain values are allowed, no !!python tags)") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to read; {fix}") from None
    except Exception as exc:  # noqa: BLE001 - safe_load raises ValueError etc. for values like 2026-13-45
        detail = " ".join(str(exc).split())[:120]
        raise ConfigError(f"{where}: a value cannot be read ({detail}), e.g. an impossible date or a "
                          f"mistyped !!tag; {fix}") from None


def read_yaml_file(path: Any, where: str, missing_hint: str, fix: str = "fix the YAML") -> Any:
    """Read a UTF-8 YAML file with :func:`load_yaml`; every I/O or decoding problem is a ConfigError."""
    from pathlib import Path

    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found; {missing_hint}") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: is a folder, not a YAML file; {missing_hint}") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc}); {missing_hint}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text (byte {exc.start}); save it as a UTF-8 YAML file") from None
    return load_yaml(text, where, fix)


__all__ = ["load_yaml", "read_yaml_file"]

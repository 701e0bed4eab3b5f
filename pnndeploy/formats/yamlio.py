"""Read YAML from users safely: ``safe_load`` semantics, duplicate keys refused, bounded, every failure one line.

The safe loader never builds Python objects (a ``!!python/...`` tag is an
error), but it silently keeps the last of two equal keys; a config that says
``epochs: 5`` and, further down, ``epochs: 50`` is almost surely a mistake, so
the node tree is composed first (composing constructs nothing) and checked.

A config may come from someone else, so composing is bounded: a few hundred
bytes of nested aliases ("billion laughs") expand into gigabytes wherever the
value is walked (a message printing it, ``json.dumps``), and deep nesting
crashes whatever recurses into it.  The loader counts every node as it is
composed, an alias as the whole subtree it stands for, and refuses the file
before anything is constructed.
"""

from __future__ import annotations

from typing import Any

import yaml

from pnndeploy.errors import ConfigError
from pnndeploy.untrusted import FileProblem, brief, read_bounded, size_text

#: Largest YAML file read (configs, sweep grids and process specs are a few KiB).
MAX_YAML_BYTES = 1 << 20
#: Deepest nesting of collections (the shipped files nest 3 deep).
MAX_YAML_DEPTH = 32
#: Most nodes in a document, an alias counted as every node of what it stands for.
MAX_YAML_NODES = 100_000


class _Refused(Exception):
    """Composition stopped at a limit; ``mark`` is where."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem, self.mark = problem, mark


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that bounds nesting depth and the expanded node count while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}   # id(node) -> nodes it expands to (every node stays alive while composing)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)   # the anchored node itself, shared
            if id(node) not in self._sizes:
                raise _Refused(f"alias *{brief(event.anchor, 40, quote=False)} refers to a collection that "
                               "contains it (a recursive structure)", event.start_mark)
            return node
        if self._depth >= MAX_YAML_DEPTH:
            raise _Refused(f"collections are nested more than {MAX_YAML_DEPTH} levels deep", event.start_mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        size = 1 + sum(self._sizes[id(child)] for child in children)
        if size > MAX_YAML_NODES:
            raise _Refused(f"expands to more than {MAX_YAML_NODES} values (nested aliases: an 'alias bomb'?)",
                           node.start_mark)
        self._sizes[id(node)] = size
        return node


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
                            f"{where}: key {brief(key_node.value)} appears twice (line {first.line + 1} and "
                            f"line {key_node.start_mark.line + 1}); keep one of them")
                    keys[ident] = key_node.start_mark
                stack.extend((key_node, value_node))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)


def load_yaml(text: str, where: str, fix: str = "fix the YAML") -> Any:
    """``yaml.safe_load(text)``, bounded, with duplicate keys refused; ConfigError (one line) naming ``where``."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: {len(text)} characters, more than the {size_text(MAX_YAML_BYTES)} a YAML "
                          f"file may hold; {fix}")
    loader = None
    try:
        loader = _BoundedLoader(text)    # its reader already refuses unprintable characters
        node = loader.get_single_node()
        _check_duplicates(node, where, set())
        return None if node is None else loader.construct_document(node)
    except ConfigError:
        raise
    except _Refused as exc:
        raise ConfigError(f"{where}: {exc.problem}{_position(exc.mark)}; {fix} (write the values out, at most "
                          f"{MAX_YAML_DEPTH} levels deep)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        context = getattr(exc, "context", None)
        if context and "constructor" in str(problem):
            problem = f"{problem} ({context})"
        text_problem = brief(problem, 160, quote=False)
        raise ConfigError(f"{where}: {text_problem}{_position(mark)}; {fix} "
                          "(only plain values are allowed, no !!python tags)") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to read; {fix}") from None
    except Exception as exc:  # noqa: BLE001 - safe_load raises ValueError etc. for values like 2026-13-45
        detail = brief(exc, 120, quote=False)
        raise ConfigError(f"{where}: a value cannot be read ({detail}), e.g. an impossible date or a "
                          f"mistyped !!tag; {fix}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml_file(path: Any, where: str, missing_hint: str, fix: str = "fix the YAML") -> Any:
    """Read a UTF-8 YAML file with :func:`load_yaml`; every I/O or decoding problem is a ConfigError."""
    from pathlib import Path

    path = Path(path)
    try:
        raw = read_bounded(path, MAX_YAML_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found; {missing_hint}") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: is a folder, not a YAML file; {missing_hint}") from None
    except FileProblem as exc:
        raise ConfigError(f"{where}: {exc.text}; give a YAML file ({missing_hint})") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc}); {missing_hint}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text (byte {exc.start}); save it as a UTF-8 YAML file") from None
    return load_yaml(text, where, fix)


__all__ = ["load_yaml", "read_yaml_file"]

"""The package layout the README's Layout section promises: imports point one way, the API is public and cheap.

Faces (cli) -> experiments -> report -> stages (training, deploy) -> simulation -> formats -> data, platforms
-> foundation (errors, atomic, untrusted).  A module may import its own package or any lower layer, never a higher or a
sibling one, and module-level imports form no cycle.
"""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pnndeploy

PACKAGE = Path(pnndeploy.__file__).parent
REPO = PACKAGE.parent

#: Layer of each part of the package; higher layers may import lower ones only.
LAYERS = {
    "cli": 7,
    "experiments": 6,
    "report": 5,
    "training": 4,
    "deploy": 4,
    "simulation": 3,
    "backends": 3,
    "formats": 2,
    "data": 1,
    "platforms": 1,
    "errors": 0,
    "atomic": 0,
    "untrusted": 0,
    "compute": 1,
    "threads": 0,
    "": 0,            # pnndeploy itself: only __version__ (any other name counts as its module's)
}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(imported pnndeploy module, line) for every import in ``path`` (optionally module level only).

    ``from pnndeploy import NAME`` counts as an import of the module the public API takes NAME from;
    only ``__version__`` is the package's own (the foundation).
    """
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module == "pnndeploy":
            found += [("pnndeploy" if a.name == "__version__" else pnndeploy._API.get(a.name, f"pnndeploy.{a.name}"),
                       node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pnndeploy":
            found.append((node.module, node.lineno))
            # `from pnndeploy.cli import train` imports the submodule pnndeploy.cli.train
            found += [(f"{node.module}.{a.name}", node.lineno) for a in node.names
                      if (PACKAGE.parent / f"{node.module}.{a.name}".replace(".", "/")).with_suffix(".py").exists()]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "pnndeploy"]
    return found


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {_part(m) for m in _modules() if m != "pnndeploy.__main__"}
    assert parts <= set(LAYERS), f"place {sorted(parts - set(LAYERS))} in LAYERS and the README's Layout section"


def test_imports_point_one_way() -> None:
    wrong = []
    for module, path in _modules().items():
        if module in ("pnndeploy", "pnndeploy.__main__"):       # the public API and `python -m`: faces
            continue
        source = _part(module)
        for target, line in _imports(path):
            dest = _part(target)
            if dest == source:
                continue
            if source in ("", "errors", "atomic", "untrusted") or LAYERS[dest] >= LAYERS[source]:
                wrong.append(f"{path.relative_to(REPO)}:{line} ({source}) imports {target} ({dest})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_module_level_imports_have_no_cycle() -> None:
    modules = _modules()
    graph = {m: {t for t, _ in _imports(p, top_level_only=True) if t in modules and t != m}
             for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_public_api_names_resolve_with_docstrings() -> None:
    for name in pnndeploy.__all__:
        if name == "__version__":
            continue
        value = getattr(pnndeploy, name)
        assert inspect.getdoc(value), f"pnndeploy.{name} has no docstring"
        assert value.__module__ == pnndeploy._API[name], f"pnndeploy.{name} lives in {value.__module__}"
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        pnndeploy.nonexistent  # noqa: B018


def test_import_and_help_load_no_heavy_module() -> None:
    code = ("import sys, pnndeploy, pnndeploy.cli; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'h5py', 'sklearn', 'matplotlib', 'numba') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_readme_python_example_runs(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12, "the README promises a short example"
    (tmp_path / "device_profiles").symlink_to(REPO / "device_profiles")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("ideal chip: 0.9"), run.stdout
    assert any(line.startswith("fleet at +1 K:") for line in lines), run.stdout
    assert lines[-1] in ("audit passed", "audit failed"), run.stdout
    assert (tmp_path / "models" / "sat.onnx").is_file()


def test_no_module_outside_platforms_names_a_platform() -> None:
    """Mapping, fleet, transfer, audit, training and the CLI work through the platform interface only."""
    named = []
    for module, path in _modules().items():
        if _part(module) == "platforms":
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if re.search(r"\b(mrr|mzi|freespace)\b", line, re.I):
                named.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not named, "platform names outside platforms/:\n" + "\n".join(named)


#: The longest a function in the package may be (lines, docstring included): about a screen.
LONGEST_FUNCTION = 80


def test_no_function_in_the_package_is_longer_than_a_screen() -> None:
    long = [f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in sorted(PACKAGE.rglob("*.py"))
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > LONGEST_FUNCTION]
    assert not long, "split these: " + "; ".join(long)

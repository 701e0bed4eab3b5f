"""`pnndeploy sweep` (issue 13): a grid of cells, resumable, failures reported; locally and on Ray, identical."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SHIPPED_PROCESS
from pnndeploy.errors import ConfigError
from pnndeploy.experiments.sweep import load_sweep, run_sweep

PNG = b"\x89PNG\r\n\x1a\n"


def _grid(tmp_path: Path, fleet: Path, extra: str = "", name: str = "g.yaml") -> Path:
    path = tmp_path / name
    title = "" if "name:" in extra else "name: tiny"
    path.write_text(f"""
{title}
epochs: 1
hidden: 8
seeds: [0, 1]
grid:
  method: [noise-aware, sat]
fleets: ["{fleet}"]
temperature: "-1:1:1"
days: "0:30:30"
draws: 1
{extra}
""")
    return path


def test_grid_expands_settings_times_seeds(tmp_path: Path, tiny_fleet_dir: Path) -> None:
    spec = load_sweep(_grid(tmp_path, tiny_fleet_dir, "cells:\n  - {method: sat, rho: 0.05}"))
    cells = spec.cells()
    assert [(c["settings"]["method"], c["settings"].get("rho"), c["seed"]) for c in cells] == [
        ("noise-aware", None, 0), ("noise-aware", None, 1), ("sat", None, 0), ("sat", None, 1),
        ("sat", 0.05, 0), ("sat", 0.05, 1)]
    assert all(c["settings"]["epochs"] == 1 and c["settings"]["hidden"] == [8] for c in cells)


@pytest.mark.parametrize("extra, fragment", [
    ("cells:\n  - {method: noise-aware, rho: 0.2}", "cell 3"),              # a setting the method refuses
    ("colour: red", "unknown key 'colour'"),
    ("cells:\n  - {methd: sat}", "'methd' is not a training setting"),
    ("threshold: 2", "threshold must be in [0, 1]"),
    ("audit_require_temperature: -1", "audit_require_temperature"),
    ("name: ../escape", "plain folder name"),
    ("cells:\n  - {method: sat}", "repeats cell 2"),
    ("cells:\n  - {method: spec-sat, robust_to: missing.yaml}", "--robust-to"),
])
def test_bad_grids_are_refused_before_any_work(tmp_path: Path, tiny_fleet_dir: Path, extra: str,
                                               fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        load_sweep(_grid(tmp_path, tiny_fleet_dir, extra))
    assert fragment in str(info.value)


def test_unquoted_ranges_and_repeated_seeds_are_refused(tmp_path: Path, tiny_fleet_dir: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(f'epochs: 1\nfleets: ["{tiny_fleet_dir}"]\ntemperature: -1:1:0.5\n')
    with pytest.raises(ConfigError, match="quoted"):
        load_sweep(path)
    path.write_text(f'epochs: 1\nseeds: [0, 0]\nfleets: ["{tiny_fleet_dir}"]\n')
    with pytest.raises(ConfigError, match="repeat a seed"):
        load_sweep(path)
    path.write_text('epochs: 1\nfleets: [""]\n')
    with pytest.raises(ConfigError, match="fleets must be"):
        load_sweep(path)


def test_ray_missing_is_one_line(cli, one_line_error, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                 tiny_fleet_dir: Path) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)              # as if the extra were not installed
    grid = _grid(tmp_path, tiny_fleet_dir)
    one_line_error(cli("sweep", grid, "--executor", "ray", "--out", tmp_path / "out"), "pip install -e '.[ray]'")
    one_line_error(cli("transfer", "--fleet", "--profiles", tiny_fleet_dir, "--executor", "ray"), "'.[ray]'")
    assert not (tmp_path / "out").exists()


def test_bad_grid_on_the_command_line_is_one_line(cli, one_line_error, tmp_path: Path, tiny_fleet_dir: Path) -> None:
    grid = _grid(tmp_path, tiny_fleet_dir, "seeds: many")
    one_line_error(cli("sweep", grid, "--out", tmp_path / "out"), "seeds")
    assert not (tmp_path / "out").exists()
    one_line_error(cli("sweep", grid, "--address", "auto"), "--executor ray")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, tiny_fleet_dir: Path):
    tmp = tmp_path_factory.mktemp("sweep")
    spec = load_sweep(_grid(tmp, tiny_fleet_dir))
    out = tmp / "out"
    return spec, out, run_sweep(spec, out)


def test_a_sweep_writes_the_table_the_models_and_the_plot(local_run) -> None:
    spec, out, doc = local_run
    assert doc["counts"] == {"done": 4, "skipped": 0, "failed": 0}
    assert (out / "pareto.png").read_bytes().startswith(PNG)
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 4                                   # one fleet: a row per cell
    for cell in doc["cells"]:
        assert Path(cell["model"]).is_file() and (out / "cells" / f"{cell['key']}.json").is_file()
        figures = cell["fleets"][str(spec.fleets[0])]
        assert figures["chips"] == 3 and 0 <= figures["min_within_K"] <= figures["min_0K"] <= figures["mean_0K"] <= 1
    assert len({c["key"] for c in doc["cells"]}) == 4                 # every cell its own key
    saved = json.loads((out / "results.json").read_text())
    assert saved["counts"] == doc["counts"] and not list(out.rglob(".*.tmp"))


def test_a_rerun_skips_every_finished_cell(local_run) -> None:
    spec, out, doc = local_run
    stamps = {p: p.stat().st_mtime_ns for p in (out / "models").iterdir()}
    again = run_sweep(spec, out)
    assert again["counts"] == {"done": 0, "skipped": 4, "failed": 0}
    assert {p: p.stat().st_mtime_ns for p in (out / "models").iterdir()} == stamps     # nothing recomputed
    strip = lambda d: [{k: v for k, v in c.items() if k != "status"} for c in d["cells"]]  # noqa: E731
    assert strip(again) == strip(doc)


def test_a_changed_setting_is_a_new_cell(local_run, tmp_path: Path, tiny_fleet_dir: Path) -> None:
    spec, out, doc = local_run
    other = load_sweep(_grid(tmp_path, tiny_fleet_dir).parent / "g.yaml")
    rerun = run_sweep(other, out)
    assert [c["key"] for c in rerun["cells"]] == [c["key"] for c in doc["cells"]]
    assert rerun["counts"] == {"done": 0, "skipped": 4, "failed": 0}
    changed = load_sweep(_grid(tmp_path, tiny_fleet_dir, "lr: 0.02", name="h.yaml"))
    from pnndeploy.experiments.sweep import cell_keys

    assert not set(cell_keys(changed, [str(tiny_fleet_dir)])) & {c["key"] for c in doc["cells"]}


def test_an_interrupted_cell_is_run_again(local_run, tmp_path: Path) -> None:
    """A model written but its result not (interrupted between the two): the cell is not taken as done."""
    import shutil

    spec, out, doc = local_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    victim = doc["cells"][0]["key"]
    (copy / "cells" / f"{victim}.json").unlink()
    again = run_sweep(spec, copy)
    assert again["counts"] == {"done": 1, "skipped": 3, "failed": 0}
    assert [c["key"] for c in again["cells"] if c["status"] == "done"] == [victim]


def test_the_key_follows_the_process_spec_of_spec_sat(tmp_path: Path, tiny_fleet_dir: Path) -> None:
    from pnndeploy.experiments.sweep import cell_keys

    spec_file = tmp_path / "process.yaml"
    spec_file.write_bytes(SHIPPED_PROCESS.read_bytes())
    grid = _grid(tmp_path, tiny_fleet_dir).read_text().replace("method: [noise-aware, sat]", "method: [spec-sat]")
    path = tmp_path / "s.yaml"
    path.write_text(grid + f"robust_to: {spec_file}\n")
    before = cell_keys(load_sweep(path), [str(tiny_fleet_dir)])
    spec_file.write_bytes(SHIPPED_PROCESS.read_bytes().replace(b"0.05 # std of the measured",
                                                               b"0.07 # std of the measured"))
    after = cell_keys(load_sweep(path), [str(tiny_fleet_dir)])
    assert not set(before) & set(after)


def test_a_failing_cell_is_reported_and_the_others_complete(cli, tmp_path: Path, tiny_fleet_dir: Path) -> None:
    # a mesh model cannot go onto the ring fleet: the cell trains, then fails at mapping; the others must run
    grid = _grid(tmp_path, tiny_fleet_dir, "cells:\n  - {method: sat, platform: mzi}")
    result = cli("sweep", grid, "--out", tmp_path / "out", "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["counts"] == {"done": 4, "skipped": 0, "failed": 2}
    failed = [c for c in doc["cells"] if c["status"] == "failed"]
    assert all("mzi" in c["error"] and "mrr" in c["error"] for c in failed), failed
    assert len(list((tmp_path / "out" / "cells").iterdir())) == 4      # failures are not written: a rerun retries
    assert "failed" in (tmp_path / "out" / "results.csv").read_text()


def test_example_grid_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    repo = SHIPPED_PROCESS.parents[1]
    monkeypatch.chdir(repo)
    spec = load_sweep(repo / "examples" / "sweep.yaml")
    assert len(spec.cells()) == 8 and spec.fleets == ["device_profiles"]


def test_pareto_front_is_the_undominated_points() -> None:
    from pnndeploy.report.plots import pareto_front

    points = [(0.9, 0.5), (0.8, 0.7), (0.85, 0.6), (0.7, 0.65), (0.9, 0.4)]
    assert pareto_front(points) == [True, True, True, False, False]
    assert np.all(pareto_front([(0.5, 0.5), (0.5, 0.5)]))            # ties dominate nobody

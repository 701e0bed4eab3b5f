"""`pnndeploy sweep GRID.yaml`: many trainings, each mapped onto fleets and audited, as one table.

A grid file names training settings (a ``grid`` of lists, every combination, and/or a list of explicit
``cells``), seeds, the fleets (profile folders) and the audit's sweeps.  A cell is one training setting
with one seed: it trains, exports, maps onto every fleet and audits there, as the demo does.  Cells are
independent, so they run in order here or as Ray tasks (:mod:`~pnndeploy.deploy.executors`), with
identical results.

A cell's result is written as soon as it arrives (``cells/KEY.json``, its model ``models/KEY.onnx``,
both atomically), keyed by a hash of everything it depends on: its settings, the data, the fleets'
profile files, the sweeps and the pnndeploy version.  A rerun skips every cell whose result is there,
so an interrupted sweep resumes where it stopped and nothing is recomputed or half-written.  A cell
that fails is reported in the table with its error and not written (a rerun tries it again).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import re
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from pnndeploy import __version__
from pnndeploy.atomic import write_bytes_atomic
from pnndeploy.compute import CPU, Compute
from pnndeploy.deploy.executors import TaskFailure, run_tasks
from pnndeploy.errors import ConfigError, PnnError
from pnndeploy.formats.profile_folder import list_profiles
from pnndeploy.formats.yamlio import read_yaml_file
from pnndeploy.training.config import TrainConfig, _coerce, _field_types
from pnndeploy.training.methods import get_method
from pnndeploy.untrusted import brief, loads_json, read_bounded

#: Keys of a grid file besides the training settings.
GRID_KEYS = ("name", "dataset", "seeds", "grid", "cells", "fleets", "temperature", "days", "draws", "threshold",
             "audit_require_temperature", "audit_require_days")
#: Largest cell result read back when resuming (a result is a few KiB).
MAX_CELL_BYTES = 16 << 20
#: Settings the grid may vary: every TrainConfig field but the seed (``seeds`` gives those).
SETTING_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name != "seed")


@dataclass
class SweepSpec:
    """A checked grid file."""

    path: Path
    name: str
    dataset: str
    seeds: list[int]
    settings: list[dict[str, Any]]          # one per training setting, before seeds
    fleets: list[str]
    temperature: str = "-1:1:0.25"
    days: str = "0:30:15"
    draws: int = 3
    threshold: float = 0.9
    require_temperature: float = 1.0
    require_days: float = 30.0
    base: dict[str, Any] = field(default_factory=dict)   # settings every cell shares

    def cells(self) -> list[dict[str, Any]]:
        """Every (settings, seed) pair, in the file's order, seeds innermost."""
        return [{"settings": dict(s), "seed": seed} for s in self.settings for seed in self.seeds]


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a grid file: unknown keys, wrong types and settings a training would refuse are one line."""
    path = Path(path)
    where = f"sweep file {path}"
    data = read_yaml_file(path, where, "pass an existing grid file, e.g. examples/sweep.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with keys such as grid, seeds, fleets")
    types = _field_types()
    base: dict[str, Any] = {}
    for key, value in data.items():
        if key in GRID_KEYS:
            continue
        if key in SETTING_KEYS:
            base[key] = _coerce(where, key, value, types[key])
            continue
        raise ConfigError(f"{where}: unknown key {brief(key)}; grid-file keys: {', '.join(GRID_KEYS)}, and any "
                          f"training setting ({', '.join(SETTING_KEYS)})")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}", name):
        raise ConfigError(f"{where}: name {brief(name)} must be a plain folder name (letters, digits, . _ -, at most "
                          "64), it becomes sweeps/<name>")
    seeds = _sweep_seeds(where, data.get("seeds", [0]))
    settings = _sweep_cells(where, data, base)
    if len(settings) * len(seeds) > 10_000:
        raise ConfigError(f"{where}: {len(settings) * len(seeds)} cells; split the sweep (at most 10000)")
    fleets = _sweep_fleets(where, data.get("fleets"))
    spec = SweepSpec(path=path, name=name, dataset=str(data.get("dataset", "digits")),
                     seeds=list(seeds), settings=settings, fleets=[str(f) for f in fleets], base=base)
    _sweep_audit(where, data, spec)
    return spec


def _sweep_seeds(where: str, seeds: Any) -> list[int]:
    """The grid file's seeds: one non-negative integer or a list of distinct ones."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                                                       for s in seeds):
        raise ConfigError(f"{where}: seeds must be a non-negative integer or a list of them, got {brief(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds {brief(seeds)} repeat a seed; each cell would run twice")
    return seeds


def _sweep_cells(where: str, data: dict[str, Any], base: dict[str, Any]) -> list[dict[str, Any]]:
    """The settings of every cell (grid combinations, then explicit cells), each one a training would accept."""
    types = _field_types()
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}: grid must map training settings to lists of values, got {type(grid).__name__}")
    for key, values in grid.items():
        if key not in SETTING_KEYS:
            raise ConfigError(f"{where}: grid key {brief(key)} is not a training setting "
                              f"({', '.join(SETTING_KEYS)})")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid.{key} must be a non-empty list of values, got {brief(values)}")
    if grid and math.prod(len(v) for v in grid.values()) > 10_000:
        raise ConfigError(f"{where}: the grid has {math.prod(len(v) for v in grid.values())} combinations; split "
                          "the sweep (at most 10000 cells)")
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else []
    explicit = data.get("cells") or []
    if not isinstance(explicit, list) or any(not isinstance(c, dict) for c in explicit):
        raise ConfigError(f"{where}: cells must be a list of mappings of training settings")
    settings: list[dict[str, Any]] = []
    for k, raw in enumerate(combos + explicit or [{}]):
        label = f"cell {k + 1} ({brief(_describe(raw), quote=False)})"
        cell = dict(base)
        for key, value in raw.items():
            if key not in SETTING_KEYS:
                raise ConfigError(f"{where}: {label}: {brief(key)} is not a training setting")
            cell[key] = _coerce(f"{where}: {label}", key, value, types[key])
        try:
            config = TrainConfig(**cell)
            get_method(config.method).reads(config)     # the files it reads exist and fit (spec-sat's process spec)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {label}: {exc}") from None
        if cell in settings:
            raise ConfigError(f"{where}: {label} repeats cell {settings.index(cell) + 1}; drop one")
        settings.append(cell)
    return settings


def _sweep_fleets(where: str, fleets: Any) -> list[str]:
    """The profile folders each cell is deployed on (none: the default fleet); each must hold profiles."""
    if fleets is None:
        fleets = []
    if isinstance(fleets, str):
        fleets = [fleets]
    if not isinstance(fleets, list) or any(not isinstance(f, str) or not f.strip() for f in fleets):
        raise ConfigError(f"{where}: fleets must be a list of profile folders, got {brief(fleets)} (leave it out "
                          "for the default fleet)")
    for folder in fleets:
        if not list_profiles(Path(folder)):
            looked = brief(str(Path(folder)), quote=False, tail=True)
            raise ConfigError(f"{where}: fleet {brief(folder)} holds no profiles (looked in {looked}); make one with "
                              "`pnndeploy fleet make`")
    return fleets


def _sweep_audit(where: str, data: dict[str, Any], spec: SweepSpec) -> None:
    """The audit every cell gets: sweeps, draws, threshold and requirements, checked into ``spec``."""
    for key in ("temperature", "days"):
        if key in data:
            if not isinstance(data[key], str):      # YAML 1.1 reads -1:1:0.5 unquoted as a base-60 number
                raise ConfigError(f'{where}: {key} must be a quoted LO:HI:STEP string, e.g. {key}: "-1:1:0.5"')
            setattr(spec, key, data[key])
    for key, attr, kind in (("draws", "draws", int), ("threshold", "threshold", float),
                            ("audit_require_temperature", "require_temperature", float),
                            ("audit_require_days", "require_days", float)):
        if key in data:
            setattr(spec, attr, _coerce(where, key, data[key], kind))
    from pnndeploy.deploy.audit import SweepRange

    SweepRange.parse(spec.temperature, f"{where}: temperature")
    if SweepRange.parse(spec.days, f"{where}: days").lo < 0:
        raise ConfigError(f"{where}: days starts below 0; days since calibration cannot be negative")
    if not 0 <= spec.threshold <= 1 or spec.draws < 1 or spec.require_temperature < 0 or spec.require_days < 0:
        raise ConfigError(f"{where}: threshold must be in [0, 1], draws at least 1 and audit_require_temperature, "
                          "audit_require_days 0 or more")


def _describe(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"


# ------------------------------------------------------------------------------------- cell keys
def _sha_of_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def data_hash(dataset: Any) -> str:
    """sha256 of the arrays a cell trains and tests on."""
    h = hashlib.sha256()
    for a in (dataset.X_train, dataset.y_train, dataset.X_test, dataset.y_test):
        h.update(a.tobytes())
    return h.hexdigest()


def cell_keys(spec: SweepSpec, fleets: list[str]) -> list[str]:
    """One key per cell: the hash of everything it reads.

    Its full settings, its data (the arrays of its split), every profile file of its fleets (the default
    fleet of its platform resolved as the cell will resolve it, "" in ``fleets``), spec-sat's process file,
    the audit's sweeps and the pnndeploy version.
    """
    from pnndeploy.data.datasets import load_dataset
    from pnndeploy.formats.profile_folder import profiles_dir

    folder_hashes: dict[str, str] = {}
    data_hashes: dict[int, str] = {}

    def folder_hash(folder: str, platform: str) -> tuple[str, str]:
        resolved = str(profiles_dir(folder or None, platform))
        if resolved not in folder_hashes:
            folder_hashes[resolved] = _sha_of_files(list_profiles(resolved))
        return resolved, folder_hashes[resolved]

    keys = []
    for cell in spec.cells():
        seed = cell["seed"]
        if seed not in data_hashes:
            data_hashes[seed] = data_hash(load_dataset(spec.dataset, seed=seed))
        config = TrainConfig(**cell["settings"], seed=seed)
        reads = get_method(config.method).reads(config)
        process = hashlib.sha256(b"".join(Path(f).read_bytes() for f in reads)).hexdigest() if reads else None
        doc = {"config": config.to_dict(), "dataset": spec.dataset, "data": data_hashes[seed],
               "fleets": [folder_hash(f, config.platform) for f in fleets], "process": process,
               "temperature": spec.temperature, "days": spec.days, "draws": spec.draws,
               "threshold": spec.threshold, "require": [spec.require_temperature, spec.require_days],
               "version": __version__}
        keys.append(hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20])
    return keys


# ------------------------------------------------------------------------------------- one cell
def run_cell(settings: dict[str, Any], seed: int, dataset_spec: str, fleets: list[str], temperature: str, days: str,
             draws: int, threshold: float, require_temperature: float, require_days: float,
             compute: tuple[str | None, int | None] = ("cpu", None)) -> dict[str, Any]:
    """Train one cell, map it onto every fleet and audit it there; returns the result and the model's bytes.

    Runs in a worker process under Ray: it takes and returns plain data only (``compute`` is the
    ``--compute`` spec and ``--threads``, resolved where the cell runs).
    """
    from pnndeploy.compute import resolve_compute
    from pnndeploy.data.datasets import load_dataset
    from pnndeploy.deploy.audit import SweepRange, run_audit
    from pnndeploy.deploy.transfer import prepare_fleet
    from pnndeploy.training.pipeline import train_and_export

    config = TrainConfig(**settings, seed=seed)
    dataset = load_dataset(dataset_spec, seed=seed)
    where = resolve_compute(*compute)
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "model.onnx"
        try:
            summary, _ = train_and_export(dataset, config, model_path, compute=where)
            per_fleet = {}
            for folder in fleets:
                prepared = prepare_fleet(model_path, [], True, folder or None, save_dir=None, stations=False,
                                         compute=where)
                audit = run_audit(prepared, SweepRange.parse(temperature, "temperature"),
                                  SweepRange.parse(days, "days"), threshold=threshold,
                                  require_temperature=require_temperature, require_days=require_days, draws=draws)
                per_fleet[folder or "default"] = _fleet_figures(audit, require_temperature)
        except PnnError as exc:
            # the same message on every executor and run: not the temporary folder's name
            raise type(exc)(str(exc).replace(str(model_path), "the cell's model")) from None
        model_bytes = model_path.read_bytes()
    return {"settings": settings, "seed": seed, "config": config.to_dict(), "method": config.method,
            "ideal": summary.test_accuracy, "sharpness": summary.sharpness, "hessian_trace": summary.hessian_trace,
            "train_seconds": summary.seconds, "compute": summary.compute, "fleets": per_fleet,
            "model_bytes": model_bytes}


def _fleet_figures(audit: Any, limit: float) -> dict[str, Any]:
    """The figures a sweep's table keeps of one audit (an :class:`~pnndeploy.deploy.results.AuditResult`)."""
    t, c = audit.sweeps["temperature_K"], audit.sweeps["temperature_K_compensated"]
    zero = [round(v, 6) for v in t.values].index(0.0)
    within = [i for i, v in enumerate(t.values) if abs(v) <= limit + 1e-9]
    t_min, c_min = t.fleet_min, c.fleet_min
    return {"mean_0K": t.fleet_mean[zero], "min_0K": t_min[zero],
            "min_within_K": min(t_min[i] for i in within),
            "min_within_K_compensated": min(c_min[i] for i in within),
            "audit_passed": audit.passed,
            "audit_compensated": audit.strategy != "none",
            "recalibration_days": audit.recommended_recalibration_days,
            "chips": len(t.names)}


# ------------------------------------------------------------------------------------- the sweep
def run_sweep(spec: SweepSpec, out_dir: str | Path, executor: str = "local", address: str | None = None,
              num_cpus: int | None = None, on_cell: Callable[[int, str], None] | None = None,
              compute: Compute = CPU) -> dict[str, Any]:
    """Run every cell not already in ``out_dir`` and write the table (results.json, results.csv, pareto.png).

    Fleet folders are paths as a shell would take them (relative to the working directory); "" is the
    default fleet of the model's platform.  Cells compute on ``compute``; on Ray each cell is a task of one CPU
    (one thread unless ``compute.threads`` says otherwise) and, for a CUDA compute, one GPU of the cluster.
    """
    out = Path(out_dir)
    fleets = spec.fleets or [""]
    keys = cell_keys(spec, fleets)
    cells = spec.cells()
    results: list[dict[str, Any] | None] = [None] * len(cells)
    todo = []
    for i, key in enumerate(keys):
        done = _load_cell(out, key)
        if done is not None:
            results[i] = {**done, "status": "skipped"}
        else:
            todo.append(i)
    if on_cell is not None:
        for i, r in enumerate(results):
            if r is not None:
                on_cell(i, "skipped")

    def arrived(j: int, result: Any) -> None:
        i = todo[j]
        try:
            record(i, result)
        except (OSError, ValueError) as exc:         # disk full, a NaN figure: this cell fails, the others go on
            results[i] = {**cells[i], "key": keys[i], "status": "failed",
                          "error": f"recording the result failed: {type(exc).__name__}: {exc}"[:300]}
        if on_cell is not None:
            on_cell(i, results[i]["status"])

    def record(i: int, result: Any) -> None:
        if isinstance(result, TaskFailure):
            results[i] = {**cells[i], "key": keys[i], "status": "failed", "error": result.error}
        else:
            model_bytes = result.pop("model_bytes")
            write_bytes_atomic(out / "models" / f"{keys[i]}.onnx", model_bytes)
            results[i] = {**result, "key": keys[i], "model": str(out / "models" / f"{keys[i]}.onnx"), "status": "done"}
            write_bytes_atomic(out / "cells" / f"{keys[i]}.json",
                               json.dumps({k: v for k, v in results[i].items() if k != "status"},
                                          indent=1, allow_nan=False).encode())

    on_ray = executor == "ray"
    where = ("cuda" if compute.is_cuda and on_ray else compute.device,
             compute.threads if compute.threads is not None or not on_ray else 1)
    args = [(cells[i]["settings"], cells[i]["seed"], spec.dataset, fleets, spec.temperature, spec.days, spec.draws,
             spec.threshold, spec.require_temperature, spec.require_days, where) for i in todo]
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    for stale in ("results.json", "results.csv", "pareto.png"):    # a run stopped half-way leaves no old table
        (out / stale).unlink(missing_ok=True)
    run_tasks(run_cell, args, executor, address, num_cpus, on_result=arrived, gpus_per_task=int(compute.is_cuda))
    rows = [r for r in results if r is not None]
    doc = {"sweep": spec.name, "grid": str(spec.path), "dataset": spec.dataset, "fleets": [f or "default" for f in fleets],
           "require_temperature_K": spec.require_temperature, "threshold": spec.threshold, "executor": executor,
           "shared_settings": spec.base,
           "cells": rows, "counts": {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")}}
    write_bytes_atomic(out / "results.json", json.dumps(doc, indent=1, allow_nan=False).encode())
    write_bytes_atomic(out / "results.csv", results_csv(doc).encode())
    if any(r["status"] != "failed" for r in rows):
        from pnndeploy.report.plots import plot_pareto

        plot_pareto(doc, out / "pareto.png")
        doc["pareto_plot"] = str(out / "pareto.png")
    doc["out"] = str(out)
    return doc


def _load_cell(out: Path, key: str) -> dict[str, Any] | None:
    """A finished cell's result, if its file is there, whole and for this key (and its model beside it)."""
    path = out / "cells" / f"{key}.json"
    if not path.is_file() or not (out / "models" / f"{key}.onnx").is_file():
        return None
    try:    # a file of someone else's (a copied sweep folder): bounded, and not trusted to be this cell's
        doc = loads_json(read_bounded(path, MAX_CELL_BYTES))
    except (OSError, ValueError):   # FileProblem is a ValueError: a FIFO, a huge or deep file is recomputed
        return None
    return doc if isinstance(doc, dict) and doc.get("key") == key else None


CSV_COLUMNS = ("key", "status", "method", "seed", "settings", "fleet", "ideal", "mean_0K", "min_0K", "min_within_K",
               "min_within_K_compensated", "audit_passed", "recalibration_days", "error")


def results_csv(doc: dict[str, Any]) -> str:
    """One row per cell and fleet; no timings, so the same sweep gives the same file on any executor."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in doc["cells"]:
        base = {"key": r.get("key"), "status": "failed" if r["status"] == "failed" else "ok",
                "method": r.get("method", r["settings"].get("method", "spec-sat")), "seed": r["seed"],
                "settings": _describe(r["settings"]), "error": r.get("error", "")}
        fleets = r.get("fleets") or {"": {}}
        for name, figures in fleets.items():
            row = {**base, "fleet": name, "ideal": _num(r.get("ideal")),
                   **{k: _num(figures.get(k)) for k in ("mean_0K", "min_0K", "min_within_K",
                                                        "min_within_K_compensated", "recalibration_days")},
                   "audit_passed": figures.get("audit_passed", "")}
            writer.writerow([row.get(c, "") for c in CSV_COLUMNS])
    return buf.getvalue()


def _num(v: Any) -> str:
    return "" if v is None else (f"{v:.6f}" if isinstance(v, float) and math.isfinite(v) else str(v))


__all__ = ["SweepSpec", "load_sweep", "run_sweep", "run_cell", "results_csv"]

"""Ray against the local path: a large simulated lot, the overhead of one task, and sweep cells per minute.

    python benchmarks/ray_bench.py                 # 10^4 chips, a 4-cell sweep (a few minutes on two cores)
    python benchmarks/ray_bench.py --chips 2000 --json

Everything runs on this machine: a local Ray cluster of its cores against one process.  Run nothing else
meanwhile.  The results of the two paths are compared bit for bit, not only timed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pnndeploy.deploy.executors import fleet_accuracy, ray_session, run_tasks  # noqa: E402
from pnndeploy.deploy.mapping import map_models  # noqa: E402
from pnndeploy.deploy.transfer import PreparedFleet, load_evaluation_data  # noqa: E402
from pnndeploy.formats.onnx_io import load_model  # noqa: E402
from pnndeploy.formats.process_spec import load_process  # noqa: E402
from pnndeploy.simulation.fabrication import chip_names, generate_chip  # noqa: E402
from pnndeploy.simulation.fleet import Conditions, SimulatedFleet  # noqa: E402
from pnndeploy.training.config import TrainConfig  # noqa: E402
from pnndeploy.training.pipeline import train_and_export  # noqa: E402


def _nothing(i: int) -> int:
    return i


def lot(model_path: Path, chips: int) -> tuple[PreparedFleet, float]:
    """``chips`` simulated chips of the default process, mapped; returns the prepared fleet and the seconds."""
    t0 = time.perf_counter()
    model = load_model(model_path)
    process = load_process(ROOT / "device_profiles" / "process.yaml")
    profiles = [generate_chip(process, name, seed=0) for name in chip_names(chips, "lot")]
    deployments = map_models(model, profiles)
    prepared = PreparedFleet(model, load_evaluation_data(model), profiles, deployments, [None] * chips,
                             SimulatedFleet(model, profiles, deployments))
    return prepared, time.perf_counter() - t0


def sweep_rate(tmp: Path, executor: str, cells: int, epochs: int) -> dict:
    from pnndeploy.experiments.sweep import load_sweep, run_sweep

    grid = tmp / f"grid-{executor}.yaml"
    grid.write_text(f"epochs: {epochs}\nseeds: {list(range(cells // 2))}\ngrid:\n  method: [noise-aware, sat]\n"
                    f"fleets: [\"{ROOT / 'device_profiles'}\"]\ntemperature: \"-1:1:0.5\"\ndays: \"0:30:30\"\n"
                    "draws: 1\n")
    t0 = time.perf_counter()
    doc = run_sweep(load_sweep(grid), tmp / f"out-{executor}", executor=executor)
    seconds = time.perf_counter() - t0
    return {"cells": len(doc["cells"]), "seconds": seconds, "cells_per_minute": 60 * len(doc["cells"]) / seconds,
            "csv": (tmp / f"out-{executor}" / "results.csv").read_text()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=10_000)
    parser.add_argument("--cells", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    doc: dict = {"chips": args.chips}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_path = tmp / "m.onnx"
        train_and_export("digits", TrainConfig(method="sat", epochs=5, seed=0), model_path)
        prepared, doc["prepare_s"] = lot(model_path, args.chips)
        conditions = Conditions(delta_T=0.5)
        t0 = time.perf_counter()
        local = fleet_accuracy(prepared, conditions)
        doc["local_s"] = time.perf_counter() - t0
        with ray_session() as ray:
            t0 = time.perf_counter()
            run_tasks(_nothing, [(0,)] * 4, "ray")               # workers up, before anything is timed
            doc["ray_start_s"] = time.perf_counter() - t0
            n = 200
            t0 = time.perf_counter()
            run_tasks(_nothing, [(i,) for i in range(n)], "ray")
            doc["overhead_per_task_ms"] = 1000 * (time.perf_counter() - t0) / n
            doc["ray"] = {}
            for per_task in (512, 2048):
                t0 = time.perf_counter()
                on_ray = fleet_accuracy(prepared, conditions, "ray", chips_per_task=per_task)
                doc["ray"][per_task] = {"seconds": time.perf_counter() - t0,
                                        "identical": bool(np.array_equal(on_ray, local))}
            doc["ray_cpus"] = int(ray.cluster_resources().get("CPU", 0))
        sweeps = {e: sweep_rate(tmp, e, args.cells, args.epochs) for e in ("local", "ray")}
        doc["sweep"] = {e: {k: v for k, v in s.items() if k != "csv"} for e, s in sweeps.items()}
        doc["sweep"]["identical_tables"] = sweeps["local"]["csv"] == sweeps["ray"]["csv"]
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"{args.chips} chips: generated and mapped in {doc['prepare_s']:.1f} s; evaluated locally in "
          f"{doc['local_s']:.2f} s")
    for per_task, r in doc["ray"].items():
        print(f"  on Ray ({doc['ray_cpus']} CPUs), {per_task} chips a task: {r['seconds']:.2f} s, identical: "
              f"{r['identical']}")
    print(f"Ray: workers up in {doc['ray_start_s']:.1f} s; {doc['overhead_per_task_ms']:.1f} ms per empty task")
    for e in ("local", "ray"):
        s = doc["sweep"][e]
        print(f"sweep, {e}: {s['cells']} cells in {s['seconds']:.1f} s = {s['cells_per_minute']:.1f} cells/min")
    print(f"sweep tables identical: {doc['sweep']['identical_tables']}")


if __name__ == "__main__":
    main()

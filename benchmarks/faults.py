"""Issue 27's faulty-device target, measured: the default model on a fleet with dead rings, mapped three ways.

The same chips (same seed, names and every drawn number) twice: as the default process spec draws them, and with
the spec's ``faults`` section drawing a fraction of dead rings (a fault stream of its own, so nothing else moves).
On the faulty fleet the model is mapped

* **fault-aware**: the calibration flags the dead rings, the mapper holds them, places each layer's outputs on
  the rows where they cost least and the other weights of each row make up for them (input moments from the
  model file);
* **placement only** / **compensation only**: one of the two (the other switched off in this process);
* **held only**: the dead rings flagged and held, nothing else;
* **fault-blind**: the flags ignored, every ring programmed as if it worked (what mapping did before).

Reported per seed and method: fleet mean and worst chip at -1 / 0 / +1 K (drift-compensated bias not applied: as
programmed), and for the target, the fault-aware fleet mean at 0 K against the fault-free one (within 1 pp).
``--methods`` adds spec-SAT trained for the spec's fault rate (``spec-sat-faults``: `--robust-to` the faulty spec).

    python benchmarks/faults.py                          # 3 seeds, 32 chips, 2 % dead (a few minutes)
    python benchmarks/faults.py --seeds 1 --chips 8 --epochs 5 --json out.json     # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pnndeploy.data.datasets import load_dataset  # noqa: E402
from pnndeploy.deploy.mapping import fault_blind, map_model  # noqa: E402
from pnndeploy.deploy.transfer import load_evaluation_data  # noqa: E402
from pnndeploy.formats.onnx_io import load_model  # noqa: E402
from pnndeploy.formats.process_spec import load_process  # noqa: E402
from pnndeploy.simulation.fabrication import chip_names, generate_chip  # noqa: E402
from pnndeploy.simulation.fleet import Conditions, SimulatedFleet  # noqa: E402
from pnndeploy.training.config import TrainConfig  # noqa: E402
from pnndeploy.training.pipeline import train_and_export  # noqa: E402

TEMPERATURES = (-1.0, 0.0, 1.0)


MAPPINGS = {"fault_aware": (True, True), "placement_only": (True, False), "compensation_only": (False, True),
            "held_only": (False, False)}


@contextlib.contextmanager
def mapping_variant(placement: bool, compensation: bool):
    """Switch the fault-aware mapping's two parts off in this process (the benchmark's ablation only)."""
    import pnndeploy.deploy.mapping as mapping

    saved = mapping.place_rows, mapping.compensate_held
    if not placement:
        mapping.place_rows = lambda *args: None
    if not compensation:
        mapping.compensate_held = lambda weight, held, values, moment: saved[1](weight, held, values, None)
    try:
        yield
    finally:
        mapping.place_rows, mapping.compensate_held = saved


def fleet_figures(model, profiles, X, y) -> dict:
    """Fleet mean and worst chip at each temperature, as programmed."""
    fleet = SimulatedFleet(model, profiles, [map_model(model, p) for p in profiles])
    out = {}
    for t in TEMPERATURES:
        acc = fleet.accuracy(X, y, Conditions(delta_T=t))
        out[f"{t:+g}K"] = {"mean": float(acc.mean()), "min": float(acc.min())}
    return out


def run(seeds: list[int], chips: int, epochs: int, dead: float, methods: list[str], tmp: Path) -> dict:
    spec = load_process(ROOT / "device_profiles" / "process.yaml")
    faulty_spec = copy.deepcopy(spec)
    faulty_spec["faults"] = {"dead_fraction": dead}
    faulty_path = tmp / "faulty.yaml"
    import yaml

    faulty_path.write_text(yaml.safe_dump(faulty_spec))
    names = chip_names(chips)
    clean = [generate_chip(spec, n, seed=0) for n in names]
    faulty = [generate_chip(faulty_spec, n, seed=0) for n in names]
    counts = [int(np.count_nonzero(p.fabrication["faulty"])) for p in faulty]
    rows = []
    for method in methods:
        for seed in seeds:
            config = {"method": "spec-sat", "epochs": epochs, "seed": seed}
            if method == "spec-sat-faults":
                config["robust_to"] = str(faulty_path)
            elif method != "spec-sat":
                config["method"] = method
            out = tmp / f"{method}-{seed}.onnx"
            t0 = time.perf_counter()
            train_and_export(load_dataset("digits", seed=seed), TrainConfig(**config), out)
            seconds = time.perf_counter() - t0
            model = load_model(out)
            data = load_evaluation_data(model)
            row = {"method": method, "seed": seed, "train_s": seconds,
                   "fault_free": fleet_figures(model, clean, data.X, data.y),
                   "fault_blind": fleet_figures(model, [fault_blind(p) for p in faulty], data.X, data.y)}
            for name, parts in MAPPINGS.items():
                with mapping_variant(*parts):
                    row[name] = fleet_figures(model, faulty, data.X, data.y)
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("method", "seed")} |
                             {k: round(100 * row[k]["+0K"]["mean"], 2) for k in ("fault_free", *MAPPINGS,
                                                                                    "fault_blind")}), flush=True)
    return {"chips": chips, "dead_fraction": dead, "dead_rings_per_chip": counts, "epochs": epochs, "rows": rows}


def summary(doc: dict) -> None:
    """Means over seeds, per method and mapping, in a table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{doc['chips']} chips, {100 * doc['dead_fraction']:g} % dead rings "
                        f"(mean {np.mean(doc['dead_rings_per_chip']):.1f} per chip of 256), as programmed")
    for c in ("method", "mapping", "mean −1 K", "mean 0 K", "mean +1 K", "worst 0 K", "worst ±1 K", "vs fault-free 0 K"):
        table.add_column(c, justify="right")
    for method in dict.fromkeys(r["method"] for r in doc["rows"]):
        rows = [r for r in doc["rows"] if r["method"] == method]
        free = np.mean([r["fault_free"]["+0K"]["mean"] for r in rows])
        for mapping in ("fault_free", *MAPPINGS, "fault_blind"):
            def avg(t: str, key: str) -> float:
                return 100 * float(np.mean([r[mapping][t][key] for r in rows]))
            worst = 100 * float(np.mean([min(r[mapping][t]["min"] for t in r[mapping]) for r in rows]))
            table.add_row(method, mapping, f"{avg('-1K', 'mean'):.2f}", f"{avg('+0K', 'mean'):.2f}",
                          f"{avg('+1K', 'mean'):.2f}", f"{avg('+0K', 'min'):.2f}", f"{worst:.2f}",
                          f"{avg('+0K', 'mean') - 100 * free:+.2f} pp")
    Console(width=150).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--chips", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--dead", type=float, default=0.02, help="fraction of dead rings")
    parser.add_argument("--methods", default="spec-sat", help="comma list: spec-sat, spec-sat-faults, standard, ...")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        doc = run(list(range(args.seeds)), args.chips, args.epochs, args.dead, args.methods.split(","), Path(tmp))
    summary(doc)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()

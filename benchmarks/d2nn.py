"""Issue 24's comparison, measured: standard vs SAT on a diffractive network whose masks rotate (0-1 deg).

The paper's supplementary (PAPER.md): two 128 x 128 phase masks (2 um pixels, 532 nm), ten detectors, MNIST; at
0 / 0.5 / 0.6 / 0.7 / 1.0 deg of mask rotation standard BP gives 98.0 / 91.0 / 50.0 / 26.0 / 6.5 % and SAT 96.5 /
96.5 / 96.0 / 95.5 / 96.5 % (one 200-image batch).  Here: digits28 (the embedded digits at 28 x 28, not MNIST) on
the default setups (64 x 64 masks, 2 um, 532 nm, 500 um between planes) or, with ``--paper``, the paper's
128 x 128 grid (1000 um), each method over seeds, evaluated

* on a *perfect* setup (no pixel error, loss, misalignment or noise: the paper's single-setup numbers compare to
  this), both masks rotated by the angle about their centres;
* on the default fleet's eight setups (``device_profiles/d2nn``; ``--paper``: eight drawn at 128 x 128), mapped
  through their calibrations, then both masks rotated by the angle from their calibrated state: mean (worst).

Also timed: one evaluation of 64 setups (360 samples, dT = 0.5 K, rotation 0.5 deg), beside the other platforms'
fleet benchmarks (``benchmarks/run.py``).

    python benchmarks/d2nn.py                      # the table (about 15 min on two cores)
    python benchmarks/d2nn.py --paper              # the paper's 128 x 128 grid (about 4x longer)
    python benchmarks/d2nn.py --quick              # a smoke run (digits 8x8, 1 epoch, 2 setups)
    python benchmarks/d2nn.py --dataset mnist:DIR  # MNIST from a folder of IDX files
    python benchmarks/d2nn.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pnndeploy.data.datasets import load_dataset  # noqa: E402
from pnndeploy.deploy.mapping import map_model  # noqa: E402
from pnndeploy.formats.onnx_io import load_model  # noqa: E402
from pnndeploy.formats.process_spec import check_process, load_process  # noqa: E402
from pnndeploy.formats.profiles import read_profile  # noqa: E402
from pnndeploy.simulation.fabrication import generate_chip  # noqa: E402
from pnndeploy.simulation.fleet import Conditions, SimulatedFleet  # noqa: E402
from pnndeploy.training.config import TrainConfig  # noqa: E402
from pnndeploy.training.pipeline import train_and_export  # noqa: E402

PROFILES = REPO / "device_profiles" / "d2nn"
ANGLES = (0.0, 0.25, 0.5, 0.6, 0.7, 1.0)
PAPER = {"standard": {0.0: 98.0, 0.5: 91.0, 0.6: 50.0, 0.7: 26.0, 1.0: 6.5},
         "sat": {0.0: 96.5, 0.5: 96.5, 0.6: 96.0, 0.7: 95.5, 1.0: 96.5}}
PAPER_GRID = {"grid": 128, "pixel_pitch_um": 2.0, "wavelength_um": 0.532, "distance_um": 1000.0}


def perfect(profile):
    """The setup without pixel errors, loss, misalignment, noise or calibration error."""
    fab = {k: np.zeros_like(v) if k in ("phase_offset", "rotation", "shift_x", "shift_y") else np.ones_like(v)
           for k, v in profile.fabrication.items()}
    return replace(profile, fabrication=fab, calibration={k: v.copy() for k, v in fab.items()},
                   environment=replace(profile.environment, detector_noise=0.0, dac_bits=16,
                                       drift_coefficient=np.zeros_like(profile.environment.drift_coefficient)))


def setups(paper: bool, count: int) -> list:
    process = load_process(PROFILES / "process.yaml")
    if not paper:
        return [read_profile(p) for p in sorted(PROFILES.glob("chip*.h5"))[:count]]
    spec = check_process({**process, "array": {"rows": 128, "cols": 128}, "options": PAPER_GRID})
    return [generate_chip(spec, f"chip{'ABCDEFGH'[k]}", seed=0) for k in range(count)]


def accuracies(model, chips, X, y) -> dict[float, list[float]]:
    """Accuracy (%) of each chip at each rotation of both masks."""
    fleet = SimulatedFleet(model, chips, [map_model(model, c) for c in chips])
    out = {}
    for angle in ANGLES:
        scores = fleet.scores(X, Conditions(perturbation={"rotation_deg": angle} if angle else None),
                              slice(0, len(chips)))
        out[angle] = [100.0 * float((s.argmax(0) == y).mean()) for s in scores]
    return out


def evaluation_seconds(model, chips, X, count: int = 64) -> float:
    pool = [replace(chips[k % len(chips)], device_id=f"setup{k:02d}") for k in range(count)]
    fleet = SimulatedFleet(model, pool, [map_model(model, c) for c in pool])
    start = time.perf_counter()
    fleet.scores(X[:360], Conditions(delta_T=0.5, perturbation={"rotation_deg": 0.5}), slice(0, count))
    return time.perf_counter() - start


def run(args) -> dict:
    chips = setups(args.paper, 2 if args.quick else 8)
    doc = {"dataset": args.dataset, "grid": PAPER_GRID if args.paper else "default", "epochs": args.epochs,
           "seeds": args.seeds, "angles": list(ANGLES), "paper": PAPER, "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            rows = []
            for seed in args.seeds:
                data = load_dataset(args.dataset, seed=seed)          # each seed its own split, scored on its test set
                X, y = data.scaling.apply(data.X_test), data.y_test
                options = PAPER_GRID if args.paper else {}
                config = TrainConfig(platform="d2nn", method=method, epochs=args.epochs, seed=seed,
                                     platform_options=options)
                start = time.perf_counter()
                summary, _ = train_and_export(data, config, Path(tmp) / f"{method}-{seed}.onnx")
                seconds = time.perf_counter() - start
                model = load_model(summary.model)
                rows.append({"seed": seed, "test": 100 * summary.test_accuracy, "train_seconds": seconds,
                             "perfect": accuracies(model, [perfect(chips[0])], X, y),
                             "fleet": accuracies(model, chips, X, y)})
                print(f"{method} seed {seed}: test {rows[-1]['test']:.1f} %, {seconds:.0f} s", file=sys.stderr)
            doc["methods"][method] = rows
        doc["fleet_64_seconds"] = evaluation_seconds(model, chips, X)
    return doc


def render(doc: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"d2nn, accuracy (%) against the rotation of both masks ({doc['dataset']}, "
                        f"{'paper grid' if doc['grid'] != 'default' else '64 x 64 masks'}, seeds {doc['seeds']})")
    table.add_column("")
    for angle in doc["angles"]:
        table.add_column(f"{angle:g}°", justify="right")
    for method, paper in doc["paper"].items():
        table.add_row(f"paper, {method}", *[f"{paper[a]:.1f}" if a in paper else "" for a in doc["angles"]])
    for method, rows in doc["methods"].items():
        for kind in ("perfect", "fleet"):
            cells = []
            for angle in doc["angles"]:
                per_seed = [r[kind][angle] for r in rows]
                mean = np.mean([np.mean(v) for v in per_seed])
                worst = min(min(v) for v in per_seed)
                cells.append(f"{mean:.1f}" if kind == "perfect" else f"{mean:.1f} ({worst:.1f})")
            table.add_row(f"{method}, {kind} setup" if kind == "perfect" else f"{method}, fleet mean (worst)", *cells)
    Console().print(table)
    print(f"one evaluation of 64 setups (360 samples): {doc['fleet_64_seconds']:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits28")
    parser.add_argument("--methods", default="standard,sat,spec-sat")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--paper", action="store_true", help="the paper's 128 x 128 grid (1000 um between planes)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.methods = args.methods.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.quick:
        args.dataset, args.epochs, args.seeds, args.methods = "digits", 1, [0], ["standard"]
    doc = run(args)
    doc["angles"] = [float(a) for a in doc["angles"]]
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1, default=float))
    render(doc)


if __name__ == "__main__":
    main()

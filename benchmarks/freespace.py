"""Issue 14's comparison, measured: standard vs SAT (FD-SAT) on free-space setups at 2° rotation, 2 px shift, ×1.1.

The paper's free-space experiment (PAPER.md): standard 20 / 8 / 1 %, SAT 87 / 89 / 86 % at
2° rotation / 2 px shift / ×1.1 scale, MNIST 784 → 144 → 10 on one real setup.  Here: the
embedded digits resampled to 28 × 28 (``digits28``: the same frame size, not MNIST), 784 → 144 → 10
with ReLU, each method over seeds, evaluated

* on a *perfect* setup (no pixel error, blur or noise; the paper's single-setup numbers compare to this),
* on every setup of the default fleet (``device_profiles/freespace``), mapped through its calibration,

at the calibrated state and after each misalignment alone (rotation, shift along y as in the paper,
shift along x, magnification).  Every misalignment moves the setup away from its calibrated state.

    python benchmarks/freespace.py                        # the full table (about 4 min on two cores)
    python benchmarks/freespace.py --methods sat-draw-only,sat-rho1     # the ablation of the FD ascent
    python benchmarks/freespace.py --quick                # a smoke run (digits 8x8, 2 epochs)
    python benchmarks/freespace.py --json out.json
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

from pnndeploy.deploy.mapping import map_model  # noqa: E402
from pnndeploy.deploy.transfer import prepare_fleet  # noqa: E402
from pnndeploy.platforms import get_platform  # noqa: E402
from pnndeploy.platforms.freespace import MISALIGNMENT_FIELDS  # noqa: E402
from pnndeploy.simulation.fleet import Conditions, SimulatedFleet  # noqa: E402
from pnndeploy.training.config import TrainConfig  # noqa: E402
from pnndeploy.training.pipeline import train_and_export  # noqa: E402

PROFILES = REPO / "device_profiles" / "freespace"
#: The paper's test misalignments, and the extra axis it did not test (shift along x).
CONDITIONS = {
    "calibrated": None,
    "rotation 2°": {"rotation_deg": 2.0},
    "shift_y 2 px": {"shift_y_px": 2.0},
    "scale ×1.1": {"scale": 1.1},
    "shift_x 2 px": {"shift_x_px": 2.0},
}
PAPER = {"standard": {"rotation 2°": 0.20, "shift_y 2 px": 0.08, "scale ×1.1": 0.01},
         "sat": {"rotation 2°": 0.87, "shift_y 2 px": 0.89, "scale ×1.1": 0.86}}
METHODS = {
    "standard": {"method": "standard"},
    "noise-aware": {"method": "noise-aware"},
    "sat": {"method": "sat"},                     # SAM on the masks + FD-SAT over the default box (2°, 2 px, 0.1)
    "spec-sat": {"method": "spec-sat"},
    # ablation: the random state of the box only, no finite-difference ascent (what the ascent adds)
    "sat-draw-only": {"method": "sat", "misalignment_rho": 0.0},
    "sat-rho1": {"method": "sat", "misalignment_rho": 1.0},
}


def perfect(profile):
    """``profile`` as a perfect setup: no pixel errors, misalignment, blur, drift or detector noise."""
    fab = {k: v.copy() for k, v in profile.fabrication.items()}
    fab[get_platform(profile.platform).offset_name][:] = 0.0
    fab["pixel_gain"][:] = 1.0
    for key, value in zip(MISALIGNMENT_FIELDS, (0.0, 0.0, 0.0, 1.0)):
        fab[key] = np.array([value])
    env = replace(profile.environment, crosstalk=0.0, detector_noise=0.0,
                  drift_coefficient=np.zeros_like(profile.environment.drift_coefficient))
    return replace(profile, device_id="perfect", fabrication=fab, calibration={k: v.copy() for k, v in fab.items()},
                   environment=env)


def evaluate(model_path: Path) -> dict:
    """Accuracy per condition: the perfect setup, and the fleet's mean and min."""
    prepared = prepare_fleet(model_path, [], True, PROFILES, save_dir=None, stations=False)
    X, y = prepared.data.X, prepared.data.y
    ideal = perfect(prepared.profiles[0])
    alone = SimulatedFleet(prepared.model, [ideal], [map_model(prepared.model, ideal)])
    out = {"nominal": prepared.nominal_accuracy()}
    for name, perturbation in CONDITIONS.items():
        conditions = Conditions(perturbation=perturbation)
        fleet = prepared.fleet.accuracy(X, y, conditions)
        out[name] = {"perfect": float(alone.accuracy(X, y, conditions)[0]),
                     "fleet_mean": float(fleet.mean()), "fleet_min": float(fleet.min())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--dataset", default="digits28")
    parser.add_argument("--hidden", type=int, default=144)
    parser.add_argument("--methods", default="standard,noise-aware,sat,spec-sat",
                        help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--quick", action="store_true", help="digits (8x8), 2 epochs, 1 seed, standard and sat")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.dataset, args.hidden, args.methods = 1, 2, "digits", 16, "standard,sat"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.methods.split(","):
            for seed in range(args.seeds):
                config = TrainConfig(**METHODS[name], platform="freespace", epochs=args.epochs, seed=seed,
                                     hidden=[args.hidden])
                path = Path(tmp) / f"{name}-{seed}.onnx"
                t0 = time.perf_counter()
                train_and_export(args.dataset, config, path)
                seconds = time.perf_counter() - t0
                result = evaluate(path)
                rows.append({"method": name, "seed": seed, "train_seconds": seconds, **result})
                print(f"{name} seed {seed}: {seconds:.0f} s, nominal {result['nominal']:.3f}, " + ", ".join(
                    f"{c} {result[c]['perfect']:.3f}/{result[c]['fleet_mean']:.3f}/{result[c]['fleet_min']:.3f}"
                    for c in CONDITIONS), file=sys.stderr)
    summary = {}
    for name in args.methods.split(","):
        mine = [r for r in rows if r["method"] == name]
        summary[name] = {"nominal": float(np.mean([r["nominal"] for r in mine])),
                         "train_seconds": float(np.mean([r["train_seconds"] for r in mine]))}
        for c in CONDITIONS:
            summary[name][c] = {k: float(np.mean([r[c][k] for r in mine])) for k in ("perfect", "fleet_mean",
                                                                                       "fleet_min")}
    doc = {"dataset": args.dataset, "hidden": args.hidden, "epochs": args.epochs, "seeds": args.seeds,
           "profiles": str(PROFILES.relative_to(REPO)), "paper": PAPER, "summary": summary, "runs": rows}
    header = f"{'method':<12} {'nominal':>8} " + " ".join(f"{c:>22}" for c in CONDITIONS)
    print(header)
    print(" " * 21 + " ".join(f"{'perfect/mean/min':>22}" for _ in CONDITIONS))
    for name, s in summary.items():
        print(f"{name:<12} {100 * s['nominal']:7.1f}% " + " ".join(
            f"{100 * s[c]['perfect']:6.1f}/{100 * s[c]['fleet_mean']:5.1f}/{100 * s[c]['fleet_min']:5.1f} %"
            .rjust(22) for c in CONDITIONS))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()

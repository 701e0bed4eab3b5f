"""Issue 12's targets, measured: methods x fleets x seeds at -1, 0 and +1 K, with and without drift compensation.

Fleets: the shipped default and lots made here from altered process specs that
no method was tuned on (worse calibration error, another drift coefficient,
more crosstalk).  Per method and fleet it reports the ideal-chip accuracy, the
fleet mean and the fleet minimum (the worst chip of each seed, averaged over
seeds, and the worst over all seeds) at each temperature, as programmed and
drift-compensated.

    python benchmarks/spec_sat.py                      # the full table (about 10 min on two cores)
    python benchmarks/spec_sat.py --seeds 1 --quick    # a smoke run
    python benchmarks/spec_sat.py --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pnndeploy.data.datasets import load_dataset  # noqa: E402
from pnndeploy.simulation.compensation import DriftCompensation, compensated_accuracy  # noqa: E402
from pnndeploy.deploy.transfer import prepare_fleet  # noqa: E402
from pnndeploy.formats.process_spec import load_process  # noqa: E402
from pnndeploy.simulation.fabrication import make_fleet  # noqa: E402
from pnndeploy.simulation.fleet import Conditions  # noqa: E402
from pnndeploy.training.config import TrainConfig  # noqa: E402
from pnndeploy.training.pipeline import train_and_export  # noqa: E402

TEMPERATURES = (-1.0, 0.0, 1.0)
METHODS = {
    "standard": {"method": "standard"},
    "noise-aware": {"method": "noise-aware"},
    "sat": {"method": "sat"},
    "drift-noise": {"method": "sat", "rho": 0.0, "drift_budget": 1.0, "noise": 0.05},
    "spec-sat-programmed": {"method": "spec-sat", "drift_compensation": False},
    "spec-sat": {"method": "spec-sat", "drift_compensation": True},
}
#: Lots nobody tuned on: (name, changes to the default process spec).
LOTS = {
    "worse-calibration": {("calibration", "resonance_offset_sigma_nm"): 0.08},
    "faster-drift": {("ring", "drift_nm_per_K"): 0.12, ("ring", "drift_rel_sigma"): 0.10},
    "more-crosstalk": {("environment", "crosstalk"): 0.04},
}


def make_lots(root: Path) -> dict[str, tuple[Path, Path]]:
    """The default fleet and the altered lots: name -> (profiles folder, process spec)."""
    default = REPO / "device_profiles" / "process.yaml"
    lots = {"default": (REPO / "device_profiles", default)}
    base = load_process(default)
    import yaml

    for k, (name, changes) in enumerate(LOTS.items()):
        process = copy.deepcopy(base)
        process["name"] = f"{base['name']}-{name}"
        for (section, key), value in changes.items():
            process[section][key] = value
        folder = root / name
        make_fleet(process, 8, "chip", 1000 + k, folder)
        spec = folder / "process.yaml"
        spec.write_text(yaml.safe_dump(process))
        lots[name] = (folder, spec)
    return lots


def measure(model: Path, profiles: Path) -> dict:
    prepared = prepare_fleet(model, [], True, profiles, save_dir=None)
    fleet = prepared.require_simulated("a benchmark")
    X, y = prepared.data.X, prepared.data.y
    comp = DriftCompensation.for_drift(fleet.platform.nominal_drift)
    out = {"programmed": [], "compensated": []}
    for t in TEMPERATURES:
        out["programmed"].append(fleet.accuracy(X, y, Conditions(delta_T=t)).tolist())
        out["compensated"].append(compensated_accuracy(fleet, X, y, Conditions(delta_T=t), comp)[0].tolist())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--hidden", type=str, default="32")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="5 epochs, default fleet only")
    parser.add_argument("--methods", type=str, default=",".join(METHODS))
    parser.add_argument("--json", type=str, default=None)
    parser.add_argument("--dataset", type=str, default="digits", help="e.g. digits28 for the paper's 28x28 setting")
    parser.add_argument("--conv", type=str, default="", help="digital conv front end, e.g. 8,16")
    parser.add_argument("--onchip", type=int, default=0, help="only the last N linear layers on chip")
    parser.add_argument("--lots", type=str, default=None, help="comma-separated subset of: default," + ",".join(LOTS))
    args = parser.parse_args()
    hidden = [int(h) for h in args.hidden.split(",")]
    epochs = 5 if args.quick else args.epochs
    conv = [int(c) for c in args.conv.split(",") if c.strip()]
    results: dict = {"hidden": hidden, "epochs": epochs, "seeds": args.seeds, "dataset": args.dataset,
                     "conv": conv, "onchip": args.onchip, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lots = make_lots(root) if not args.quick else {"default": (REPO / "device_profiles", None)}
        if args.lots:
            lots = {k: v for k, v in lots.items() if k in args.lots.split(",")}
        for name in args.methods.split(","):
            for lot, (profiles, spec) in lots.items():
                settings = dict(METHODS[name], hidden=hidden, epochs=epochs, conv=conv, onchip=args.onchip)
                if settings["method"] == "spec-sat" and spec is not None:
                    settings["robust_to"] = str(spec)      # spec-SAT reads the lot's own spec
                per_seed = []
                t0 = time.perf_counter()
                for seed in range(args.seeds):
                    path = root / f"{name}-{lot}-{seed}.onnx"
                    summary, _ = train_and_export(load_dataset(args.dataset, seed=seed),
                                                  TrainConfig(seed=seed, **settings), path)
                    per_seed.append({"ideal": summary.test_accuracy, **measure(path, profiles)})
                row = {"method": name, "fleet": lot, "seconds": time.perf_counter() - t0,
                       "ideal": float(np.mean([s["ideal"] for s in per_seed]))}
                for mode in ("programmed", "compensated"):
                    acc = np.array([s[mode] for s in per_seed])            # (seeds, temps, chips)
                    row[mode] = {"mean": acc.mean(axis=(0, 2)).tolist(), "min": acc.min(axis=2).mean(axis=0).tolist(),
                                 "worst": acc.min(axis=(0, 2)).tolist()}
                results["rows"].append(row)
                p, c = row["programmed"], row["compensated"]
                fmt = lambda v: " ".join(f"{100 * x:5.1f}" for x in v)  # noqa: E731
                print(f"{name:14s} {lot:18s} ideal {100 * row['ideal']:5.1f} | mean {fmt(p['mean'])} | min {fmt(p['min'])}"
                      f" | worst {fmt(p['worst'])} || comp. mean {fmt(c['mean'])} | min {fmt(c['min'])} | worst "
                      f"{fmt(c['worst'])}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""Issue 27 part 4's second target: what pre-compensating the rings' heater crosstalk does to each method's fleet.

Trains the demo's methods (same settings: width 128, 30 epochs, spec-SAT against the fleet's process spec) for
``--seeds`` seeds and maps each model onto the default fleet twice, paired (the same model, chips and evaluation
draws): with the mapping as it is (the crosstalk pre-compensated) and with the pre-compensation switched off in
this process only (settings x* - r_hat, as before issue 27).  Reports per method and seed the fleet mean and worst
chip at the calibration temperature (0 K) and the mapping residual, and over seeds the mean paired difference
with its standard error.  The demo's three seeds are seeds 0-2; more seeds say whether a difference of a tenth of
a point there is the method or the draw (a 360-image test set moves in steps of 0.28 pp per chip).

    OMP_NUM_THREADS=1 python benchmarks/crosstalk.py --seeds 10 [--methods spec-sat,spec-sat-programmed] [--json F]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pnndeploy.data.datasets import load_dataset  # noqa: E402
from pnndeploy.deploy.transfer import prepare_fleet, transfer_report  # noqa: E402
from pnndeploy.experiments.demo import DEMO_HIDDEN, demo_entries  # noqa: E402
from pnndeploy.platforms.mrr import MRRPlatform  # noqa: E402
from pnndeploy.training.config import TrainConfig  # noqa: E402
from pnndeploy.training.methods import get_method  # noqa: E402
from pnndeploy.training.pipeline import train_and_export  # noqa: E402

FLEET = REPO / "device_profiles"


@contextmanager
def without_precompensation() -> Iterator[None]:
    """The ring mapping as before issue 27: heater settings solved as if the chip had no crosstalk."""
    solve = MRRPlatform.heater_settings

    def blind(goal, crosstalk, ci, layout, heater_range, held=None):  # noqa: ANN001, ANN202
        return solve(goal, 0.0, ci, layout, heater_range, held)

    MRRPlatform.heater_settings = staticmethod(blind)
    try:
        yield
    finally:
        MRRPlatform.heater_settings = staticmethod(solve)


def fleet_at_0K(model: Path) -> dict:
    """Per chip accuracy at the calibration temperature and the layers' mapping residuals."""
    prepared = prepare_fleet(model, [], True, FLEET, save_dir=None, stations=False)
    try:
        report = transfer_report(prepared)
        acc = [d.accuracy for d in report.devices]
        residual = [float(np.mean([d.mapping_residual[k] for d in report.devices]))
                    for k in range(len(report.devices[0].mapping_residual))]
    finally:
        prepared.close()
    return {"mean": float(np.mean(acc)), "min": float(np.min(acc)), "chips": acc, "residual": residual}


def paired(rows: list[dict], key: str) -> dict:
    """Mean over seeds of (pre-compensated - blind) and its standard error."""
    diff = np.array([r["precompensated"][key] - r["blind"][key] for r in rows])
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    return {"mean_pp": 100 * float(diff.mean()), "se_pp": 100 * se, "seeds_higher": int((diff > 0).sum()),
            "seeds_lower": int((diff < 0).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--methods", default=None, help="demo rows, comma-separated (default: all)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    entries = [e for e in demo_entries("mrr") if args.methods is None or e.name in args.methods.split(",")]
    results: dict[str, list[dict]] = {e.name: [] for e in entries}
    with tempfile.TemporaryDirectory() as tmp:
        for s in range(args.first_seed, args.first_seed + args.seeds):
            dataset = load_dataset("digits", seed=s)
            for entry in entries:
                robust = get_method(entry.settings["method"]).for_fleet(FLEET / "process.yaml")
                config = TrainConfig(**{**entry.settings, "seed": s, "platform": "mrr", "hidden": DEMO_HIDDEN,
                                        **robust})
                model = Path(tmp) / f"{entry.name}-{s}.onnx"
                train_and_export(dataset, config, model)
                row = {"seed": s, "precompensated": fleet_at_0K(model)}
                with without_precompensation():
                    row["blind"] = fleet_at_0K(model)
                results[entry.name].append(row)
                print(entry.name, s, {k: round(100 * row[k]["mean"], 2) for k in ("precompensated", "blind")},
                      {k: round(100 * row[k]["min"], 2) for k in ("precompensated", "blind")}, flush=True)
    summary = {name: {"fleet_mean": paired(rows, "mean"), "worst_chip": paired(rows, "min"),
                      "precompensated_mean": 100 * float(np.mean([r["precompensated"]["mean"] for r in rows])),
                      "blind_mean": 100 * float(np.mean([r["blind"]["mean"] for r in rows]))}
               for name, rows in results.items()}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": results}, indent=2))


if __name__ == "__main__":
    main()

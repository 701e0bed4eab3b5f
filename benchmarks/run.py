"""Benchmarks: what SAT costs per epoch, and how fast a fleet is evaluated.

    python benchmarks/run.py [--quick] [--json]

Every figure is measured in this one process, so the ratios hold on a noisy
machine; run nothing else meanwhile (two torch processes on two cores
oversubscribe them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pnndeploy.data import load_dataset  # noqa: E402
from pnndeploy.fleet import Conditions, SimulatedFleet  # noqa: E402
from pnndeploy.fleet_gen import chip_names, generate_chip, load_process  # noqa: E402
from pnndeploy.mapping import map_model  # noqa: E402
from pnndeploy.onnx_io import load_model  # noqa: E402
from pnndeploy.pipeline import train_and_export  # noqa: E402
from pnndeploy.training import TrainConfig, train  # noqa: E402
from pnndeploy.transfer import load_evaluation_data  # noqa: E402

EFFICIENT_EVERY = 5


def epoch_seconds(dataset, **settings) -> float:
    """Median epoch time of one training run (the first epoch is dropped as warm-up)."""
    result = train(dataset, TrainConfig(**settings))
    times = [r.seconds for r in result.history[1:]]
    return statistics.median(times)


def training_costs(dataset, epochs: int) -> dict:
    base = dict(epochs=epochs, seed=0)
    standard = epoch_seconds(dataset, method="standard", **base)
    plain = epoch_seconds(dataset, method="noise-aware", noise=0.0, **base)
    sat = epoch_seconds(dataset, method="sat", **base)
    efficient = epoch_seconds(dataset, method="sat", sat_every=EFFICIENT_EVERY, **base)
    return {
        "epoch_s": {"standard": standard, "plain_controls": plain, "sat": sat,
                    f"sat_every_{EFFICIENT_EVERY}": efficient},
        "sat_epoch_ratio": sat / standard,
        "efficient_sat_epoch_ratio": efficient / standard,
        "sat_vs_plain_controls": sat / plain,
        "efficient_sat_vs_plain_controls": efficient / plain,
    }


def make_chips(count: int, process: dict) -> list:
    return [generate_chip(process, name, seed=0) for name in chip_names(count, "bench")]


def prepared_fleet(model, chips):
    return SimulatedFleet(model, chips, [map_model(model, chip) for chip in chips])


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_seconds(model, chips: int, samples: int, repeats: int) -> float:
    """Plain matmuls of the same shapes on random data: the roofline the fleet evaluation is held to.

    The first layer's input is shared by all chips, so its plain form is one
    (samples x in) @ (in x chips*out) GEMM; later layers are batched matmuls.
    """
    rng = np.random.default_rng(0)
    X = rng.random((samples, model.n_features), dtype=np.float32)
    first, *rest = [rng.standard_normal((chips, *layer.weight.shape), dtype=np.float32) for layer in model.layers]
    flat = np.ascontiguousarray(first.reshape(-1, first.shape[2]).T)
    hidden = rng.random((chips, samples, first.shape[1]), dtype=np.float32)

    def run():
        X @ flat
        for W in rest:
            np.matmul(hidden, W.transpose(0, 2, 1))

    return best_of(run, repeats)


def fleet_macs(model, chips: int, samples: int) -> int:
    return chips * samples * sum(int(np.prod(layer.weight.shape)) for layer in model.layers)


def fleet_throughput(model, data, process, sizes, repeats: int, loop_limit: int) -> list[dict]:
    rows = []
    for n in sizes:
        chips = make_chips(n, process)
        fleet = prepared_fleet(model, chips)
        vec = best_of(lambda: fleet.accuracy(data.X, data.y, Conditions(delta_T=0.5)), repeats)
        singles = [prepared_fleet(model, [c]) for c in chips[:loop_limit]]
        loop = best_of(lambda: [f.accuracy(data.X, data.y, Conditions(delta_T=0.5)) for f in singles], repeats)
        loop *= n / len(singles)        # extrapolated when only the first loop_limit chips are looped
        mm = matmul_seconds(model, n, data.X.shape[0], repeats)
        macs = fleet_macs(model, n, data.X.shape[0])
        rows.append({"chips": n, "vectorized_s": vec, "loop_s": loop, "loop_chips_timed": len(singles),
                     "speedup": loop / vec, "matmul_s": mm, "gmacs_per_s": macs / vec / 1e9,
                     "matmul_gmacs_per_s": macs / mm / 1e9, "roofline_fraction": mm / vec})
    return rows


def width_scaling(data, process, widths, chips: int, repeats: int, tmp: Path) -> list[dict]:
    rows = []
    dataset = load_dataset("digits", seed=0)
    for width in widths:
        path = tmp / f"w{width}.onnx"
        train_and_export(dataset, TrainConfig(method="sat", epochs=1, hidden=[width]), path)
        model = load_model(path)
        fleet = prepared_fleet(model, make_chips(chips, process))
        t = best_of(lambda: fleet.accuracy(data.X, data.y), repeats)
        rows.append({"hidden": width, "chips": chips, "seconds": t,
                     "macs": fleet_macs(model, chips, data.X.shape[0])})
    return rows


def fleet_accuracy_comparison(dataset, process_chips_path: Path, tmp: Path, epochs: int) -> dict:
    """Fleet mean of full SAT vs efficient SAT on the default fleet at ΔT = 0 and ±1 K."""
    from pnndeploy.transfer import prepare_fleet, transfer_report

    out = {}
    for name, settings in (("sat", {}), (f"sat_every_{EFFICIENT_EVERY}", {"sat_every": EFFICIENT_EVERY})):
        path = tmp / f"{name}.onnx"
        train_and_export(dataset, TrainConfig(method="sat", epochs=epochs, seed=0, **settings), path)
        prepared = prepare_fleet(path, [], True, process_chips_path, save_dir=None)
        out[name] = {f"{dT:+g}K": transfer_report(prepared, delta_T=dT)["fleet"]["mean"] for dT in (-1.0, 0.0, 1.0)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs, chips and repeats (under a minute)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()
    quick = args.quick
    dataset = load_dataset("digits", seed=0)
    process = load_process(ROOT / "device_profiles" / "process.yaml")
    doc: dict = {"quick": quick}
    t_start = time.perf_counter()
    doc.update(training_costs(dataset, epochs=4 if quick else 8))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_path = tmp / "bench.onnx"
        train_and_export(dataset, TrainConfig(method="sat", epochs=3 if quick else 30, seed=0), model_path)
        model = load_model(model_path)
        data = load_evaluation_data(model)
        sizes = [8, 64] if quick else [8, 64, 512]
        repeats = 2 if quick else 3
        doc["fleet"] = fleet_throughput(model, data, process, sizes, repeats, loop_limit=64)
        doc["scaling"] = {
            "chips": [{"chips": r["chips"], "seconds": r["vectorized_s"]} for r in doc["fleet"]],
            "hidden": width_scaling(data, process, [32, 128] if quick else [32, 64, 128, 256, 512],
                                    chips=16 if quick else 64, repeats=repeats, tmp=tmp),
        }
        doc["accuracy"] = fleet_accuracy_comparison(dataset, ROOT / "device_profiles", tmp,
                                                    epochs=6 if quick else 30)
    doc["total_s"] = time.perf_counter() - t_start
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        render(doc)


def render(doc: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title="training cost per epoch (digits, 64→32→10, batch 32; median)")
    for c in ("method", "seconds", "× standard"):
        t.add_column(c, justify="right")
    std = doc["epoch_s"]["standard"]
    for name, s in doc["epoch_s"].items():
        t.add_row(name, f"{s:.4f}", f"{s / std:.2f}")
    console.print(t)
    f = Table(title="fleet evaluation (360 samples, ΔT = 0.5 K, detector noise on)")
    for c in ("chips", "vectorized s", "loop s", "speedup", "GMAC/s", "matmul GMAC/s", "roofline"):
        f.add_column(c, justify="right")
    for r in doc["fleet"]:
        f.add_row(str(r["chips"]), f"{r['vectorized_s']:.4f}", f"{r['loop_s']:.3f}", f"{r['speedup']:.1f}×",
                  f"{r['gmacs_per_s']:.2f}", f"{r['matmul_gmacs_per_s']:.2f}", f"{100 * r['roofline_fraction']:.0f} %")
    console.print(f)
    w = Table(title="scaling with hidden width")
    for c in ("hidden", "chips", "seconds", "MACs"):
        w.add_column(c, justify="right")
    for r in doc["scaling"]["hidden"]:
        w.add_row(str(r["hidden"]), str(r["chips"]), f"{r['seconds']:.4f}", f"{r['macs']:.3g}")
    console.print(w)
    a = Table(title="fleet mean accuracy on the default fleet")
    a.add_column("method")
    for k in ("-1K", "+0K", "+1K"):
        a.add_column(k, justify="right")
    for name, row in doc["accuracy"].items():
        a.add_row(name, *(f"{100 * row[k]:.1f} %" for k in ("-1K", "+0K", "+1K")))
    console.print(a)
    console.print(f"total {doc['total_s']:.0f} s")


if __name__ == "__main__":
    main()

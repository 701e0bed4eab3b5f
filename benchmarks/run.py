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
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pnndeploy.data.datasets import load_dataset  # noqa: E402
from pnndeploy.deploy.mapping import map_models  # noqa: E402
from pnndeploy.deploy.transfer import load_evaluation_data  # noqa: E402
from pnndeploy.formats.onnx_io import load_model  # noqa: E402
from pnndeploy.formats.process_spec import load_process  # noqa: E402
from pnndeploy.simulation.fabrication import chip_names, generate_chip  # noqa: E402
from pnndeploy.simulation.fleet import CHIPS_PER_BATCH, Conditions, SimulatedFleet  # noqa: E402
from pnndeploy.training.config import TrainConfig  # noqa: E402
from pnndeploy.training.loop import train  # noqa: E402
from pnndeploy.training.pipeline import train_and_export  # noqa: E402

EFFICIENT_EVERY = 5
#: The training methods whose epoch times are compared (name -> TrainConfig settings).
TRAINING_METHODS = {
    "standard": {"method": "standard"},
    "plain_controls": {"method": "noise-aware", "noise": 0.0},
    "sat": {"method": "sat"},
    f"sat_every_{EFFICIENT_EVERY}": {"method": "sat", "sat_every": EFFICIENT_EVERY},
    "sat_momentum": {"method": "sat", "ascent": "momentum"},
    "spec_sat": {"method": "spec-sat"},
    "spec_sat_momentum": {"method": "spec-sat", "ascent": "momentum"},
}


def epoch_times(dataset, rounds: int, epochs: int, **settings) -> dict[str, list[float]]:
    """Epoch times of every method, the methods interleaved round by round.

    Interleaving spreads a noisy spell of the machine over all methods
    instead of one; the first epoch of each run is dropped as warm-up.
    """
    times: dict[str, list[float]] = {name: [] for name in TRAINING_METHODS}
    for _ in range(rounds):
        for name, method in TRAINING_METHODS.items():
            result = train(dataset, TrainConfig(epochs=epochs, seed=0, **method, **settings))
            times[name] += [r.seconds for r in result.history[1:]]
    return times


def training_costs(dataset, rounds: int, epochs: int, hidden: int, batch: int) -> dict:
    """Per-epoch cost of each method relative to standard training, on one model size.

    The ratios use each method's fastest epoch (the least disturbed by other
    work on the machine); medians are reported beside them.
    """
    times = epoch_times(dataset, rounds, epochs, hidden=[hidden], batch_size=batch)
    best = {name: min(t) for name, t in times.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    efficient = f"sat_every_{EFFICIENT_EVERY}"
    return {
        "hidden": hidden, "batch_size": batch, "epochs_timed": len(times["standard"]),
        "epoch_s": best, "epoch_median_s": median,
        "sat_epoch_ratio": best["sat"] / best["standard"],
        "efficient_sat_epoch_ratio": best[efficient] / best["standard"],
        "momentum_sat_epoch_ratio": best["sat_momentum"] / best["standard"],
        "spec_sat_epoch_ratio": best["spec_sat"] / best["standard"],
        "momentum_spec_sat_epoch_ratio": best["spec_sat_momentum"] / best["standard"],
        "plain_controls_ratio": best["plain_controls"] / best["standard"],
        "sat_vs_plain_controls": best["sat"] / best["plain_controls"],
        "efficient_sat_vs_plain_controls": best[efficient] / best["plain_controls"],
        "median_ratios": {name: median[name] / median["standard"] for name in median},
    }


def make_chips(count: int, process: dict) -> list:
    return [generate_chip(process, name, seed=0) for name in chip_names(count, "bench")]


def prepared_fleet(model, chips):
    return SimulatedFleet(model, chips, map_models(model, chips))


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
    (chips*out x in) @ (in x samples) GEMM; later layers are batched matmuls.
    Timed over all chips at once and in the evaluator's chunks of chips; the
    faster of the two is the roofline (the stricter reference).
    """
    rng = np.random.default_rng(0)
    XT = rng.random((model.n_features, samples), dtype=np.float32)
    first, *rest = [rng.standard_normal((chips, *layer.weight.shape), dtype=np.float32) for layer in model.layers]
    flat = first.reshape(-1, first.shape[2])
    hidden = [rng.random((chips, W.shape[2], samples), dtype=np.float32) for W in rest]

    def run(chunk: int):
        for start in range(0, chips, chunk):
            flat[start * first.shape[1]:(start + chunk) * first.shape[1]] @ XT
            for W, h in zip(rest, hidden):
                np.matmul(W[start:start + chunk], h[start:start + chunk])

    return min(best_of(lambda: run(chips), repeats), best_of(lambda: run(CHIPS_PER_BATCH), repeats))


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
                     "matmul_gmacs_per_s": macs / mm / 1e9, "roofline_fraction": mm / vec,
                     # what batching could gain at most: the loop against bare matmuls at the roofline
                     "speedup_bound": loop / mm})
    return rows


def ring_mapping(model, process, chips: int, repeats: int) -> dict:
    """Mapping the fleet's model onto ``chips`` ring chips of the default process (``map_models``: transfer, audit
    and sweeps map a lot so), ms a chip, best of ``repeats``."""
    profiles = make_chips(chips, process)
    return {"chips": chips, "ms_per_chip": 1000 * best_of(lambda: map_models(model, profiles), repeats) / chips}


def mzi_benchmark_model(path: Path, epochs: int = 3) -> Any:
    """The MZI benchmarks' model (SAT, digits, 64 -> 32 -> 10 on 16-mode meshes), trained, written to ``path``
    and loaded."""
    train_and_export(load_dataset("digits", seed=0), TrainConfig(platform="mzi", method="sat", epochs=epochs, seed=0,
                                                             hidden=[32]), path)
    return load_model(path)


def mzi_fleet_throughput(tmp: Path, sizes: list[int], repeats: int, epochs: int, mapped: int = 8) -> list[dict]:
    """MZI fleet evaluation at each size, against the matmul roofline of the same shapes (:func:`mzi_fleet_rows`)."""
    process = load_process(ROOT / "device_profiles" / "mzi" / "process.yaml")
    model = mzi_benchmark_model(tmp / "mzi.onnx", epochs)
    return mzi_fleet_rows(model, load_evaluation_data(model), process, sizes, repeats, mapped)


def mzi_fleet_rows(model, data, process, sizes: list[int], repeats: int, mapped: int = 8) -> list[dict]:
    """The first ``mapped`` chips are mapped and their deployments repeated over the rest (the evaluation's cost
    does not depend on the settings' values).

    ``vectorized_s`` / ``roofline_fraction``: every timed evaluation at a new temperature (each chip's meshes
    realised again: an audit's sweep); ``same_drift_s`` / ``same_drift_roofline_fraction``: evaluations at one
    temperature and noise draw (more samples through the same chips: the meshes realised once and reused).
    ``mesh_s`` is the part spent realising the weights (building every chip's mesh unitaries); ``meshes_by``:
    the compiled kernel or torch (:func:`use_mesh_kernel`).
    """
    from pnndeploy.platforms import mesh_kernel

    rows = []
    deployments = map_models(model, make_chips(mapped, process))    # the same first chips at every size
    for n in sizes:
        chips = make_chips(n, process)
        fleet = SimulatedFleet(model, chips, [deployments[k % len(deployments)] for k in range(n)])
        drift = iter(0.5 + 1e-3 * np.arange(1, 4 * repeats + 4))
        vec = best_of(lambda: fleet.accuracy(data.X, data.y, Conditions(delta_T=float(next(drift)))), repeats)
        fleet.accuracy(data.X, data.y, Conditions(delta_T=0.5))
        warm = best_of(lambda: fleet.accuracy(data.X, data.y, Conditions(delta_T=0.5)), repeats)

        def realise_all() -> None:
            conditions = Conditions(delta_T=float(next(drift)))
            for start in range(0, n, CHIPS_PER_BATCH):
                for k in range(len(model.layers)):
                    fleet.realised_weights(k, slice(start, min(start + CHIPS_PER_BATCH, n)), conditions)

        mesh = best_of(realise_all, repeats)
        mm = matmul_seconds(model, n, data.X.shape[0], repeats)
        macs = fleet_macs(model, n, data.X.shape[0])
        modes = int(model.platform_params["modes"])
        rows.append({"chips": n, "vectorized_s": vec, "mesh_s": mesh, "matmul_s": mm,
                     "meshes_by": "kernel" if mesh_kernel.compiled() and mesh_kernel.agrees(modes) else "torch",
                     "gmacs_per_s": macs / vec / 1e9, "roofline_fraction": mm / vec, "same_drift_s": warm,
                     "same_drift_roofline_fraction": mm / warm,
                     "mapped_chips": min(mapped, n), "modes": modes})
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


def fleet_accuracy_comparison(process_chips_path: Path, tmp: Path, epochs: int, seeds: list[int]) -> dict:
    """Fleet mean of full SAT vs efficient SAT (K = 5 and 10) on the default fleet at ΔT = -1, 0, +1 K, per seed.

    One seed says little at ±1 K (the fleet sits on the steep flank there and
    seeds differ by 10 pp or more), so the difference is averaged over seeds.
    """
    from pnndeploy.deploy.transfer import prepare_fleet, transfer_report

    temps = (-1.0, 0.0, 1.0)
    names = {"sat": {}, **{f"sat_every_{k}": {"sat_every": k} for k in (EFFICIENT_EVERY, 2 * EFFICIENT_EVERY)},
             "sat_momentum": {"ascent": "momentum"}}
    per_seed: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for seed in seeds:
        dataset = load_dataset("digits", seed=seed)
        for name, settings in names.items():
            path = tmp / f"{name}-{seed}.onnx"
            train_and_export(dataset, TrainConfig(method="sat", epochs=epochs, seed=seed, hidden=[32], **settings),
                             path)
            prepared = prepare_fleet(path, [], True, process_chips_path, save_dir=None)
            per_seed[name].append({f"{t:+g}K": transfer_report(prepared, delta_T=t).fleet.mean
                                   for t in temps})
    keys = [f"{t:+g}K" for t in temps]
    out: dict = {"seeds": seeds, "epochs": epochs, "per_seed": per_seed,
                 "mean": {name: {k: statistics.mean(r[k] for r in rows) for k in keys}
                          for name, rows in per_seed.items()}}

    def difference(name: str) -> dict:
        diffs = {k: [e[k] - f[k] for e, f in zip(per_seed[name], per_seed["sat"])] for k in keys}
        return {k: {"mean": statistics.mean(d), "sd": statistics.stdev(d) if len(d) > 1 else None,
                    "min": min(d), "max": max(d)} for k, d in diffs.items()}

    out["efficient_minus_full"] = difference(f"sat_every_{EFFICIENT_EVERY}")
    out["minus_full"] = {name: difference(name) for name in names if name != "sat"}
    return out


def add_mesh_kernel_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mesh-kernel", choices=["compiled", "torch", "auto"], default=None,
                        help="how MZI meshes are realised: compiled (numba, the fast extra: the default where it "
                             "is installed), torch, or auto (as a process does: torch until it has realised "
                             "mesh_kernel.COMPILE_AFTER_MESHES); the same bits every way")


def use_mesh_kernel(choice: str | None) -> str:
    """Realise meshes in the compiled kernel from the first (``compiled``), never (``torch``) or as a process does
    (``auto``); None: compiled where numba is installed, else torch.  Returns the choice made."""
    from pnndeploy.platforms import mesh_kernel

    if choice is None:
        choice = "compiled" if mesh_kernel.available() else "torch"
    if choice == "compiled" and not mesh_kernel.available():
        raise SystemExit("--mesh-kernel compiled needs numba: pip install -e '.[fast]'")
    if choice != "auto":
        mesh_kernel.COMPILE_AFTER_MESHES = 0 if choice == "compiled" else float("inf")
    return choice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs, chips, seeds and repeats (under a minute)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_mesh_kernel_option(parser)
    args = parser.parse_args()
    quick = args.quick
    dataset = load_dataset("digits", seed=0)
    process = load_process(ROOT / "device_profiles" / "process.yaml")
    doc: dict = {"quick": quick, "mesh_kernel": use_mesh_kernel(args.mesh_kernel)}
    t_start = time.perf_counter()
    rounds = 2 if quick else 5
    doc["training"] = [training_costs(dataset, rounds, epochs=3, hidden=32, batch=32)]
    if not quick:
        doc["training"].append(training_costs(dataset, rounds, epochs=3, hidden=256, batch=128))
    default = doc["training"][0]
    doc.update({k: default[k] for k in ("sat_epoch_ratio", "efficient_sat_epoch_ratio", "momentum_sat_epoch_ratio",
                                        "spec_sat_epoch_ratio", "momentum_spec_sat_epoch_ratio", "epoch_s")})
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_path = tmp / "bench.onnx"
        train_and_export(dataset, TrainConfig(method="sat", epochs=3 if quick else 30, seed=0, hidden=[32]),
                         model_path)
        model = load_model(model_path)
        data = load_evaluation_data(model)
        sizes = [8, 64] if quick else [8, 64, 512]
        repeats = 3 if quick else 7
        doc["fleet"] = fleet_throughput(model, data, process, sizes, repeats, loop_limit=64)
        doc["ring_mapping"] = ring_mapping(model, process, 64 if quick else 512, 3)
        doc["scaling"] = {
            "chips": [{"chips": r["chips"], "seconds": r["vectorized_s"]} for r in doc["fleet"]],
            "hidden": width_scaling(data, process, [32, 128] if quick else [32, 64, 128, 256, 512],
                                    chips=16 if quick else 64, repeats=repeats, tmp=tmp),
        }
        doc["mzi_fleet"] = mzi_fleet_throughput(tmp, [8, 64] if quick else [64, 512], repeats,
                                                epochs=1 if quick else 3)
        doc["accuracy"] = fleet_accuracy_comparison(ROOT / "device_profiles", tmp, epochs=6 if quick else 30,
                                                    seeds=[0] if quick else [0, 1, 2, 3, 4])
    doc["total_s"] = time.perf_counter() - t_start
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        render(doc)


def render(doc: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for row in doc["training"]:
        t = Table(title=f"training cost per epoch (digits, 64→{row['hidden']}→10, batch {row['batch_size']}; "
                        f"fastest of {row['epochs_timed']} epochs)")
        for c in ("method", "seconds", "× standard", "median × standard"):
            t.add_column(c, justify="right")
        std = row["epoch_s"]["standard"]
        for name, s in row["epoch_s"].items():
            t.add_row(name, f"{s:.4f}", f"{s / std:.2f}", f"{row['median_ratios'][name]:.2f}")
        console.print(t)
    f = Table(title="fleet evaluation (360 samples, ΔT = 0.5 K, detector noise on; best of several)")
    for c in ("chips", "vectorized s", "loop s", "speedup", "bound", "GMAC/s", "matmul GMAC/s", "roofline"):
        f.add_column(c, justify="right")
    for r in doc["fleet"]:
        f.add_row(str(r["chips"]), f"{r['vectorized_s']:.4f}", f"{r['loop_s']:.4f}", f"{r['speedup']:.1f}×",
                  f"{r['speedup_bound']:.1f}×", f"{r['gmacs_per_s']:.2f}", f"{r['matmul_gmacs_per_s']:.2f}",
                  f"{100 * r['roofline_fraction']:.0f} %")
    console.print(f)
    mapping = doc["ring_mapping"]
    console.print(f"mapping onto {mapping['chips']} ring chips: {mapping['ms_per_chip']:.3f} ms a chip (best of 3)")
    z = Table(title=f"MZI fleet evaluation ({doc['mzi_fleet'][0]['modes']}-mode meshes, 360 samples, ΔT = 0.5 K)")
    for c in ("chips", "seconds", "of which meshes", "matmul s", "GMAC/s", "roofline", "same drift s",
              "roofline, same drift"):
        z.add_column(c, justify="right")
    for r in doc["mzi_fleet"]:
        z.add_row(str(r["chips"]), f"{r['vectorized_s']:.4f}", f"{r['mesh_s']:.4f}", f"{r['matmul_s']:.4f}",
                  f"{r['gmacs_per_s']:.2f}", f"{100 * r['roofline_fraction']:.1f} %", f"{r['same_drift_s']:.4f}",
                  f"{100 * r['same_drift_roofline_fraction']:.1f} %")
    console.print(z)
    w = Table(title="scaling with hidden width")
    for c in ("hidden", "chips", "seconds", "MACs"):
        w.add_column(c, justify="right")
    for r in doc["scaling"]["hidden"]:
        w.add_row(str(r["hidden"]), str(r["chips"]), f"{r['seconds']:.4f}", f"{r['macs']:.3g}")
    console.print(w)
    acc = doc["accuracy"]
    keys = ("-1K", "+0K", "+1K")
    a = Table(title=f"fleet mean accuracy on the default fleet (seeds {acc['seeds']})")
    a.add_column("method")
    for k in keys:
        a.add_column(k, justify="right")
    for name, row in acc["mean"].items():
        a.add_row(name, *(f"{100 * row[k]:.1f} %" for k in keys))
    for name, d in acc["minus_full"].items():
        a.add_row(f"{name} − sat", *(f"{100 * d[k]['mean']:+.1f} pp" + (f" (sd {100 * d[k]['sd']:.1f})"
                                                                         if d[k]["sd"] is not None else "")
                                     for k in keys))
    console.print(a)
    console.print(f"total {doc['total_s']:.0f} s")


if __name__ == "__main__":
    main()

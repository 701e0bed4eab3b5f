"""MZI lots at scale (issue 26, part 3): mapping per chip, fleet evaluation against the matmul roofline, a lot on Ray.

    python benchmarks/mzi_bench.py [--sizes 64 512] [--legacy-chips 8] [--lot 10000] [--json]

The model is the one ``benchmarks/run.py`` times the MZI fleet with (SAT, digits, 64 -> 32 -> 10 on a 16-mode
mesh, 3 epochs).  Mapping is timed as it runs now (:func:`map_models`, every chip's blocks fitted together) and,
on the first ``--legacy-chips`` chips, as it ran before (one chip at a time, all blocks of a layer in one
``torch.optim.LBFGS`` with a strong-Wolfe line search, 120 iterations: kept here as the reference), in this one
process, with both residuals on the same chips.  The batched mapping runs its batches of chips on as many threads
as torch has (``threads`` in its rows: ``OMP_NUM_THREADS=1`` for the one-thread figure), the reference on one.
The Ray lot is generated, mapped and evaluated inside the Ray tasks (the driver never holds its profiles).  Run
nothing else meanwhile; the figures are the best of ``--repeats`` where repeated.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import (add_mesh_kernel_option, make_chips, mzi_benchmark_model, mzi_fleet_rows,  # noqa: E402
                 use_mesh_kernel)

from pnndeploy.deploy.executors import lot_accuracy, ray_session, run_tasks  # noqa: E402
from pnndeploy.deploy.mapping import map_models  # noqa: E402
from pnndeploy.deploy.transfer import load_evaluation_data  # noqa: E402
from pnndeploy.formats.process_spec import load_process  # noqa: E402
from pnndeploy.simulation.fabrication import chip_names, generate_chip  # noqa: E402
from pnndeploy.simulation.fleet import Conditions  # noqa: E402

PROCESS = ROOT / "device_profiles" / "mzi" / "process.yaml"
#: The iterations of the per-chip fit before the batched one (the reference).
LEGACY_ITERATIONS = 120


def legacy_residuals(model: Any, chip: Any) -> list[float]:
    """The mapping as it was before the batched fit (the reference): per layer one L-BFGS over all its blocks."""
    import torch

    from pnndeploy.platforms import platform_for
    from pnndeploy.platforms.base import quantise
    from pnndeploy.platforms.mesh import mesh_unitary
    from pnndeploy.platforms.mzi import _blocks, _precompensate, _spill

    platform = platform_for(model.platform, model.platform_params)
    n, env, cal = chip.shape[0], chip.environment, chip.calibration
    r = torch.from_numpy(np.asarray(cal["splitter_ratio"], np.float64))
    out = []
    for layer in model.layers:
        blocks = torch.from_numpy(_blocks(layer.weight.astype(np.float64), n))
        mask = torch.from_numpy((_blocks(np.ones(layer.weight.shape), n) > 0).astype(np.float64))
        phases = torch.from_numpy(layer.controls.astype(np.float64)).requires_grad_(True)
        opt = torch.optim.LBFGS([phases], lr=1.0, max_iter=LEGACY_ITERATIONS, tolerance_grad=1e-7,
                                tolerance_change=1e-12,
                                history_size=20, line_search_fn="strong_wolfe")

        def loss() -> Any:
            opt.zero_grad()
            value = torch.sum(mask * (mesh_unitary(phases, n, r).real - blocks) ** 2)
            value.backward()
            return value

        opt.step(loss)
        lo, hi = env.heater_range
        wanted, _ = _precompensate(phases.detach().numpy() - cal[platform.offset_name], float(env.crosstalk), n, lo, hi)
        settings, _ = quantise(wanted, (lo, hi), env.dac_bits)
        realised = settings + cal[platform.offset_name] + float(env.crosstalk) * _spill(settings, n)
        got = mesh_unitary(torch.from_numpy(realised), n, r).real
        out.append(float(torch.sqrt(torch.sum(mask * (got - blocks) ** 2))))
    return out


def mapping(model: Any, process: dict, sizes: list[int], legacy: int) -> dict:
    """ms per chip and residuals (mean and max per layer) of the batched mapping at each size; the reference
    (legacy) mapping on the first ``legacy`` chips, with the batched residuals of the same chips beside it."""
    import torch

    rows = []
    for size in sizes:
        chips = make_chips(size, process)
        t0 = time.perf_counter()
        deployments = map_models(model, chips)
        seconds = time.perf_counter() - t0
        res = np.array([[layer.residual for layer in d.layers] for d in deployments])
        rows.append({"chips": size, "ms_per_chip": 1000 * seconds / size, "residual_mean": res.mean(0).tolist(),
                     "residual_max": res.max(0).tolist(), "clipped": int(sum(d.clipped for d in deployments)),
                     "threads": torch.get_num_threads()})
    chips = make_chips(legacy, process)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        old = np.array([legacy_residuals(model, c) for c in chips])
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    new = np.array([[layer.residual for layer in d.layers] for d in map_models(model, chips)])
    return {"batched": rows, "legacy": {"chips": legacy, "ms_per_chip": 1000 * seconds / legacy,
                                        "residual_mean": old.mean(0).tolist(), "residual_max": old.max(0).tolist(),
                                        "batched_residual_mean_same_chips": new.mean(0).tolist()}}


def _generate(names: list[str]) -> list:
    """The chips of one task of the lot, made in the task (so the driver never holds the lot)."""
    process = load_process(PROCESS)
    return [generate_chip(process, name, seed=0) for name in names]


def _nothing(i: int) -> int:
    return i


def ray_lot(model: Any, data: Any, chips: int, per_task: int) -> dict:
    """A lot of ``chips`` generated, mapped and evaluated in Ray tasks of ``per_task`` chips (local cluster)."""
    names = chip_names(chips, "lot")
    batches = [functools.partial(_generate, names[i:i + per_task]) for i in range(0, chips, per_task)]
    with ray_session() as ray:
        t0 = time.perf_counter()
        run_tasks(_nothing, [(0,)] * 4, "ray")                  # workers up before anything is timed
        start_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = lot_accuracy(model, batches, data.X, data.y, Conditions(delta_T=0.5), "ray")
        seconds = time.perf_counter() - t0
        cpus = int(ray.cluster_resources().get("CPU", 0))
    return {"chips": chips, "chips_per_task": per_task, "ray_cpus": cpus, "seconds": seconds,
            "ms_per_chip": 1000 * seconds / chips, "workers_up_s": start_s,
            "accuracy_mean": float(result["accuracy"].mean()), "accuracy_min": float(result["accuracy"].min()),
            "residual_mean": result["residual"].mean(0).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--legacy-chips", type=int, default=8)
    parser.add_argument("--lot", type=int, default=10_000, help="chips of the Ray lot (0: skip)")
    parser.add_argument("--chips-per-task", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], choices=["mapping", "fleet"])
    add_mesh_kernel_option(parser)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    use_mesh_kernel(args.mesh_kernel)
    process = load_process(PROCESS)
    doc: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = mzi_benchmark_model(Path(tmp) / "mzi.onnx")
        data = load_evaluation_data(model)
        if "mapping" not in args.skip:
            doc["mapping"] = mapping(model, process, args.sizes, args.legacy_chips)
        if "fleet" not in args.skip:
            doc["fleet"] = mzi_fleet_rows(model, data, process, args.sizes, args.repeats)
        if args.lot:
            doc["ray_lot"] = ray_lot(model, data, args.lot, args.chips_per_task)
    print(json.dumps(doc, indent=2 if args.json else None))


if __name__ == "__main__":
    main()

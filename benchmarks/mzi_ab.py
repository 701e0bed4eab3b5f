"""MZI fleet evaluation of one checkout against the matmul roofline, for before/after runs of two checkouts.

    python benchmarks/mzi_ab.py --root /path/to/other/checkout --model /tmp/mzi.onnx   # before
    python benchmarks/mzi_ab.py --model /tmp/mzi.onnx                                  # this checkout

Run the two alternately (several times, take the best): the code under test is imported from ``--root``, the model
file is shared (trained here when missing: SAT, digits, 64 -> 32 -> 10 on 16-mode meshes, 3 epochs, as
``benchmarks/run.py``).  One torch thread (``--threads``) so that a shared machine's other work does not turn
thread synchronisation into the measurement.  ``cold``: each evaluation at a new drift (the meshes realised
again); ``same_drift``: the same drift again (more samples through the same chips).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--model", required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    sys.path[:0] = [args.root, str(Path(args.root) / "benchmarks")]
    import torch

    from run import make_chips, matmul_seconds
    from pnndeploy.compute import Compute
    from pnndeploy.data.datasets import load_dataset
    from pnndeploy.deploy.mapping import map_model
    from pnndeploy.deploy.transfer import load_evaluation_data
    from pnndeploy.formats.onnx_io import load_model
    from pnndeploy.formats.process_spec import load_process
    from pnndeploy.simulation.fleet import Conditions, SimulatedFleet
    from pnndeploy.training.config import TrainConfig
    from pnndeploy.training.pipeline import train_and_export

    torch.set_num_threads(args.threads)
    if not Path(args.model).exists():
        train_and_export(load_dataset("digits", seed=0), TrainConfig(platform="mzi", method="sat", epochs=3, seed=0,
                                                                 hidden=[32]), Path(args.model))
    model = load_model(args.model)
    data = load_evaluation_data(model)
    process = load_process(Path(args.root) / "device_profiles" / "mzi" / "process.yaml")
    deployments = [map_model(model, chip) for chip in make_chips(8, process)]
    rows = []
    for n in args.sizes:
        fleet = SimulatedFleet(model, make_chips(n, process), [deployments[k % 8] for k in range(n)],
                               Compute("cpu", args.threads))

        def best(drift: float | None) -> float:
            seconds = float("inf")
            for r in range(args.repeats):
                conditions = Conditions(delta_T=0.5 + 1e-3 * (r + 1) if drift is None else drift)
                t0 = time.perf_counter()
                fleet.accuracy(data.X, data.y, conditions)
                seconds = min(seconds, time.perf_counter() - t0)
            return seconds

        cold = best(None)
        fleet.accuracy(data.X, data.y, Conditions(delta_T=0.5))
        warm = best(0.5)
        mm = matmul_seconds(model, n, data.X.shape[0], args.repeats)
        rows.append({"chips": n, "cold_s": cold, "same_drift_s": warm, "matmul_s": mm, "roofline_cold": mm / cold,
                     "roofline_same_drift": mm / warm})
    print(json.dumps({"root": args.root, "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()

"""Benchmarks on a CUDA GPU: training the paper's LeNet split at MNIST size, and fleets of 10^4 to 10^6 chips.

    python benchmarks/gpu.py [--json] [--compute cuda:N] [--quick]

Without a CUDA device it says so in one line and exits 0 ("skipped"), so it can run anywhere; CI has no GPU.
On a GPU it measures, each beside the same work on this machine's CPU (every core):

* training the LeNet split (benchmarks/compute.py: conv 6, 16 front end, 784 -> 120 digital, 120 -> 84 -> 10 on
  rings) on a 60,000-sample MNIST-shaped set, per method (standard, spec-sat) and a plain PyTorch model of the
  same shape: samples per second of the fastest epoch;
* fleets of 10^4, 10^5 and 10^6 ring chips (64 -> 32 -> 10, 360 samples, dT = 0.5 K, detector noise on) streamed
  through the simulator in chunks: chips per second, the CPU at 10^4 for scale.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from compute import LENET, million, mnist_shaped, plain_lenet  # noqa: E402

from pnndeploy.compute import Compute, ComputeError, resolve_compute  # noqa: E402
from pnndeploy.training.config import TrainConfig  # noqa: E402
from pnndeploy.training.loop import train  # noqa: E402


def training(device: str, samples: int, epochs: int, batch: int) -> list[dict]:
    """Samples per second of the LeNet split's training on ``device`` and on the CPU (every core)."""
    data = mnist_shaped(samples)
    rows = []
    for method in ("plain PyTorch", "standard", "spec-sat"):
        row = {"method": method}
        for where in (device, "cpu"):
            if method == "plain PyTorch":
                seconds = plain_lenet(batch, data, epochs, where)
            else:
                config = TrainConfig(method=method, epochs=epochs, batch_size=batch, seed=0, **LENET)
                seconds = [r.seconds for r in train(data, config, compute=Compute(where)).history]
            row[f"samples_per_s_{where}"] = len(data.y_train) / min(seconds)
        row["gpu_over_cpu"] = row[f"samples_per_s_{device}"] / row["samples_per_s_cpu"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compute", default="cuda", help="the CUDA device (default cuda, i.e. cuda:0)")
    parser.add_argument("--quick", action="store_true", help="6,000 samples and 10^4 chips")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()
    try:
        compute = resolve_compute(args.compute)
        if not compute.is_cuda:
            raise ComputeError(f"--compute {args.compute} resolves to {compute.device}, not a CUDA device")
    except ComputeError as exc:
        reason = f"skipped: {exc}"
        print(json.dumps({"skipped": reason}) if args.json else f"benchmarks/gpu.py {reason}")
        return
    doc: dict = {"device": compute.describe(), "torch": torch.__version__, "quick": args.quick}
    t0 = time.perf_counter()
    doc["training"] = training(compute.device, 6000 if args.quick else 60000, 2, 64)
    sizes = [10_000] if args.quick else [10_000, 100_000, 1_000_000]
    doc["fleet"] = [million(n, 1024, 8192, Compute(compute.device)) for n in sizes]
    doc["fleet_cpu_10k"] = million(10_000, 1024, 1024, Compute("cpu"))
    doc["total_s"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"device: {doc['device']}")
    for r in doc["training"]:
        print(f"  {r['method']:>14}: {r[f'samples_per_s_{compute.device}']:>9.0f} samples/s on the GPU, "
              f"{r['samples_per_s_cpu']:>7.0f} on the CPU ({r['gpu_over_cpu']:.1f}x)")
    for m in doc["fleet"] + [doc["fleet_cpu_10k"]]:
        print(f"  {m['chips']:>9,} chips on {m['device']}: {m['evaluate_s']:.1f} s, {m['chips_per_s']:,.0f} chips/s, "
              f"peak RSS {m['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()

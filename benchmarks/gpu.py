"""Benchmarks on a CUDA GPU: training the paper's LeNet split at MNIST size, and fleets of 10^4 to 10^6 chips.

    python benchmarks/gpu.py [--json] [--compute cuda:N] [--quick]

Without a CUDA device it says so in one line and exits 0 ("skipped"), so it can run anywhere; CI has no GPU.
On a GPU it measures, each beside the same work on this machine's CPU (every core):

* training the LeNet split (benchmarks/compute.py: conv 6, 16 front end, 784 -> 120 digital, 120 -> 84 -> 10 on
  rings) on a 60,000-sample MNIST-shaped set, per method (standard, spec-sat) and a plain PyTorch model of the
  same shape: samples per second of the fastest epoch;
* fleets of 10^4, 10^5 and 10^6 ring chips (64 -> 32 -> 10, 360 samples, dT = 0.5 K, detector noise on) streamed
  through the simulator in chunks: chips per second, the CPU at 10^4 for scale;
* MZI fleets (benchmarks/run.py's model: 64 -> 32 -> 10 on 16-mode meshes, 360 samples) of 512 and 4,096 chips,
  each evaluation at a new drift (every mesh realised again), against the same shapes' plain matmuls on the same
  device: issue 26's "25 % of the roofline", which the CPU does not reach (README, "MZI lots at scale").
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


def mzi_fleets(device: str, sizes: list[int], repeats: int = 5) -> list[dict]:
    """MZI fleet evaluation at a new drift on ``device`` and the matmul roofline of the same shapes there."""
    import tempfile

    from run import make_chips, mzi_benchmark_model

    from pnndeploy.deploy.mapping import map_models
    from pnndeploy.deploy.transfer import load_evaluation_data
    from pnndeploy.formats.process_spec import load_process
    from pnndeploy.simulation.fleet import Conditions, SimulatedFleet

    with tempfile.TemporaryDirectory() as tmp:
        model = mzi_benchmark_model(Path(tmp) / "mzi.onnx")
    data = load_evaluation_data(model)
    process = load_process(HERE.parent / "device_profiles" / "mzi" / "process.yaml")
    deployments = map_models(model, make_chips(8, process))
    rows = []
    for n in sizes:
        fleet = SimulatedFleet(model, make_chips(n, process), [deployments[k % 8] for k in range(n)], Compute(device))
        fleet.accuracy(data.X, data.y, Conditions(delta_T=0.5))                  # warm-up (kernels, caches)
        cold = min(_timed(lambda r=r: fleet.accuracy(data.X, data.y, Conditions(delta_T=0.5 + 1e-3 * (r + 1))),
                          device) for r in range(repeats))
        matmul = _matmul_seconds(model, n, data.X.shape[0], device, repeats)
        rows.append({"chips": n, "device": device, "new_drift_s": cold, "matmul_s": matmul,
                     "roofline_fraction": matmul / cold})
    return rows


def _timed(work, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    work()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _matmul_seconds(model, chips: int, samples: int, device: str, repeats: int) -> float:
    """Plain matmuls of the fleet's shapes on ``device`` (float32, random data): the first layer's shared input
    as one GEMM, the later layers as batched matmuls (benchmarks/run.py's roofline, on the device)."""
    g = torch.Generator(device=device).manual_seed(0)
    first, *rest = [torch.randn((chips, *layer.weight.shape), generator=g, device=device) for layer in model.layers]
    x = torch.rand((model.n_features, samples), generator=g, device=device)
    hidden = [torch.rand((chips, W.shape[2], samples), generator=g, device=device) for W in rest]

    def run() -> None:
        first.reshape(-1, first.shape[2]) @ x
        for W, h in zip(rest, hidden):
            torch.bmm(W, h)

    run()
    return min(_timed(run, device) for _ in range(repeats))


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
    doc["mzi_fleet"] = mzi_fleets(compute.device, [512] if args.quick else [512, 4096])
    doc["mzi_fleet_cpu_512"] = mzi_fleets("cpu", [512])
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
    for m in doc["mzi_fleet"] + doc["mzi_fleet_cpu_512"]:
        print(f"  MZI fleet, {m['chips']:>5,} chips on {m['device']}: {1e3 * m['new_drift_s']:.1f} ms at a new drift, "
              f"matmuls {1e3 * m['matmul_s']:.2f} ms: {100 * m['roofline_fraction']:.1f} % of the roofline")


if __name__ == "__main__":
    main()

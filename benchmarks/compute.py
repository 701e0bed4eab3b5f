"""Benchmarks of the compute device on the CPU: training threads at the paper's scale, and a lot of 10^6 chips.

    python benchmarks/compute.py [--quick] [--json] [--only threads|million]

* ``threads``: the paper's LeNet split (a digital conv front end 1 -> 6 -> 16 channels, 3 x 3, 2 x 2 max-pool,
  dense 784 -> 120, then 120 -> 84 -> 10 on rings) on a 60,000-sample MNIST-shaped set made in memory
  (throughput only: its labels follow a simple pattern), per method, on 1 thread and on every core, beside a
  plain PyTorch model of the same shape in the same process.  Figures: samples per second of training (the
  fastest of the timed epochs) and the ratio of all threads to one.
* ``million``: 10^6 simulated ring chips evaluated (64 -> 32 -> 10, 360 samples, dT = 0.5 K, detector noise
  on) streamed through :func:`~pnndeploy.simulation.fleet.stream_accuracy` in chunks, with the process's peak
  RSS.  Generating and mapping a chip costs ~0.5 ms in Python; that rate is measured on distinct chips, and
  the 10^6 evaluated chips are a pool of distinct, mapped chips repeated under 10^6 different names (so every
  chip has its own detector-noise stream): what a chip costs to evaluate does not depend on its values.

Run nothing else meanwhile: two torch processes on two cores oversubscribe them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pnndeploy.compute import Compute, available_cores  # noqa: E402
from pnndeploy.data.datasets import Dataset, load_dataset  # noqa: E402
from pnndeploy.data.scaling import InputScaling  # noqa: E402
from pnndeploy.deploy.mapping import map_model  # noqa: E402
from pnndeploy.deploy.transfer import load_evaluation_data  # noqa: E402
from pnndeploy.formats.onnx_io import load_model  # noqa: E402
from pnndeploy.formats.process_spec import load_process  # noqa: E402
from pnndeploy.simulation.fabrication import chip_names, generate_chip  # noqa: E402
from pnndeploy.simulation.fleet import Conditions, stream_accuracy  # noqa: E402
from pnndeploy.training.config import TrainConfig  # noqa: E402
from pnndeploy.training.loop import train  # noqa: E402
from pnndeploy.training.pipeline import train_and_export  # noqa: E402

#: The paper's LeNet split as pnndeploy trains it: conv front end, fc 784 -> 120 digital, 120 -> 84 -> 10 on chip.
LENET = {"conv": [6, 16], "hidden": [120, 84], "onchip": 2}


def mnist_shaped(samples: int, seed: int = 0) -> Dataset:
    """A 28 x 28 set of ``samples`` images (a class-dependent bright square on noise), MNIST's shape and range."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, samples)
    X = rng.random((samples, 28, 28)) * 60.0
    for c in range(10):
        X[y == c, 4 + 2 * c:9 + 2 * c, 4 + (7 * c) % 20:9 + (7 * c) % 20] += 190.0
    X = X.reshape(samples, 784).astype(np.float32)
    test = max(1, samples // 20)
    return Dataset(name=f"mnist-shaped-{samples}", X_train=X[test:], y_train=y[test:], X_test=X[:test],
                   y_test=y[:test], n_classes=10, scaling=InputScaling(offset=0.0, scale=1.0 / 255.0),
                   image_shape=(1, 28, 28))


def plain_lenet(batch: int, data: Dataset, epochs: int, device: str = "cpu") -> list[float]:
    """Epoch seconds of a plain PyTorch model of the same shape (Adam, the same batch): the reference."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Unflatten(1, (1, 28, 28)), torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(784, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84), torch.nn.ReLU(),
        torch.nn.Linear(84, 10)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    X = torch.from_numpy(data.scaling.apply(data.X_train)).to(device)
    y = torch.from_numpy(data.y_train).to(device)
    seconds = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for start in range(0, len(X), batch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X[start:start + batch]), y[start:start + batch]).backward()
            opt.step()
        if device != "cpu":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - t0)
    return seconds


def threads(samples: int, epochs: int, batch: int, methods: list[str]) -> dict:
    """Training throughput of the LeNet split per method at 1 thread and every core (fastest epoch)."""
    data = mnist_shaped(samples)
    n = len(data.y_train)
    cores = available_cores()
    rows = []
    for method in ["plain PyTorch", *methods]:
        row = {"method": method}
        for count in sorted({1, cores}):
            if method == "plain PyTorch":
                with Compute("cpu", count).running():
                    seconds = plain_lenet(batch, data, epochs)
            else:
                config = TrainConfig(method=method, epochs=epochs, batch_size=batch, seed=0, **LENET)
                seconds = [r.seconds for r in train(data, config, compute=Compute("cpu", count)).history]
            row[f"samples_per_s_{count}"] = n / min(seconds)
        row["speedup"] = row[f"samples_per_s_{cores}"] / row["samples_per_s_1"]
        rows.append(row)
    return {"samples": n, "epochs_timed": epochs, "batch": batch, "cores": cores, "model": LENET, "rows": rows}


def million(count: int, pool: int, chunk: int, compute: Compute = Compute()) -> dict:
    """Evaluate ``count`` ring chips streamed ``chunk`` at a time on ``compute``; peak RSS; generation + mapping
    rate."""
    process = load_process(ROOT / "device_profiles" / "process.yaml")
    path = Path("/tmp") / "pnndeploy-bench-million.onnx"
    train_and_export(load_dataset("digits", seed=0), TrainConfig(method="sat", epochs=3, hidden=[32], seed=0), path)
    model = load_model(path)
    data = load_evaluation_data(model)
    t0 = time.perf_counter()
    chips = [generate_chip(process, name, seed=0) for name in chip_names(pool, "m")]
    deployments = [map_model(model, chip) for chip in chips]
    make_s = (time.perf_counter() - t0) / pool

    def lot():
        for i in range(count):
            k = i % pool
            yield dataclasses.replace(chips[k], device_id=f"lot{i:07d}"), deployments[k]

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    acc = stream_accuracy(model, lot(), data.X, data.y, Conditions(delta_T=0.5), compute=compute, chunk=chunk)
    seconds = time.perf_counter() - t0
    return {"device": compute.device, "chips": count, "distinct_chips": pool, "chunk": chunk, "evaluate_s": seconds,
            "chips_per_s": count / seconds, "generate_and_map_ms_per_chip": 1e3 * make_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_before_mb": rss_before, "mean_accuracy": float(acc.mean()), "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6,000 samples, 10^4 chips (about a minute)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--only", choices=["threads", "million"], default=None)
    args = parser.parse_args()
    doc: dict = {"quick": args.quick, "torch": torch.__version__}
    if args.only in (None, "threads"):
        doc["threads"] = threads(6000 if args.quick else 60000, 2, 64, ["standard", "spec-sat"])
    if args.only in (None, "million"):
        doc["million"] = million(10_000 if args.quick else 1_000_000, 1024, 1024)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        render(doc)


def render(doc: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if "threads" in doc:
        t = doc["threads"]
        table = Table(title=f"training the LeNet split, {t['samples']} MNIST-shaped samples, batch {t['batch']} "
                            f"(fastest of {t['epochs_timed']} epochs)")
        for c in ("method", "samples/s, 1 thread", f"samples/s, {t['cores']} threads", "speed-up"):
            table.add_column(c, justify="right")
        for r in t["rows"]:
            table.add_row(r["method"], f"{r['samples_per_s_1']:.0f}", f"{r['samples_per_s_' + str(t['cores'])]:.0f}",
                          f"{r['speedup']:.2f}×")
        console.print(table)
    if "million" in doc:
        m = doc["million"]
        console.print(f"{m['chips']:,} ring chips evaluated in {m['evaluate_s']:.1f} s ({m['chips_per_s']:,.0f} "
                      f"chips/s, chunks of {m['chunk']}); peak RSS {m['peak_rss_mb']:.0f} MB (before the lot: "
                      f"{m['peak_rss_before_mb']:.0f} MB); generating and mapping a chip: "
                      f"{m['generate_and_map_ms_per_chip']:.2f} ms")


if __name__ == "__main__":
    main()

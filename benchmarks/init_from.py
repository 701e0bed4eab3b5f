"""Issue 27's measurement: a LeNet trained in plain PyTorch, imported with `train --init-from`, vs spec-SAT from scratch.

The network is examples/paper/mrr-lenet5.yaml's (conv 6@5x5, conv 16@5x5, batch norm, fc 120 -> 84 -> 10; fc2 and
fc3 on the rings).  Steps, each timed:
1. train it in PyTorch on digits28's raw features (its own input normalisation x / 16 in the graph), export ONNX;
2. `pnndeploy train --init-from` with --epochs 0 (map only) and with spec-SAT for --finetune epochs;
3. `pnndeploy train --config examples/paper/mrr-lenet5.yaml` with spec-SAT for --scratch epochs;
4. `pnndeploy audit --fleet --temperature -1:1:0.5` on the default fleet: the worst chip over +-1 K as programmed
   and after audit's drift compensation (bias): the default spec-SAT is trained for the latter, spec-SAT with
   `--train-args=--no-drift-compensation` (both runs) for the former.

    OMP_NUM_THREADS=1 python benchmarks/init_from.py                          # 5 vs 30 epochs
    OMP_NUM_THREADS=1 python benchmarks/init_from.py --scratch 10 --out bench  # a shorter comparison
    OMP_NUM_THREADS=1 python benchmarks/init_from.py --seed 1 --train-args=--no-drift-compensation  # README's table
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def torch_lenet(epochs: int, seed: int, out: Path) -> dict:
    """Train the LeNet in plain PyTorch (Adam 1e-3, batch 64) and export it; returns its test accuracy, seconds."""
    import torch
    from torch import nn

    from pnndeploy.data.datasets import load_dataset

    data = load_dataset("digits28", seed=seed)
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5, padding=2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(784, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))

    class LeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x.reshape(-1, 1, 28, 28) / 16.0)      # the author's normalisation, in the graph

    model = LeNet()
    X, y = torch.from_numpy(data.X_train).float(), torch.from_numpy(data.y_train).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(X)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(data.X_test).float()).argmax(1).numpy() == data.y_test).mean())
    torch.onnx.export(model, X[:2], str(out), dynamo=False, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}})
    return {"test_accuracy": acc, "seconds": seconds, "epochs": epochs}


def cli(*args: str) -> dict:
    """Run `pnndeploy ... --json`, timed; the JSON document with the wall-clock seconds added."""
    start, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run([sys.executable, "-m", "pnndeploy", *args, "--json"], cwd=REPO, capture_output=True,
                          text=True, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    if done.returncode not in (0, 1):
        raise SystemExit(f"pnndeploy {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    doc = json.loads(done.stdout)
    doc["wall_seconds"] = time.perf_counter() - start
    doc["cpu_seconds"] = _children_cpu() - cpu
    return doc


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes: a run's cost on a shared machine, where the
    wall-clock time depends on what else runs (the same 5-epoch fine-tune took 6 s and 47 s of wall time)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def worst_chip(model: Path) -> dict:
    """The default fleet over -1..+1 K: the worst chip's accuracy, the fleet mean at 0 K."""
    doc = cli("audit", "--model", str(model), "--fleet", "--temperature", "-1:1:0.5", "--days", "0:0:1")
    sweep = doc["sweeps"]["temperature_K"]
    zero = sweep["values"].index(0.0)
    compensated = doc["sweeps"].get("temperature_K_compensated", {}).get("fleet_min")
    return {"worst_chip_1K": min(sweep["fleet_min"]), "fleet_mean_0K": sweep["fleet_mean"][zero],
            "nominal": doc["nominal_accuracy"],
            "worst_chip_1K_compensated": min(compensated) if compensated else None}   # audit's bias strategy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-epochs", type=int, default=20)
    parser.add_argument("--finetune", type=int, default=5)
    parser.add_argument("--scratch", type=int, default=30)
    parser.add_argument("--out", type=Path, default=REPO / "models" / "bench-init-from")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--mapping", default=None, help="train --init-mapping for the import (default: train's)")
    parser.add_argument("--lr", default="0.01", help="the fine-tune's --lr (the scratch run keeps the config's)")
    parser.add_argument("--runs", default="mapped,finetuned,scratch", help="which runs, comma-separated")
    parser.add_argument("--lenet", type=Path, default=None, help="an exported LeNet to reuse (skips step 1)")
    parser.add_argument("--seed", type=int, default=0, help="the PyTorch LeNet's seed and every run's --seed")
    parser.add_argument("--train-args", default="",
                        help="more `train` options for the fine-tune and the scratch run alike (space-separated), "
                             "e.g. --no-drift-compensation")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    if args.lenet is None:
        lenet = args.out / "lenet-torch.onnx"
        results["torch"] = torch_lenet(args.torch_epochs, args.seed, lenet)
        print("torch", results["torch"], flush=True)
    else:
        lenet = args.lenet
    extra = tuple(args.train_args.split())
    common = ("--dataset", "digits28", "--onchip", "2", "--batch-size", "64", "--lr", args.lr, "--seed", str(args.seed),
              *(("--init-mapping", args.mapping) if args.mapping else ()), *extra)
    runs = {"mapped": ("train", *common, "--init-from", str(lenet), "--epochs", "0"),
            "finetuned": ("train", *common, "--init-from", str(lenet), "--epochs", str(args.finetune)),
            "scratch": ("train", "--config", "examples/paper/mrr-lenet5.yaml", "--epochs", str(args.scratch),
                         "--seed", str(args.seed), *extra)}
    wanted = args.runs.split(",")
    for name, command in runs.items():
        if name not in wanted:
            continue
        model = args.out / f"{name}.onnx"
        doc = cli(*command, "--out", str(model))
        results[name] = {"test_accuracy": doc["test_accuracy"], "train_seconds": doc["seconds"],
                         "wall_seconds": doc["wall_seconds"], "cpu_seconds": doc["cpu_seconds"], "init_from": doc.get("init_from"),
                         **worst_chip(model)}
        print(name, results[name], flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

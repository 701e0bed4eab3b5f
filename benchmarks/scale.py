"""Issue 26, parts 1 and 2: what every training method costs at the paper's scale, and what a cheaper step loses.

The model is the paper's LeNet split (examples/paper/mrr-lenet5.yaml: conv 6@5x5 and 16@5x5 with batch norm, fc
784 -> 120 in electronics, 120 -> 84 -> 10 on rings).  Throughput: seconds per epoch of every method and of a
plain PyTorch model of the same shape, interleaved round by round in this one process, at one thread and at all
of them, on digits28 and on a synthetic MNIST-shaped set (60,000 random images made here: throughput only, never
downloaded).  Accuracy: every cheaper variant against its full step on digits28, fleet mean and worst chip of the
default fleet at -1, 0, +1 K, drift-compensated and as programmed, over seeds.

    python benchmarks/scale.py                       # the full run (about an hour on two busy cores)
    python benchmarks/scale.py --quick               # a smoke run (a minute or two)
    python benchmarks/scale.py --json out.json

Ratios are each method's fastest epoch over standard's fastest in the same run (the least disturbed by other
work on the machine); run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.spec_sat import TEMPERATURES, measure  # noqa: E402
from pnndeploy.compute import Compute, available_cores  # noqa: E402
from pnndeploy.data.datasets import Dataset, load_dataset  # noqa: E402
from pnndeploy.data.scaling import InputScaling  # noqa: E402
from pnndeploy.training.config import TrainConfig, load_config  # noqa: E402

#: The paper's LeNet split, as the example config writes it (its shape and optimiser; batch size is ours).
LENET_KEYS = ("platform", "conv", "kernel", "batch_norm", "hidden", "onchip", "lr")
PROGRAMMED = {"method": "spec-sat", "drift_compensation": False}
#: Every method and variant timed (name -> TrainConfig settings); "plain torch" is timed beside them.
METHODS: dict[str, dict[str, Any]] = {
    "standard": {"method": "standard"},
    "plain detunings": {"method": "noise-aware", "noise": 0.0},
    "sat": {"method": "sat"},
    "sat --sat-every 5": {"method": "sat", "sat_every": 5},
    "sat --ascent momentum": {"method": "sat", "ascent": "momentum"},
    "spec-sat": {"method": "spec-sat"},
    "spec-sat --sat-every 5": {"method": "spec-sat", "sat_every": 5},
    "spec-sat --ascent momentum": {"method": "spec-sat", "ascent": "momentum"},
    "spec-sat programmed": PROGRAMMED,
    "spec-sat programmed --sat-every 5": {**PROGRAMMED, "sat_every": 5},
    "spec-sat programmed --ascent momentum": {**PROGRAMMED, "ascent": "momentum"},
}
#: Each full step and its cheaper variants, compared for accuracy.
FAMILIES = {
    "sat": ("sat --sat-every 5", "sat --ascent momentum"),
    "spec-sat": ("spec-sat --sat-every 5", "spec-sat --ascent momentum"),
    "spec-sat programmed": ("spec-sat programmed --sat-every 5", "spec-sat programmed --ascent momentum"),
}
PLAIN = "plain torch"
#: The step as it was before issue 26 (every pass a whole forward, front end included), timed beside today's.
WHOLE = " (whole forwards)"
BEFORE = ("spec-sat", "spec-sat programmed")


def lenet_settings() -> dict[str, Any]:
    """The model's shape and learning rate from examples/paper/mrr-lenet5.yaml."""
    config = load_config(REPO / "examples" / "paper" / "mrr-lenet5.yaml")
    return {k: config[k] for k in LENET_KEYS}


def synthetic_mnist(samples: int, seed: int = 0) -> Dataset:
    """``samples`` random 28x28 images with random labels, MNIST's shape and pixel range (for timing only)."""
    rng = np.random.default_rng(seed)
    test = max(10, samples // 60)
    X = rng.integers(0, 256, size=(samples + test, 784), dtype=np.uint8).astype(np.float32)
    y = rng.integers(0, 10, size=samples + test).astype(np.int64)
    return Dataset(name=f"synthetic-mnist-{samples}", X_train=X[:samples], y_train=y[:samples], X_test=X[samples:],
                   y_test=y[samples:], n_classes=10, scaling=InputScaling(offset=0.0, scale=1.0 / 255.0),
                   image_shape=(1, 28, 28))


class _Timed(Exception):
    """Raised from the epoch callback once the epochs to time have run: the final evaluation is not timed."""


def method_epochs(dataset: Dataset, settings: dict[str, Any], epochs: int, threads: int) -> list[float]:
    """Seconds of each of ``epochs`` epochs of one method (training stops there: no final evaluation)."""
    from pnndeploy.training.loop import train

    seconds: list[float] = []

    def record(r: Any) -> None:
        seconds.append(r.seconds)
        if len(seconds) == epochs:
            raise _Timed

    try:
        train(dataset, TrainConfig(**settings, epochs=epochs + 1, seed=0), on_epoch=record,
              compute=Compute("cpu", threads))
    except _Timed:
        pass
    return seconds


@contextlib.contextmanager
def whole_forwards() -> Iterator[None]:
    """Within: every pass of a SAT or spec-SAT step runs the whole model, front end included (the step before
    issue 26, which computed the same values)."""
    from pnndeploy.training import adversary

    saved = adversary.passes
    adversary.passes = lambda model, xb, perturbed: ((lambda: model(xb)),) * 2
    try:
        yield
    finally:
        adversary.passes = saved


def plain_model(lenet: dict[str, Any], image_shape: tuple[int, int, int], n_classes: int) -> Any:
    """A plain PyTorch LeNet of the same shape: every layer digital (nn.Linear for the on-chip ones)."""
    from torch import nn

    layers: list[nn.Module] = []
    channels, side = image_shape[0], image_shape[1]
    for width in lenet["conv"]:
        layers += [nn.Conv2d(channels, width, lenet["kernel"], padding=lenet["kernel"] // 2)]
        layers += [nn.BatchNorm2d(width)] if lenet["batch_norm"] else []
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        channels, side = width, side // 2
    layers.append(nn.Flatten())
    size = channels * side * side
    for k, width in enumerate(lenet["hidden"]):
        layers.append(nn.Linear(size, width))
        digital = k < len(lenet["hidden"]) + 1 - lenet["onchip"]
        layers += [nn.BatchNorm1d(width)] if lenet["batch_norm"] and digital else []
        layers.append(nn.ReLU())
        size = width
    layers.append(nn.Linear(size, n_classes))
    return nn.Sequential(*layers)


def plain_epochs(dataset: Dataset, lenet: dict[str, Any], batch: int, epochs: int, threads: int) -> list[float]:
    """Seconds per epoch of the plain model, the loop ours runs (shuffle, Adam, cross-entropy)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = plain_model(lenet, dataset.image_shape, dataset.n_classes)
        X = torch.from_numpy(dataset.scaling.apply(dataset.X_train)).reshape(-1, *dataset.image_shape)
        y = torch.from_numpy(dataset.y_train)
        optimizer = torch.optim.Adam(model.parameters(), lr=lenet["lr"])
        loss_fn = torch.nn.CrossEntropyLoss()
        seconds = []
        for _ in range(epochs):
            t0 = time.perf_counter()
            order = torch.randperm(len(y))
            for begin in range(0, len(y), batch):
                idx = order[begin:begin + batch]
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(X[idx]), y[idx]).backward()
                optimizer.step()
            seconds.append(time.perf_counter() - t0)
        return seconds
    finally:
        torch.set_num_threads(previous)


def throughput(dataset: Dataset, methods: dict[str, dict[str, Any]], lenet: dict[str, Any], batch: int,
               epochs: int, rounds: int, threads: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Fastest epoch of every method and of the plain model, interleaved round by round, and × standard."""
    before = [name + WHOLE for name in BEFORE if name in methods]
    times: dict[str, list[float]] = {name: [] for name in [PLAIN, *methods, *before]}
    for _ in range(rounds):
        times[PLAIN] += plain_epochs(dataset, lenet, batch, epochs, threads)
        for name in [*methods, *before]:
            settings = {**lenet, **METHODS[name.removesuffix(WHOLE)], "batch_size": batch}
            with whole_forwards() if name.endswith(WHOLE) else contextlib.nullcontext():
                times[name] += method_epochs(dataset, settings, epochs, threads)
        log(f"  {dataset.name}, {threads} thread(s): round done")
    best = {name: min(t) for name, t in times.items()}
    return {"dataset": dataset.name, "samples": len(dataset.y_train), "threads": threads, "batch_size": batch,
            "epochs_timed": {name: len(t) for name, t in times.items()}, "epoch_s": best,
            "x_standard": {name: s / best["standard"] for name, s in best.items()}, "all_epoch_s": times}


def accuracy_rows(names: list[str], seeds: int, epochs: int, batch: int, lenet: dict[str, Any],
                  tmp: Path, log: Callable[[str], None]) -> dict[str, list[dict]]:
    """Per variant and seed, each chip's accuracy at each temperature, as programmed and compensated (digits28)."""
    from pnndeploy.training.pipeline import train_and_export

    per: dict[str, list[dict]] = {name: [] for name in names}
    for seed in range(seeds):
        dataset = load_dataset("digits28", seed=seed)
        for name in names:
            path = tmp / f"{name.replace(' ', '_')}-{seed}.onnx"
            summary, _ = train_and_export(dataset, TrainConfig(**lenet, **METHODS[name], epochs=epochs,
                                                               batch_size=batch, seed=seed), path)
            per[name].append({"ideal": summary.test_accuracy, **measure(path, REPO / "device_profiles")})
            log(f"  seed {seed} {name}: ideal {100 * summary.test_accuracy:.1f} %")
    return per


def summarise(runs: list[dict]) -> dict[str, Any]:
    """Fleet mean and worst chip per temperature (mean over seeds), and the worst chip over the range per seed."""
    out: dict[str, Any] = {"ideal": float(np.mean([r["ideal"] for r in runs]))}
    for mode in ("programmed", "compensated"):
        acc = np.array([r[mode] for r in runs])                      # (seeds, temperatures, chips)
        out[mode] = {"mean": acc.mean(axis=(0, 2)).tolist(), "worst": acc.min(axis=2).mean(axis=0).tolist(),
                     "worst_over_range": acc.min(axis=(1, 2)).tolist()}
    return out


def difference(cheap: dict[str, Any], full: dict[str, Any]) -> dict[str, Any]:
    """A cheaper variant's summary minus its full step's, in pp: the worst chip over the range per seed (paired
    by seed) and its mean, and the fleet mean per temperature."""
    out = {}
    for mode in ("programmed", "compensated"):
        per_seed = [100 * (a - b) for a, b in zip(cheap[mode]["worst_over_range"], full[mode]["worst_over_range"])]
        out[mode] = {"worst_over_range_pp": float(np.mean(per_seed)), "worst_over_range_pp_per_seed": per_seed,
                     "mean_pp": [100 * (a - b) for a, b in zip(cheap[mode]["mean"], full[mode]["mean"])]}
    return out


def accuracy_costs(per: dict[str, list[dict]]) -> dict[str, Any]:
    """Each variant's figures, and per cheaper variant its difference from its full step (paired by seed)."""
    summary = {name: summarise(runs) for name, runs in per.items()}
    costs = {name: {"full": full, **difference(summary[name], summary[full])}
             for full, cheaper in FAMILIES.items() for name in cheaper if name in summary and full in summary}
    return {"variants": summary, "minus_full": costs}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2,000 synthetic images, 1 round, 1 seed of 2 epochs, fewer variants")
    parser.add_argument("--json", type=str, default=None, metavar="OUT", help="write every figure to OUT")
    parser.add_argument("--samples", type=int, default=None, help="synthetic set's size (default 60,000)")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds per thread count (default 2)")
    parser.add_argument("--seeds", type=int, default=None, help="accuracy seeds (default 3)")
    parser.add_argument("--epochs", type=int, default=None, help="accuracy epochs on digits28 (default 20)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per step (the issue's 32)")
    parser.add_argument("--threads", type=str, default=None,
                        help=f"comma-separated thread counts (default 1 and all, {available_cores()} here)")
    parser.add_argument("--methods", type=str, default=None, help="comma-separated subset of: " + ", ".join(METHODS))
    parser.add_argument("--skip", choices=("throughput", "accuracy"), default=None, help="leave one part out")
    args = parser.parse_args(argv)
    names = list(METHODS) if args.methods is None else [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in names if m not in METHODS]
    if unknown or "standard" not in names:
        parser.error(f"--methods: unknown {', '.join(unknown)}" if unknown else "--methods must include standard")
    if args.quick and args.methods is None:
        names = ["standard", "sat", "spec-sat", "spec-sat --ascent momentum", "spec-sat programmed",
                 "spec-sat programmed --ascent momentum"]
    args.names = names
    quick = args.quick
    args.samples = args.samples or (2000 if quick else 60_000)
    args.rounds = args.rounds or (1 if quick else 2)
    args.seeds = args.seeds or (1 if quick else 3)
    args.epochs = args.epochs or (2 if quick else 20)
    args.thread_counts = sorted({1, available_cores()}) if args.threads is None else \
        [int(t) for t in args.threads.split(",")]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    from rich.console import Console

    console = Console(stderr=args.json == "-", width=150)
    log = lambda text: console.print(text, style="dim")  # noqa: E731
    lenet = lenet_settings()
    doc: dict[str, Any] = {"model": lenet, "batch_size": args.batch_size, "quick": args.quick,
                           "cores": available_cores(), "throughput": [], "accuracy": None}
    t_start = time.perf_counter()
    methods = {name: METHODS[name] for name in args.names}
    if args.skip != "throughput":
        sets = [(load_dataset("digits28", seed=0), 2 if args.quick else 3), (synthetic_mnist(args.samples), 1)]
        for dataset, epochs in sets:
            for threads in args.thread_counts:
                doc["throughput"].append(throughput(dataset, methods, lenet, args.batch_size, epochs, args.rounds,
                                                    threads, log))
    if args.skip != "accuracy":
        names = [n for n in args.names if n in FAMILIES or any(n in c for c in FAMILIES.values())]
        with tempfile.TemporaryDirectory() as tmp:
            per = accuracy_rows(names, args.seeds, args.epochs, args.batch_size, lenet, Path(tmp), log)
        doc["accuracy"] = {"seeds": args.seeds, "epochs": args.epochs, "temperatures_K": list(TEMPERATURES),
                           **accuracy_costs(per), "runs": per}
    doc["total_s"] = time.perf_counter() - t_start
    render(doc, console)
    if args.json and args.json != "-":
        Path(args.json).write_text(json.dumps(doc, indent=1))
    elif args.json == "-":
        print(json.dumps(doc, indent=1))
    return doc


def render(doc: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    for row in doc["throughput"]:
        t = Table(title=f"seconds per epoch, LeNet split, {row['dataset']} ({row['samples']} images), batch "
                        f"{row['batch_size']}, {row['threads']} thread(s); fastest epoch")
        for c in ("method", "epoch s", "× standard", "epochs timed"):
            t.add_column(c, justify="right" if c != "method" else "left")
        for name, s in row["epoch_s"].items():
            t.add_row(name, f"{s:.3f}", f"{row['x_standard'][name]:.2f}", str(row["epochs_timed"][name]))
        console.print(t)
    acc = doc["accuracy"]
    if acc is None:
        return
    temps = [f"{t:+g} K" for t in acc["temperatures_K"]]
    a = Table(title=f"digits28, default fleet: fleet mean / worst chip (mean of {acc['seeds']} seeds, "
                    f"{acc['epochs']} epochs), compensated | as programmed")
    a.add_column("variant")
    for mode in ("comp.", "prog."):
        for k in temps:
            a.add_column(f"{mode} {k}", justify="right")
        a.add_column(f"{mode} worst ±1 K", justify="right")
    for name, v in acc["variants"].items():
        cells = []
        for mode in ("compensated", "programmed"):
            m = v[mode]
            cells += [f"{100 * mu:.1f}/{100 * w:.1f}" for mu, w in zip(m["mean"], m["worst"])]
            cells.append(f"{100 * np.mean(m['worst_over_range']):.1f}")
        a.add_row(name, *cells)
    console.print(a)
    def worst(cost: dict[str, Any]) -> str:
        seeds = cost["worst_over_range_pp_per_seed"]
        return f"{cost['worst_over_range_pp']:+.1f}" + (f" (sd {np.std(seeds, ddof=1):.1f})" if len(seeds) > 1 else "")

    d = Table(title="cheaper variant − its full step (pp, paired by seed)")
    for c in ("variant", "full step", "comp. worst ±1 K", "prog. worst ±1 K", "comp. mean", "prog. mean"):
        d.add_column(c, justify="right" if c not in ("variant", "full step") else "left")
    for name, c in acc["minus_full"].items():
        mean = lambda mode: " ".join(f"{x:+.1f}" for x in c[mode]["mean_pp"])  # noqa: E731
        d.add_row(name, c["full"], worst(c["compensated"]), worst(c["programmed"]), mean("compensated"),
                  mean("programmed"))
    console.print(d)
    console.print(f"total {doc['total_s']:.0f} s")


if __name__ == "__main__":
    main()

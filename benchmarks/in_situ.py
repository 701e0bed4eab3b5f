"""Issue 11's in-situ figures: PAT and SAT + PAT on chipA through a real chip server, transferred to the fleet.

Trains standard and SAT in silico, and PAT (standard in situ) and SAT + PAT (sat in situ) on chipA
reached through `pnndeploy chip serve` on loopback, for a few seeds; maps each model onto the
default fleet and reports its accuracy on chipA and on the seven other chips.  It also times a
training step in silico, in situ with the chip in this process (no network) and in situ over
HTTP with the JSON wire, the binary wire and the stream (binary frames on a WebSocket; with the client's
busy poll, its default, and without), so the network's share of the in-situ cost is measured; the station's
configured readout latency (its Server-Timing) is reported apart.

    python benchmarks/in_situ.py                 # 3 seeds, 30 epochs (about 6 min on two cores)
    python benchmarks/in_situ.py --seeds 1 --epochs 5
    python benchmarks/in_situ.py --cost-only --epochs 5   # only the step costs (in silico, in process, JSON, binary, stream)
    python benchmarks/in_situ.py --cost-only --epochs 5 --rounds 5 --latency-ms 0   # on busy cores: medians

On shared cores one run of each configuration after the other is at the mercy of the neighbours' load:
``--rounds N`` runs every configuration N times, round after round, and reports each figure's median; the
CPU time of a step (this process, plus the chip server's from Linux's /proc/PID/schedstat) is reported too,
which the neighbours' load changes far less than the wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from chip_server import ChipServer  # noqa: E402
from pnndeploy.backends.http import HttpBackend  # noqa: E402
from pnndeploy.backends.simulated import SimulatedChip  # noqa: E402
from pnndeploy.data.datasets import load_dataset  # noqa: E402
from pnndeploy.deploy.hardware import open_chip  # noqa: E402
from pnndeploy.deploy.transfer import prepare_fleet, transfer_report  # noqa: E402
from pnndeploy.formats.profiles import read_profile  # noqa: E402
from pnndeploy.training.config import TrainConfig  # noqa: E402
from pnndeploy.training.in_situ import InSituChip  # noqa: E402
from pnndeploy.training.pipeline import train_and_export  # noqa: E402

FLEET = REPO / "device_profiles"
RUNS = {"standard": ("standard", None), "PAT": ("standard", "http"),
        "sat": ("sat", None), "SAT+PAT": ("sat", "http")}


def fleet_accuracy(model: Path) -> dict[str, float]:
    prepared = prepare_fleet(model, [], True, FLEET, save_dir=None)
    return {d.device: d.accuracy for d in transfer_report(prepared).devices}


def connect(folder: Path, url: str, token: Path) -> None:
    subprocess.run([sys.executable, "-m", "pnndeploy", "chip", "connect", "chipA", "--profiles", str(folder),
                    "--address", url, "--token-file", str(token)], check=True, capture_output=True)


def open_wire(profile: Any, wire: str, busy_poll_ms: float | None = None) -> InSituChip:
    """The remote chip reached over ``wire`` (json, binary or stream), for in-situ training; ``busy_poll_ms``:
    the backend's option (None: its default)."""
    backend = open_chip(profile, 10.0)
    backend.wire = wire
    if busy_poll_ms is not None:
        backend.busy_poll_ms = busy_poll_ms
    backend.open()
    return InSituChip(backend, profile)


def server_cpu_seconds(pid: int | None) -> float:
    """CPU time the chip server's process has run, s (Linux's schedstat, ns); 0 where it cannot be read."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def step_costs(epochs: int, local: Any, remote: Any, tmp: Path, rounds: int = 1,
               server_pid: int | None = None) -> dict[str, dict]:
    """ms per training step (batch 32) in silico, with the chip in this process, and over loopback HTTP on each
    wire, for standard (PAT) and sat (SAT + PAT); the station's readout latency and chip time apart; each
    figure the median over ``rounds`` rounds of every configuration, and each ratio to in silico also as the
    median of the rounds' own ratios."""
    data = load_dataset("digits", seed=0)
    steps = epochs * -(-len(data.y_train) // 32)
    train_and_export(data, TrainConfig(method="sat", epochs=1, seed=0), tmp / "warm.onnx")    # imports, caches
    samples: dict[str, list[dict]] = {}
    for _ in range(rounds):
        for label, make in (("in silico", lambda: None),
                            ("chip in process", lambda: InSituChip(SimulatedChip(profile=local), local)),
                            ("HTTP, JSON wire", lambda: open_wire(remote, "json")),
                            ("HTTP, binary wire", lambda: open_wire(remote, "binary")),
                            ("HTTP, stream", lambda: open_wire(remote, "stream")),
                            ("HTTP, stream, no busy poll", lambda: open_wire(remote, "stream", 0.0))):
            for method in ("standard", "sat"):
                cost = one_cost(data, steps, epochs, method, label, make(), tmp, server_pid)
                samples.setdefault(f"{method}, {label}", []).append(cost)
                print(f"{method}, {label}: {cost}", flush=True)
    costs = {key: {name: (statistics.median(r[name] for r in runs) if isinstance(value, float) else value)
                   for name, value in runs[0].items()} for key, runs in samples.items()}
    for key, cost in costs.items():
        silico = costs[f"{cost['method']}, in silico"]
        cost["x_in_silico"] = cost["ms_per_step"] / silico["ms_per_step"]
        # each round's step over the same round's in-silico step (seconds apart, not the whole run apart): the
        # machine's speed drifts over a run on shared cores, and this ratio drifts less with it
        cost["x_in_silico_paired"] = statistics.median(
            run["ms_per_step"] / base["ms_per_step"]
            for run, base in zip(samples[key], samples[f"{cost['method']}, in silico"]))
        cost["x_in_silico_without_readout"] = (cost["ms_per_step"] - cost["readout_ms_per_step"]) / silico["ms_per_step"]
        cost["cpu_x_in_silico"] = cost["cpu_ms_per_step"] / silico["cpu_ms_per_step"]
    return costs


def one_cost(data: Any, steps: int, epochs: int, method: str, label: str, chip: Any, tmp: Path,
             server_pid: int | None) -> dict[str, Any]:
    """One training's cost per step: wall and CPU (this process and, over HTTP, the server's) time, the
    backend's, the station's readout and chip time, mapping, exchanges and bytes."""
    server_cpu, cpu, start = server_cpu_seconds(server_pid), time.process_time(), time.perf_counter()
    train_and_export(data, TrainConfig(method=method, epochs=epochs, seed=0), tmp / "cost.onnx", chip=chip)
    per_step = 1000 * (time.perf_counter() - start) / steps
    cpu = time.process_time() - cpu
    backend = chip.backend if chip else None
    if isinstance(backend, HttpBackend):
        cpu += server_cpu_seconds(server_pid) - server_cpu
    station = getattr(backend, "station_seconds", {"readout": 0.0, "chip": 0.0})
    cost = {"method": method, "where": label, "ms_per_step": per_step, "cpu_ms_per_step": 1000 * cpu / steps,
            "backend_ms_per_step": 1000 * chip.chip_seconds / steps if chip else 0.0,
            "readout_ms_per_step": 1000 * station["readout"] / steps,
            "server_chip_ms_per_step": 1000 * station["chip"] / steps,
            "map_ms_per_step": 1000 * chip.map_seconds / steps if chip else 0.0,
            "exchanges_per_step": getattr(backend, "exchanges", 0) / steps,
            "reads_polled": getattr(getattr(backend, "busy_poll", None), "polls", 0),
            "polls_answered": getattr(getattr(backend, "busy_poll", None), "hits", 0),
            "kbytes_per_step": (getattr(backend, "bytes_sent", 0) + getattr(backend, "bytes_received", 0))
            / 1000 / steps}
    if backend is not None:
        backend.close()
    return {name: float(value) if isinstance(value, (int, float)) else value for name, value in cost.items()}


def print_costs(costs: dict[str, dict]) -> None:
    print("\n| step | ms per step | × in silico | × in silico, paired by round | × without readout "
          "| CPU ms (client + server) | × in silico, CPU "
          "| in the backend | of it readout latency | of it server's chip | mapping | exchanges | kB | reads polled "
          "(answered) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, c in costs.items():
        print(f"| {label} | {c['ms_per_step']:.2f} | {c['x_in_silico']:.1f} | {c['x_in_silico_paired']:.1f} "
              f"| {c['x_in_silico_without_readout']:.1f} "
              f"| {c['cpu_ms_per_step']:.2f} | {c['cpu_x_in_silico']:.1f} "
              f"| {c['backend_ms_per_step']:.2f} | {c['readout_ms_per_step']:.2f} | {c['server_chip_ms_per_step']:.2f}"
              f" | {c['map_ms_per_step']:.2f} | {c['exchanges_per_step']:.1f} | {c['kbytes_per_step']:.1f} "
              f"| {c['reads_polled']:.0f} ({c['polls_answered']:.0f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--latency-ms", type=float, default=2.0, help="the server's latency per measurement")
    parser.add_argument("--cost-only", action="store_true", help="only the step costs, not the accuracy runs")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the step costs; each figure their median")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "profiles"
        shutil.copytree(FLEET, folder)
        with ChipServer(FLEET / "chipA.h5", tmp / "server", "--latency-ms", str(args.latency_ms),
                        idle=600, max_requests=10_000_000) as server:
            connect(folder, server.url, server.token_file)
            remote = read_profile(folder / "chipA-remote.h5")
            local = read_profile(FLEET / "chipA.h5")
            for seed in range(0 if args.cost_only else args.seeds):
                data = load_dataset("digits", seed=seed)
                for name, (method, where) in RUNS.items():
                    chip = None
                    if where == "http":
                        chip = InSituChip(open_chip(remote, 10.0), remote)
                    config = TrainConfig(method=method, epochs=args.epochs, seed=seed)
                    out = tmp / f"{name}-{seed}.onnx"
                    start = time.perf_counter()
                    summary, result = train_and_export(data, config, out, chip=chip)
                    seconds = time.perf_counter() - start
                    acc = fleet_accuracy(out)
                    others = [a for d, a in acc.items() if d != "chipA"]
                    rows.append({"method": name, "seed": seed, "chipA": acc["chipA"],
                                 "others_mean": float(np.mean(others)), "others_min": float(np.min(others)),
                                 "nominal": summary.test_accuracy, "seconds": seconds,
                                 "in_situ": result.in_situ})
                    print(f"{name:>8} seed {seed}: chipA {100 * acc['chipA']:.1f} %, others mean "
                          f"{100 * np.mean(others):.1f} % min {100 * np.min(others):.1f} %, {seconds:.1f} s",
                          flush=True)
                    if chip is not None:
                        chip.backend.close()
            costs = step_costs(args.epochs, local, remote, tmp, args.rounds, server.process.pid)
    if rows:
        print("\n| method | chipA (trained on) | other 7 chips, mean | other 7, worst | nominal chip |\n"
              "|---|---|---|---|---|")
        for name in RUNS:
            r = [x for x in rows if x["method"] == name]
            fmt = lambda k: f"{100 * np.mean([x[k] for x in r]):.1f} ± {100 * np.std([x[k] for x in r]):.1f}"  # noqa
            print(f"| {name} | {fmt('chipA')} | {fmt('others_mean')} | {fmt('others_min')} | {fmt('nominal')} |")
    print_costs(costs)
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": rows, "step_cost": costs}, indent=2))


if __name__ == "__main__":
    main()

"""Issue 23's MZI comparison, measured: the paper's MZI set-up (one 64-mode mesh read by intensity) on one
"fabricated device" with sigma_bs = sigma_ph = 0.15, as the authors measured it.

The paper (PAPER.md, "More of the authors' figures", MZI; MNIST): on that device, mapped through the nominal mesh
("in silico": the trained phases programmed as they are), standard BP 68.6 %, noise-aware 79.8 %, SAT 92.3 %.
Here: ``examples/paper/mzi.yaml`` on digits28 (scikit-learn's digits resampled to 28 x 28, not MNIST), each
method over seeds, evaluated

* on the ideal chip (the nominal model's test accuracy),
* on one device drawn from ``examples/paper/mzi64-process.yaml`` (seed 0; without crosstalk and detector noise,
  as the paper's device), mapped through the nominal mesh (in silico: ``mapping.uncalibrated``) and through the
  device's calibration (pnndeploy's own deployment: measured offsets and ratios, the phases refitted).

* in situ (``pat``, ``sat-pat``): trained with the forward pass on that device, reached through a real
  `pnndeploy chip serve` process on loopback (the paper's PAT and SAT + PAT), the epoch timed;
* with ``--grid``: on new random devices (no calibration, mapped through the nominal mesh), 5 per point of the
  paper's 7 x 7 grid of (sigma_ph, sigma_bs) in [0, 0.3], mean and 95 % confidence interval (Student t) per point.

    python benchmarks/mzi_paper.py                          # standard and SAT (rho 0.3), 2 seeds, 20 epochs
    python benchmarks/mzi_paper.py --methods standard,noise-aware,sat,pat,sat-pat --seeds 1 --grid
    python benchmarks/mzi_paper.py --modes 16 --quick       # a smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from chip_server import ChipServer  # noqa: E402
from pnndeploy.deploy.hardware import open_chip  # noqa: E402
from pnndeploy.formats.profiles import read_profile, write_profile  # noqa: E402
from pnndeploy.training.in_situ import InSituChip  # noqa: E402

from pnndeploy.deploy.mapping import map_model, uncalibrated  # noqa: E402
from pnndeploy.deploy.transfer import load_evaluation_data  # noqa: E402
from pnndeploy.formats.onnx_io import load_model  # noqa: E402
from pnndeploy.formats.process_spec import load_process  # noqa: E402
from pnndeploy.simulation.fabrication import generate_chip  # noqa: E402
from pnndeploy.simulation.fleet import Conditions, SimulatedFleet  # noqa: E402
from pnndeploy.training.config import TrainConfig, load_config  # noqa: E402
from pnndeploy.training.pipeline import train_and_export  # noqa: E402

CONFIG = REPO / "examples" / "paper" / "mzi.yaml"
PROCESS = REPO / "examples" / "paper" / "mzi64-process.yaml"
PAPER = {"standard": 0.686, "noise-aware": 0.798, "sat": 0.923, "pat": 0.702, "sat-pat": 0.971}
#: The paper's grid: sigma_ph and sigma_bs each in 0, 0.05, ..., 0.3; new random devices per point.
GRID = [round(0.05 * k, 2) for k in range(7)]
GRID_DEVICES = 5
METHODS = {"standard": {"method": "standard"},
           "noise-aware": {"method": "noise-aware", "noise": 0.15},     # the device's phase spread
           "sat": {"method": "sat", "rho": 0.3},                          # the paper's MZI rho (rad)
           # ablation: rho is one L2 norm over all 4,096 phases, so 0.3 moves each by ~0.005 rad, far below the
           # device's 0.15 rad; 3 and 9.6 (= 0.15 sqrt(4096)) are the radii of its fabrication error's size
           "sat-rho3": {"method": "sat", "rho": 3.0},
           "sat-rho9.6": {"method": "sat", "rho": 9.6},
           # in situ: the forward pass on the paper's device through `chip serve` (PAT; SAT + PAT)
           "pat": {"method": "standard"},
           "sat-pat": {"method": "sat", "rho": 0.3}}
IN_SITU = ("pat", "sat-pat")


def paper_device(modes: int, sigma_ph: float = 0.15, sigma_bs: float = 0.15, seed: int = 0,
                 name: str = "paper-device"):
    """One chip of the paper's process at ``modes`` modes and the given spreads (seed 0, 0.15 / 0.15: the
    paper's "fabricated device"), without crosstalk or detector noise, as the paper's devices."""
    process = load_process(PROCESS)
    process = {**process, "array": {"rows": modes, "cols": modes}, "options": {**process["options"], "modes": modes},
               "mzi": {**process["mzi"], "phase_error_sigma_rad": sigma_ph, "splitter_error_sigma": sigma_bs}}
    chip = generate_chip(process, name, seed=seed)
    return replace(chip, environment=replace(chip.environment, crosstalk=0.0, detector_noise=0.0))


def in_silico_accuracy(model, data, chip) -> float:
    """Accuracy of ``model`` on ``chip`` with its phases programmed through the nominal mesh (no calibration)."""
    fleet = SimulatedFleet(model, [chip], [map_model(model, uncalibrated(chip))])
    return float(fleet.accuracy(data.X, data.y, Conditions())[0])


def grid(path: Path, modes: int) -> dict[str, dict[str, float]]:
    """Mean accuracy and its 95 % CI over GRID_DEVICES new random devices at each (sigma_ph, sigma_bs) of GRID."""
    from scipy.stats import t

    model = load_model(path)
    data = load_evaluation_data(model)
    out = {}
    for ph in GRID:
        for bs in GRID:
            accs = [in_silico_accuracy(model, data, paper_device(modes, ph, bs, seed=100 + d, name=f"new{d}"))
                    for d in range(GRID_DEVICES)]
            half = float(t.ppf(0.975, len(accs) - 1) * np.std(accs, ddof=1) / np.sqrt(len(accs)))
            out[f"{ph:.2f},{bs:.2f}"] = {"mean": float(np.mean(accs)), "ci95": half}
    return out


def served_device(stack: ExitStack, folder: Path, modes: int):
    """The paper's device behind a real `chip serve` process on loopback; returns its remote profile."""
    folder.mkdir(parents=True, exist_ok=True)
    write_profile(replace(paper_device(modes), device_id="paper"), folder / "paper.h5")
    server = stack.enter_context(ChipServer(folder / "paper.h5", folder / "server", idle=1800,
                                            max_requests=10_000_000))
    subprocess.run([sys.executable, "-m", "pnndeploy", "chip", "connect", "paper", "--profiles", str(folder),
                    "--address", server.url, "--token-file", str(server.token_file)], check=True,
                   capture_output=True)
    return read_profile(folder / "paper-remote.h5")


def evaluate(path: Path, modes: int) -> dict[str, float]:
    """Accuracy on the ideal chip, and on the paper's device mapped through the nominal mesh and its calibration."""
    model = load_model(path)
    data = load_evaluation_data(model)
    chip = paper_device(modes)
    out = {"ideal": float((model.logits(data.X).argmax(1) == data.y).mean())}
    t0 = time.perf_counter()
    out["in_silico"] = in_silico_accuracy(model, data, chip)
    out["in_silico_map_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fleet = SimulatedFleet(model, [chip], [map_model(model, chip)])
    out["calibrated"] = float(fleet.accuracy(data.X, data.y, Conditions())[0])
    out["calibrated_map_seconds"] = time.perf_counter() - t0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's")
    parser.add_argument("--modes", type=int, default=64)
    parser.add_argument("--methods", default="standard,sat", help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--dataset", default=None, help="default: the config's (digits28); e.g. mnist:~/data/mnist")
    parser.add_argument("--in-situ-mapping", choices=("nominal", "calibrated"), default="nominal",
                        help="pat / sat-pat: program the phases as trained (the paper's) or map each step through "
                             "the device's calibration")
    parser.add_argument("--grid", action="store_true", help="also the paper's 7 x 7 grid of new random devices")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs = 1, 2
    base = {k: v for k, v in load_config(CONFIG).items() if k not in ("out", "dataset")}
    base["platform_options"] = {**base["platform_options"], "modes": args.modes}
    base["hidden"] = [*base["hidden"][:-1], args.modes]         # fc2 feeds every mode of the mesh
    if args.epochs:
        base["epochs"] = args.epochs
    dataset = args.dataset or load_config(CONFIG)["dataset"]
    methods = args.methods.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        remote = served_device(stack, Path(tmp) / "station", args.modes) if set(methods) & set(IN_SITU) else None
        for name in methods:
            for seed in range(args.seeds):
                rows.append(run(name, seed, dataset, base, Path(tmp), remote, args))
    summary = {name: {k: float(np.mean([r[k] for r in rows if r["method"] == name]))
                      for k in ("ideal", "in_silico", "calibrated", "train_seconds", "epoch_seconds")}
               for name in methods}
    print(f"{'method':<12} {'ideal':>7} {'in silico':>10} {'paper':>7} {'calibrated':>11} {'train s':>8} {'epoch s':>8}")
    for name, s in summary.items():
        paper = f"{100 * PAPER[name]:.1f}%" if name in PAPER else "-"
        print(f"{name:<12} {100 * s['ideal']:6.1f}% {100 * s['in_silico']:9.1f}% {paper:>7} "
              f"{100 * s['calibrated']:10.1f}% {s['train_seconds']:8.0f} {s['epoch_seconds']:8.1f}")
    if args.grid:
        print_grid(rows, methods)
    if args.json_path:
        doc = {"dataset": dataset, "modes": args.modes, "epochs": base["epochs"], "seeds": args.seeds,
               "paper": PAPER, "summary": summary, "runs": rows}
        Path(args.json_path).write_text(json.dumps(doc, indent=2))


def run(name: str, seed: int, dataset: str, base: dict, tmp: Path, remote, args) -> dict:
    """Train one method (in situ through the served device for PAT and SAT + PAT) and evaluate it."""
    path = tmp / f"{name}-{seed}.onnx"
    # the paper's protocol: the trained phases programmed as they are (through the nominal mesh), measured on the
    # device; --in-situ-mapping calibrated maps each step through the device's calibration instead (an L-BFGS fit)
    through = remote if args.in_situ_mapping == "calibrated" else uncalibrated(remote) if remote else None
    chip = InSituChip(open_chip(remote, 60.0), through) if name in IN_SITU else None
    t0 = time.perf_counter()
    summary, _ = train_and_export(dataset, TrainConfig(**{**base, **METHODS[name]}, seed=seed), path, chip=chip)
    seconds = time.perf_counter() - t0
    row = {"method": name, "seed": seed, "train_seconds": seconds, "epoch_seconds": seconds / base["epochs"],
           "sharpness": summary.sharpness, **evaluate(path, args.modes)}
    if chip is not None:
        row.update(chip_seconds=chip.chip_seconds, map_seconds=chip.map_seconds)
        chip.backend.close()
    if args.grid:
        row["grid"] = grid(path, args.modes)
    print(f"{name} seed {seed}: {seconds:.0f} s, ideal {row['ideal']:.3f}, in silico {row['in_silico']:.3f}, "
          f"calibrated {row['calibrated']:.3f}, lambda_max {row['sharpness']:.3g}", file=sys.stderr, flush=True)
    return row


def print_grid(rows: list[dict], methods: list[str]) -> None:
    """Each method's grid, mean over seeds of the per-point means (the CI of the first seed beside it)."""
    for name in methods:
        runs = [r for r in rows if r["method"] == name]
        print(f"\n{name}: accuracy on new devices (rows sigma_ph, columns sigma_bs; mean over {GRID_DEVICES} "
              "devices, +- 95 % CI)")
        print("ph \\ bs " + " ".join(f"{bs:>11.2f}" for bs in GRID))
        for ph in GRID:
            cells = []
            for bs in GRID:
                key = f"{ph:.2f},{bs:.2f}"
                mean = np.mean([r["grid"][key]["mean"] for r in runs])
                cells.append(f"{100 * mean:5.1f}±{100 * runs[0]['grid'][key]['ci95']:4.1f}")
            print(f"{ph:8.2f} " + " ".join(f"{c:>11}" for c in cells))


if __name__ == "__main__":
    main()

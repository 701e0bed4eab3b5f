"""MRR results stay the same, bit for bit, through refactors (round 2's rule).

``tests/data/mrr_golden.json`` holds what four small trainings (one per method
family) and their transfer onto the shipped fleet gave before the round-2
regrouping: every epoch's loss, the accuracies, the sharpness, a hash of the
exported weights, and each chip's accuracy at 0 K and +1 K.  A change that moves
any of them changed the MRR physics or training, which no refactor may do.

Bit-for-bit equality is asserted on a machine whose record the file holds: the
same torch CPU capability, CPU model and torch version (two AVX512 machines of
different vendors were seen to differ in the last bits: their kernels differ).
Elsewhere last-bit differences of vectorised kernels are allowed and the figures
must agree closely with the first record.

Regenerate (only when an issue changes the MRR results on purpose, and say so
in the commit): ``python tests/test_reproducible.py --write``.  Issue 27 (the
ring mapping pre-compensates crosstalk) changed the fleet figures on purpose,
not training: the records of machines that could not be rerun then keep their
exact training figures and lost their fleet figures, which are checked against
the first record (approximately) until ``--add-machine`` is run there again.  Add this
machine's record, from a commit whose results are the reference:
``python tests/test_reproducible.py --add-machine`` (run on that commit's code).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "data" / "mrr_golden.json"
REPO = Path(__file__).resolve().parents[1]

#: Small runs covering every training path: baseline, noise-aware, full SAT, efficient SAT with
#: every SAT option (drift adversary, noise, adaptive, perturb all).
RUNS = {
    "standard": {"method": "standard", "epochs": 3, "hidden": [32]},
    "noise-aware": {"method": "noise-aware", "epochs": 3, "hidden": [16, 16]},
    "sat": {"method": "sat", "epochs": 3},                    # the default width too
    "sat-options": {"method": "sat", "epochs": 3, "hidden": [32], "drift_budget": 1.0, "noise": 0.05,
                    "sat_every": 2, "adaptive": True, "perturb": "all"},
}
# (widths are given where they were the default when the records were made: 32; "sat" keeps the default, so a
# change of the old methods' default width fails here)


def cpu_capability() -> str:
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def machine_fingerprint() -> str:
    """What decides the last bits of torch's CPU kernels: capability, CPU model, torch version."""
    import platform

    import torch

    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu_capability()} | {model} | torch {torch.__version__}"


def golden_run(tmp: Path) -> dict:
    """Train, export and transfer each run of RUNS; every figure that must not move.

    On one intra-op thread, as the suite runs (the sharpness, measured outside training, differs in
    its last bit between thread counts).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _golden_run(tmp)
    finally:
        torch.set_num_threads(threads)


def _golden_run(tmp: Path) -> dict:
    import onnx

    from pnndeploy import load_dataset, prepare_fleet, train_and_export, transfer_report
    from pnndeploy.training.config import TrainConfig

    dataset = load_dataset("digits", seed=0)
    out: dict = {"cpu_capability": cpu_capability(), "runs": {}}
    for name, settings in RUNS.items():
        path = tmp / f"{name}.onnx"
        summary, result = train_and_export(dataset, TrainConfig(**settings), path)
        weights = hashlib.sha256()
        for tensor in onnx.load(str(path)).graph.initializer:
            weights.update(tensor.SerializeToString())
        prepared = prepare_fleet(path, [], True, REPO / "device_profiles", save_dir=None)
        fleet = {}
        for delta_T in (0.0, 1.0):
            report = transfer_report(prepared, delta_T=delta_T)
            fleet[str(delta_T)] = {d.device: d.accuracy for d in report.devices}
        out["runs"][name] = {
            "losses": [record.loss for record in result.history],
            "train_accuracy": summary.train_accuracy,
            "test_accuracy": summary.test_accuracy,
            "trained_test_accuracy": summary.trained_test_accuracy,
            "sharpness": summary.sharpness,
            "hessian_trace": summary.hessian_trace,
            "clipped_weights": summary.clipped_weights,
            "weights_sha256": weights.hexdigest(),
            "fleet_accuracy": fleet,
        }
    return out


def test_mrr_results_bit_for_bit(tmp_path: Path) -> None:
    golden = json.loads(GOLDEN.read_text())
    now = golden_run(tmp_path)
    assert set(now["runs"]) == set(golden["runs"])
    machines = golden.get("machines", {})
    exact = machine_fingerprint() in machines
    if not exact:
        import warnings

        warnings.warn(f"no exact MRR record for this machine ({machine_fingerprint()}): checked approximately; add "
                      "one from a reference commit with `python tests/test_reproducible.py --add-machine`")
    reference = machines.get(machine_fingerprint(), golden["runs"])
    for name, want in reference.items():
        got = now["runs"][name]
        if exact and "fleet_accuracy" not in want:
            # a machine's record made before crosstalk pre-compensation (issue 27) changed the fleet figures on
            # purpose keeps its training figures, exact; its fleet is checked against the first record, closely
            assert {k: v for k, v in got.items() if k != "fleet_accuracy"} == want, f"{name}: MRR training moved"
            _fleet_close(got, golden["runs"][name], name)
            continue
        if exact:
            assert got == want, f"{name}: MRR results moved (was {want}, now {got})"
            continue
        # across machines the last bits differ and training amplifies them: an AVX2 EPYC without a record of its
        # own was 6.7e-4 off the AVX512 record in one epoch's loss (noise-aware, epoch 3) while reproducing
        # the reference commit exactly once recorded; the accuracies below carry the approximate check
        assert got["losses"] == pytest.approx(want["losses"], rel=2e-3), name
        for key in ("train_accuracy", "test_accuracy", "trained_test_accuracy"):
            assert got[key] == pytest.approx(want[key], abs=2.5 / 360), (name, key)
        assert got["clipped_weights"] == want["clipped_weights"], name
        for key in ("sharpness", "hessian_trace"):
            assert got[key] == pytest.approx(want[key], rel=1e-2), (name, key)
        _fleet_close(got, want if "fleet_accuracy" in want else golden["runs"][name], name)


def _fleet_close(got: dict, want: dict, name: str) -> None:
    """Each chip's accuracy within 3.5 test images of the record (last bits of training move a few)."""
    for delta_T, chips in want["fleet_accuracy"].items():
        for chip, acc in chips.items():
            assert got["fleet_accuracy"][delta_T][chip] == pytest.approx(acc, abs=3.5 / 360), (name, chip)


if __name__ == "__main__":
    if sys.argv[1:] not in (["--write"], ["--add-machine"]):
        sys.exit("usage: python tests/test_reproducible.py --write | --add-machine   (regenerates "
                 "tests/data/mrr_golden.json | adds this machine's exact record to it)")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        doc = golden_run(Path(tmp))
    GOLDEN.parent.mkdir(exist_ok=True)
    if sys.argv[1] == "--add-machine":
        old = json.loads(GOLDEN.read_text())
        old.setdefault("machines", {})[machine_fingerprint()] = doc["runs"]
        doc = old
    else:
        doc["machines"] = {machine_fingerprint(): doc["runs"]}
    GOLDEN.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} ({machine_fingerprint()})")

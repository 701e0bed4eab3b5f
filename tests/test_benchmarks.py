"""benchmarks/run.py: the JSON the issue asks for, from a real (quick) run; no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_benchmark_reports_every_figure_consistently():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--json"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)             # stdout is one JSON object and nothing else
    training = doc["training"][0]
    for key in ("sat_epoch_ratio", "efficient_sat_epoch_ratio"):
        assert doc[key] == training[key] > 0
    times = training["epoch_s"]
    assert doc["sat_epoch_ratio"] == pytest.approx(times["sat"] / times["standard"])
    assert doc["efficient_sat_epoch_ratio"] == pytest.approx(times["sat_every_5"] / times["standard"])
    assert [row["chips"] for row in doc["fleet"]] == [8, 64]
    for row in doc["fleet"]:
        assert row["speedup"] == pytest.approx(row["loop_s"] / row["vectorized_s"])
        assert row["roofline_fraction"] == pytest.approx(row["matmul_s"] / row["vectorized_s"])
        assert row["speedup_bound"] == pytest.approx(row["loop_s"] / row["matmul_s"])
        assert row["loop_chips_timed"] == row["chips"]
    assert doc["ring_mapping"]["chips"] == 64 and doc["ring_mapping"]["ms_per_chip"] > 0
    assert [row["chips"] for row in doc["mzi_fleet"]] == [8, 64]
    for row in doc["mzi_fleet"]:
        assert set(row) >= {"vectorized_s", "mesh_s", "matmul_s", "gmacs_per_s", "roofline_fraction"}
        assert min(row["vectorized_s"], row["mesh_s"], row["matmul_s"]) > 0
        assert row["mapped_chips"] == 8 and row["modes"] == 16
        assert row["meshes_by"] == "kernel"           # numba is in the test extra: the compiled kernel was timed
    assert doc["mesh_kernel"] == "compiled"
    assert [r["chips"] for r in doc["scaling"]["chips"]] == [8, 64]
    assert [r["hidden"] for r in doc["scaling"]["hidden"]] == [32, 128]
    acc = doc["accuracy"]
    for name in ("sat", "sat_every_5", "sat_every_10"):
        assert set(acc["mean"][name]) == {"-1K", "+0K", "+1K"}
        assert all(0.0 <= v <= 1.0 for v in acc["mean"][name].values())
    diff = acc["efficient_minus_full"]["+0K"]["mean"]
    assert diff == pytest.approx(acc["mean"]["sat_every_5"]["+0K"] - acc["mean"]["sat"]["+0K"])
    assert acc["minus_full"]["sat_every_5"] == acc["efficient_minus_full"]
    assert set(acc["minus_full"]) == {"sat_every_5", "sat_every_10", "sat_momentum"}
    for name in ("momentum_sat", "spec_sat", "momentum_spec_sat"):
        key = {"momentum_sat": "sat_momentum", "spec_sat": "spec_sat", "momentum_spec_sat": "spec_sat_momentum"}[name]
        assert doc[f"{name}_epoch_ratio"] == pytest.approx(times[key] / times["standard"])


@pytest.mark.slow
def test_the_scale_benchmark_times_every_method_against_standard_and_prices_the_cheaper_steps(tmp_path: Path):
    """benchmarks/scale.py (issue 26) at smoke size: the LeNet split's epoch times and ratios on both sets, the
    step before issue 26 timed beside today's, and a cheaper variant's accuracy cost against its full step."""
    out = tmp_path / "scale.json"
    methods = "standard,spec-sat,spec-sat --ascent momentum,spec-sat programmed"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--quick", "--samples", "200",
                           "--epochs", "1", "--threads", "1", "--methods", methods, "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "× standard" in proc.stdout and "cheaper variant − its full step" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["model"]["conv"] == [6, 16] and doc["model"]["hidden"] == [120, 84] and doc["model"]["onchip"] == 2
    rows = doc["throughput"]
    assert [(r["dataset"], r["samples"], r["threads"]) for r in rows] == [("digits28", 1437, 1),
                                                                         ("synthetic-mnist-200", 200, 1)]
    for row in rows:
        names = {"plain torch", *methods.split(","), "spec-sat (whole forwards)",
                 "spec-sat programmed (whole forwards)"}
        assert set(row["epoch_s"]) == names and row["x_standard"]["standard"] == 1.0
        for name, seconds in row["epoch_s"].items():
            assert seconds == min(row["all_epoch_s"][name]) > 0
            assert row["x_standard"][name] == pytest.approx(seconds / row["epoch_s"]["standard"])
    acc = doc["accuracy"]
    assert set(acc["variants"]) == {"spec-sat", "spec-sat --ascent momentum", "spec-sat programmed"}
    assert set(acc["minus_full"]) == {"spec-sat --ascent momentum"}
    cost, full, cheap = (acc["minus_full"]["spec-sat --ascent momentum"], acc["variants"]["spec-sat"],
                         acc["variants"]["spec-sat --ascent momentum"])
    assert cost["full"] == "spec-sat"
    for mode in ("programmed", "compensated"):
        assert len(full[mode]["mean"]) == len(full[mode]["worst"]) == 3 and len(full[mode]["worst_over_range"]) == 1
        assert all(0.0 <= w <= m <= 1.0 for w, m in zip(full[mode]["worst"], full[mode]["mean"]))
        assert full[mode]["worst_over_range"][0] == min(full[mode]["worst"])
        assert cost[mode]["worst_over_range_pp"] == pytest.approx(
            100 * (cheap[mode]["worst_over_range"][0] - full[mode]["worst_over_range"][0]))
        assert cost[mode]["worst_over_range_pp_per_seed"] == [pytest.approx(cost[mode]["worst_over_range_pp"])]
    # compensated, the fleet is judged with its common mode cancelled: -1 K and +1 K look like 0 K
    assert abs(full["compensated"]["mean"][0] - full["compensated"]["mean"][1]) < 0.05


@pytest.mark.slow
def test_a_lot_streamed_reports_its_memory_and_rate():
    """benchmarks/compute.py's lot (10^4 chips in --quick): every chip evaluated, memory and rates reported."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compute.py"), "--quick", "--only", "million",
                           "--json"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lot = json.loads(proc.stdout)["million"]
    assert lot["chips"] == 10_000 and lot["distinct_chips"] == 1024 and lot["device"] == "cpu"
    assert lot["chips_per_s"] == pytest.approx(lot["chips"] / lot["evaluate_s"])
    assert 0.0 < lot["mean_accuracy"] <= 1.0 and lot["peak_rss_mb"] >= lot["peak_rss_before_mb"] > 0


def test_the_gpu_benchmark_says_plainly_when_it_skipped():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: benchmarks/gpu.py measures it")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--json"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["skipped"].startswith("skipped: ") and "no CUDA device" in proc.stdout

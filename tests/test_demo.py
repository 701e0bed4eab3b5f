"""`pnndeploy demo --quick`: the whole story end to end (trains 4 models, audits them on the shipped fleet)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pnndeploy.experiments.demo import DEMO_ENTRIES
from pnndeploy.formats.profile_folder import PROFILES_ENV

PNG = b"\x89PNG\r\n\x1a\n"
CORE = ["standard", "noise-aware", "sat", "spec-sat"]       # the story: baseline, noise, SAT, spec-SAT
METHODS = [entry.name for entry in DEMO_ENTRIES]            # the demo may compare more than these
ROW_KEYS = {"method", "nominal_accuracy", "fleet_mean", "yield", "fleet_mean_minus_1K", "fleet_mean_plus_1K",
            "fleet_min_over_range", "compensated_min_over_range"}


@pytest.mark.slow
def test_demo_quick(cli, tmp_path, monkeypatch, shipped_profiles_dir) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(PROFILES_ENV, str(shipped_profiles_dir))
    result = cli("demo", "--quick", "--out", "out")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["quick"] is True and summary["fleet"] == [f"chip{c}" for c in "ABCDEFGH"]
    table = summary["table"]
    assert [row["method"] for row in table] == METHODS
    assert [m for m in METHODS if m in CORE] == CORE
    for row in table:
        assert ROW_KEYS <= set(row), row["method"]
        for key in ROW_KEYS - {"method"}:
            assert 0.0 <= row[key] <= 1.0, (row["method"], key)
        assert row["fleet_mean"] <= row["nominal_accuracy"] + 0.05
    assert max(row["nominal_accuracy"] for row in table) > 0.8          # 6 epochs on digits do learn
    by_name = {row["method"]: row for row in table}
    # spec-sat is audited as it is deployed (compensated), the others as programmed; compensation never hurts
    assert by_name["spec-sat"]["audited_compensated"] and not by_name["sat"]["audited_compensated"]
    for row in table:
        assert row["compensated_min_over_range"] >= row["fleet_min_over_range"] - 0.02, row["method"]

    report = (out / "report.md").read_text()
    table_lines = [line for line in report.splitlines() if line.startswith("| ")]
    assert len(table_lines) == 1 + len(METHODS)                          # header + one row per method
    for method, line in zip(METHODS, table_lines[1:]):
        assert line.startswith(f"| {method} |")
    for image in re.findall(r"\]\(([^)]+\.png)\)", report):             # every picture it shows exists
        assert (out / image).read_bytes().startswith(PNG), image
    assert "comparison.png" in report

    for name in ["comparison.png", *(f"audit_{m}.png" for m in METHODS)]:
        assert (out / name).read_bytes().startswith(PNG), name
    assert sorted(p.name for p in (out / "models").iterdir()) == sorted(f"{m}.onnx" for m in METHODS)
    assert not (tmp_path / "deployments").exists()                      # everything stays inside --out
    assert not list(out.rglob(".*.tmp"))


@pytest.mark.slow
def test_demo_quick_on_the_mzi_fleet(cli, tmp_path, monkeypatch) -> None:
    """`demo --platform mzi` finds the platform's default fleet with no other flag and writes its own folder.

    At width 16 (the demo's 128 took 4.4 min of the suite on an AVX2 machine: 8x the mesh blocks to fit per chip)."""
    import pnndeploy.experiments.demo as demo

    monkeypatch.setattr(demo, "DEMO_HIDDEN", [16])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(PROFILES_ENV, raising=False)
    (tmp_path / "device_profiles").symlink_to(Path(__file__).resolve().parents[1] / "device_profiles")
    result = cli("demo", "--platform", "mzi", "--quick", "--json")
    assert result.exit_code == 0, result.output
    out = tmp_path / "reports" / "demo-mzi"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["platform"] == "mzi" and summary["fleet"] == [f"chip{c}" for c in "ABCDEFGH"]
    table = summary["table"]
    assert [row["method"] for row in table] == METHODS
    for row in table:
        assert 0.0 <= row["uncalibrated_mean"] <= 1.0 and row["uncalibrated_min"] <= row["uncalibrated_mean"]
    by_name = {row["method"]: row for row in table}
    assert by_name["sat"]["nominal_accuracy"] > 0.8
    # the calibration is what makes a fabricated mesh usable: mapping through it beats ignoring it
    assert by_name["sat"]["fleet_mean"] > by_name["sat"]["uncalibrated_mean"]
    report = (out / "report.md").read_text()
    assert "Mach-Zehnder" in report and "1/rad²" in report
    assert json.loads(result.stdout)["out"] == "reports/demo-mzi"


def test_demo_on_free_space_setups_reports_the_misalignment(cli, tmp_path, monkeypatch) -> None:
    """`demo --platform freespace` on its default setups: the table gains the worst setup within each misalignment
    requirement, the report says so.  (Made small here: 8x8 digits and width 16; the real demo runs on digits28.)"""
    import pnndeploy.experiments.demo as demo
    from pnndeploy.platforms import get_platform

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "DEMO_HIDDEN", [16])
    monkeypatch.setattr(type(get_platform("freespace")), "demo_dataset", "digits")
    result = cli("demo", "--platform", "freespace", "--quick", "--json",
                 "--profiles", Path(__file__).resolve().parents[1] / "device_profiles" / "freespace")
    assert result.exit_code == 0, result.output
    out = tmp_path / "reports" / "demo-freespace"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["platform"] == "freespace" and [row["method"] for row in summary["table"]] == METHODS
    for row in summary["table"]:
        assert set(row["misalignment_min"]) == {"rotation_deg", "shift_x_px", "shift_y_px", "scale"}
        assert row["misalignment_require"]["shift_x_px"] == 2.0
        assert all(0.0 <= v <= row["fleet_min"] + 1e-9 for v in row["misalignment_min"].values())
    assert "fleet min, shift_y_px ±2" in (out / "report.md").read_text()

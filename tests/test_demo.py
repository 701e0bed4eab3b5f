"""`pnndeploy demo --quick`: the whole story end to end (trains 4 models, audits them on the shipped fleet)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pnndeploy.experiments.demo import DEMO_ENTRIES
from conftest import REPO_ROOT as REPO
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


def _small_paper_mzi(tmp_path: Path, cli) -> tuple[Path, Path]:
    """The paper's MZI set-up made small: a 12-mode mesh read by intensity behind a conv front end, 2 chips."""
    import yaml

    spec = yaml.safe_load((REPO / "examples" / "paper" / "mzi64-process.yaml").read_text())
    spec.update(options={"modes": 12, "detection": "intensity"}, array={"rows": 12, "cols": 12})
    (tmp_path / "mzi8.yaml").write_text(yaml.safe_dump(spec))
    made = cli("fleet", "make", "--process", tmp_path / "mzi8.yaml", "--count", "2", "--out", tmp_path / "mzi8")
    assert made.exit_code == 0, made.output
    config = tmp_path / "paper-small.yaml"
    config.write_text("platform: mzi\nplatform_options: {modes: 12, detection: intensity}\ndataset: digits\n"
                      "conv: [4]\nkernel: 3\nbatch_norm: true\nhidden: [12]\nonchip: 1\nepochs: 2\nlr: 0.02\n"
                      "method: sat\nrho: 0.3\nout: models/never.onnx\n")
    return config, tmp_path / "mzi8"


def test_fleet_make_keeps_its_process_spec_beside_the_chips(cli, tmp_path) -> None:
    """spec-SAT and the demo train for a fleet folder's process.yaml: `fleet make` leaves a copy of the one it used,
    and keeps (with a warning) a different one already there."""
    _, fleet = _small_paper_mzi(tmp_path, cli)
    assert (fleet / "process.yaml").read_bytes() == (tmp_path / "mzi8.yaml").read_bytes()
    other = tmp_path / "other.yaml"
    other.write_text((tmp_path / "mzi8.yaml").read_text().replace("paper-mzi64-intensity-v1", "other-process"))
    again = cli("fleet", "make", "--process", other, "--count", "1", "--prefix", "x", "--out", fleet)
    assert again.exit_code == 0 and "kept" in again.stderr and "differs" in again.stderr
    assert (fleet / "process.yaml").read_bytes() == (tmp_path / "mzi8.yaml").read_bytes()


def test_demo_config_refuses_a_fleet_of_other_options_before_training(cli, tmp_path, monkeypatch,
                                                                         one_line_error) -> None:
    """The paper's MZI config on the default MZI fleet (16 modes, coherent): one line naming the mismatch and the
    fix, before any training; a --platform that contradicts the config: one line."""
    monkeypatch.chdir(tmp_path)
    result = cli("demo", "--config", REPO / "examples" / "paper" / "mzi.yaml", "--profiles",
                 REPO / "device_profiles" / "mzi", "--quick", "--out", tmp_path / "out")
    line = one_line_error(result, "modes=64")
    assert "fleet make" in line and "--profiles" in line and not (tmp_path / "out").exists()
    one_line_error(cli("demo", "--config", REPO / "examples" / "paper" / "mzi.yaml", "--platform", "mrr", "--quick"),
                   "--platform")


@pytest.mark.slow
def test_demo_runs_a_config_set_up(cli, tmp_path, monkeypatch) -> None:
    """`demo --config` trains every method in the config's set-up (platform options, conv front end with batch
    norm, on-chip split, epochs) on a fleet of those chips; the config's own method is said to be unused."""
    import pnndeploy.experiments.demo as demo

    config, fleet = _small_paper_mzi(tmp_path, cli)
    monkeypatch.chdir(tmp_path)
    two = tuple(e for e in demo.demo_entries("mzi") if e.name in ("standard", "sat"))     # two rows keep it short
    monkeypatch.setattr(demo, "demo_entries", lambda platform=None: two)
    result = cli("demo", "--config", config, "--profiles", fleet, "--quick", "--json", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "not used by the demo" in result.stderr and "method" in result.stderr and "rho" in result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["platform"] == "mzi" and summary["epochs"] == 2 and summary["hidden"] == [12]
    assert summary["setup"]["platform_options"] == {"modes": 12, "detection": "intensity"}
    assert summary["setup"]["conv"] == [4] and summary["setup"]["onchip"] == 1
    assert [row["method"] for row in summary["table"]] == ["standard", "sat"]
    assert all(run["train"]["config"]["platform_options"] == summary["setup"]["platform_options"]
               for run in summary["runs"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "conv 4@3×3 with batch norm" in report and "read by intensity detection (modes 12" in report

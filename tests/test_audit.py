"""Drift audit: sweep ranges, tolerance intervals, the audit document, ageing, and the `audit` command."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from pnndeploy.deploy.audit import SweepRange, ageing_shifts, run_audit, tolerance_interval
from pnndeploy.deploy.transfer import prepare_fleet
from pnndeploy.errors import ConfigError
from pnndeploy.formats.profile_folder import PROFILES_ENV
from pnndeploy.simulation.fleet import SimulatedFleet

PNG = b"\x89PNG\r\n\x1a\n"
T_RANGE = SweepRange(-1.0, 1.0, 0.5)
D_RANGE = SweepRange(0.0, 60.0, 30.0)


# ------------------------------------------------------------------------------------------ sweep ranges


def test_sweep_range_parse() -> None:
    values = SweepRange.parse("-2:2:0.25", "--temperature").values()
    assert len(values) == 17 and values[0] == -2.0 and values[-1] == 2.0 and 0.0 in values
    np.testing.assert_allclose(np.diff(values), 0.25)
    days = SweepRange.parse("0:180:15", "--days").values()
    assert len(days) == 13 and days[0] == 0.0 and days[-1] == 180.0
    assert SweepRange.parse("0:1:0.3", "--days").values() == [0.0, 0.3, 0.6, 0.9, 1.0]   # HI included
    assert SweepRange.parse("1:2:0.5", "--days").values(extra=(0.0, 1.5)) == [0.0, 1.0, 1.5, 2.0]
    assert SweepRange.parse("3:3:1", "--days").values() == [3.0]


@pytest.mark.parametrize("text", ["1:0:1", "a:b:c", "0:1:0", "0:1", "0:1:-0.5", "0:1:2:3", "nan:1:0.1",
                                  "0:inf:1", "", "0:1e9:0.001"])
def test_sweep_range_parse_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="--temperature"):
        SweepRange.parse(text, "--temperature")


# ------------------------------------------------------------------------------------------ tolerance


V = [-2.0, -1.0, 0.0, 1.0, 2.0]


@pytest.mark.parametrize("acc, expected", [
    ([0.9, 0.9, 0.95, 0.9, 0.9], [-2.0, 2.0]),          # symmetric, the threshold itself counts
    ([0.5, 0.9, 0.95, 0.92, 0.91], [-1.0, 2.0]),        # asymmetric
    ([0.95, 0.95, 0.95, 0.5, 0.95], [-2.0, 0.0]),       # stops at +1 K although +2 K recovers
    ([0.95, 0.5, 0.95, 0.95, 0.95], [0.0, 2.0]),        # stops at -1 K although -2 K recovers
    ([0.5, 0.5, 0.9, 0.5, 0.5], [0.0, 0.0]),
    ([0.95, 0.95, 0.89, 0.95, 0.95], None),             # fails at 0 K
])
def test_tolerance_interval(acc, expected) -> None:
    assert tolerance_interval(V, np.array(acc), 0.9) == expected


# ------------------------------------------------------------------------------------------ run_audit


@pytest.fixture(scope="module")
def prepared(tiny_export, tiny_fleet_dir):
    return prepare_fleet(tiny_export.path, [], True, tiny_fleet_dir, save_dir=None)


@pytest.fixture(scope="module")
def default_doc(prepared):
    return run_audit(prepared, T_RANGE, D_RANGE, draws=2).to_json()


def test_audit_document(default_doc, prepared) -> None:
    doc = default_doc
    for key in ("model", "nominal_accuracy", "threshold", "passed", "sweeps", "tolerance", "time_to_threshold_days"):
        assert key in doc, key
    json.dumps(doc, allow_nan=False)
    names = ["chipA", "chipB", "chipC"]
    assert doc["model"] == str(prepared.model.path)
    assert doc["nominal_accuracy"] == pytest.approx(prepared.nominal_accuracy())
    assert doc["threshold"] == pytest.approx(doc["nominal_accuracy"] - 0.05)
    assert "nominal" in doc["threshold_source"] and "0.05" in doc["threshold_source"]
    t = doc["sweeps"]["temperature_K"]
    assert t["values"] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert sorted(t["devices"]) == names
    acc = np.array([t["devices"][n] for n in names])
    assert acc.shape == (3, 5) and np.all((acc >= 0) & (acc <= 1))
    np.testing.assert_allclose(t["fleet_mean"], acc.mean(axis=0))
    np.testing.assert_allclose(t["fleet_min"], acc.min(axis=0))
    assert np.ptp(acc) > 0                                   # temperature matters
    d = doc["sweeps"]["days"]
    assert d["values"] == [0.0, 30.0, 60.0] and sorted(d["devices"]) == names
    days_acc = np.array([d["devices"][n] for n in names])
    np.testing.assert_allclose(d["fleet_mean"], days_acc.mean(axis=0))
    np.testing.assert_allclose(d["fleet_min"], days_acc.min(axis=0))
    assert sorted(doc["tolerance"]["temperature_K"]) == names
    for n in names:
        expected = tolerance_interval(t["values"], np.array(t["devices"][n]), doc["threshold"])
        assert doc["tolerance"]["temperature_K"][n] == expected
    assert sorted(doc["time_to_threshold_days"]) == names
    # the tiny model (2 epochs) loses more than 5 points on these chips: the audit must fail
    assert doc["passed"] is False and doc["failures"]


def test_audit_threshold_decides(prepared) -> None:
    strict = run_audit(prepared, T_RANGE, D_RANGE, threshold=1.0, draws=1).to_json()
    assert strict["passed"] is False and strict["threshold"] == 1.0 and strict["threshold_source"] == "given"
    assert all(v is None for v in strict["tolerance"]["temperature_K"].values())
    assert all(v == 0.0 for v in strict["time_to_threshold_days"].values())
    lax = run_audit(prepared, T_RANGE, D_RANGE, threshold=0.0, draws=1).to_json()
    assert lax["passed"] is True and lax["failures"] == []
    assert all(v == [-1.0, 1.0] for v in lax["tolerance"]["temperature_K"].values())
    assert all(v is None for v in lax["time_to_threshold_days"].values())   # beyond the horizon
    assert lax["recommended_recalibration_days"] is None


def test_audit_is_deterministic(prepared, default_doc) -> None:
    again = run_audit(prepared, T_RANGE, D_RANGE, draws=2).to_json()
    assert again["sweeps"] == default_doc["sweeps"]
    assert again["time_to_threshold_days"] == default_doc["time_to_threshold_days"]


def test_ageing_shifts_are_a_reproducible_random_walk(prepared) -> None:
    days = [0.0, 30.0, 60.0]
    a = ageing_shifts(prepared, days, draw=0)
    b = ageing_shifts(prepared, days, draw=0)
    c = ageing_shifts(prepared, days, draw=1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert np.all(a[0] == 0.0)                               # nothing has moved on the calibration day
    assert not np.array_equal(a[2], c[2])
    rate = prepared.profiles[0].environment.ageing_rate
    assert np.std(a[2]) == pytest.approx(rate * np.sqrt(60.0), rel=0.15)   # sigma grows as sqrt(days)
    assert np.std(a[2] - a[1]) == pytest.approx(rate * np.sqrt(30.0), rel=0.15)


def test_ageing_walk_does_not_depend_on_the_sweep_grid(prepared) -> None:
    """Asking for day 20 too (e.g. --require-days 20) must not move anything at day 30."""
    coarse = ageing_shifts(prepared, [0.0, 15.0, 30.0], draw=0)
    fine = ageing_shifts(prepared, [0.0, 15.0, 20.0, 30.0], draw=0)
    np.testing.assert_array_equal(coarse[2], fine[3])
    np.testing.assert_array_equal(coarse[1], fine[1])
    half = ageing_shifts(prepared, [10.5], draw=0)[0]          # between whole days: on the segment
    ends = ageing_shifts(prepared, [10.0, 11.0], draw=0)
    np.testing.assert_allclose(half, 0.5 * (ends[0] + ends[1]))


def test_time_to_threshold_agrees_with_the_curve_and_the_verdict(prepared) -> None:
    """Even draws included: the days reported, the plotted median curve and pass/fail tell one story."""
    doc = run_audit(prepared, T_RANGE, SweepRange(0.0, 60.0, 15.0), draws=2, require_days=30.0,
                    require_temperature=0.0).to_json()
    days = doc["sweeps"]["days"]["values"]
    threshold = doc["threshold"]
    for name, curve in doc["sweeps"]["days"]["devices"].items():
        below = [k for k, a in enumerate(curve) if a < threshold]
        expected = None if not below else (0.0 if below[0] == 0 else days[below[0] - 1])
        assert doc["time_to_threshold_days"][name] == expected
        fails_in_30 = any(a < threshold for d, a in zip(days, curve) if d <= 30.0)
        assert (f"{name}: below {threshold:.3f} within 30 days" in doc["failures"]) == fails_in_30


def test_day_zero_equals_zero_kelvin_without_noise(prepared) -> None:
    quiet = [replace(p, environment=replace(p.environment, detector_noise=0.0)) for p in prepared.profiles]
    fleet = SimulatedFleet(prepared.model, quiet, prepared.deployments)
    doc = run_audit(replace(prepared, profiles=quiet, fleet=fleet), T_RANGE, D_RANGE, draws=3).to_json()
    t, d = doc["sweeps"]["temperature_K"], doc["sweeps"]["days"]
    zero = t["values"].index(0.0)
    for name in t["devices"]:
        assert d["devices"][name][0] == t["devices"][name][zero]


def test_day_zero_equals_zero_kelvin(default_doc) -> None:
    t, d = default_doc["sweeps"]["temperature_K"], default_doc["sweeps"]["days"]
    zero = t["values"].index(0.0)
    assert {n: d["devices"][n][0] for n in d["devices"]} == {n: t["devices"][n][zero] for n in t["devices"]}


def test_run_audit_argument_errors(prepared) -> None:
    with pytest.raises(ConfigError, match="negative"):
        run_audit(prepared, T_RANGE, SweepRange(-10.0, 10.0, 10.0))
    with pytest.raises(ConfigError):
        run_audit(prepared, T_RANGE, D_RANGE, draws=0)
    with pytest.raises(ConfigError):
        run_audit(prepared, T_RANGE, D_RANGE, require_temperature=-1.0)


@pytest.mark.parametrize("field", ["require_temperature", "require_days"])
def test_run_audit_refuses_non_finite_requirements(prepared, field) -> None:
    with pytest.raises(ConfigError):
        run_audit(prepared, T_RANGE, D_RANGE, draws=1, **{field: float("nan")})


# ------------------------------------------------------------------------------------------ the command


@pytest.fixture
def audit_cli(cli, model_file, tiny_fleet_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(PROFILES_ENV, raising=False)

    def run(*args):
        return cli("audit", "--model", "M.onnx", "--profiles", tiny_fleet_dir, "--fleet",
                   "--temperature", "-1:1:1", "--days", "0:30:30", "--draws", "1", *args)

    return run


def test_audit_cli_exit_status(audit_cli) -> None:
    failing = audit_cli("--threshold", "0.99", "--json")
    assert failing.exit_code == 1, failing.output
    doc = json.loads(failing.stdout)
    assert doc["passed"] is False and doc["threshold"] == 0.99
    assert doc["sweeps"]["temperature_K"]["values"] == [-1.0, 0.0, 1.0]
    passing = audit_cli("--threshold", "0", "--json")
    assert passing.exit_code == 0, passing.output
    assert json.loads(passing.stdout)["passed"] is True
    assert audit_cli().exit_code == 1                        # default threshold: nominal - 0.05, the tiny model fails


def test_audit_cli_plot_and_report(audit_cli, tmp_path) -> None:
    result = audit_cli("--threshold", "0", "--plot", "x.png", "--report", "r.md", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["plot"] == "x.png" and doc["report"] == "r.md"
    png = (tmp_path / "x.png").read_bytes()
    assert png.startswith(PNG) and len(png) > 5000
    report = (tmp_path / "r.md").read_text()
    assert report.startswith("#") and "](x.png)" in report
    assert "PASSED" in report and "chipA" in report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["M.onnx", "r.md", "x.png"]   # no deployments, no temp


def test_audit_report_links_a_plot_in_another_folder(audit_cli, tmp_path) -> None:
    result = audit_cli("--threshold", "0", "--plot", "plots/x.png", "--report", "r.md")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "plots" / "x.png").read_bytes().startswith(PNG)
    assert "](plots/x.png)" in (tmp_path / "r.md").read_text()


def test_audit_cli_bad_ranges(audit_cli, cli, one_line_error) -> None:
    one_line_error(cli("audit", "--temperature", "2:1:0.5", "--fleet"), "--temperature", "2:1:0.5")
    one_line_error(cli("audit", "--days", "0:30", "--fleet"), "--days")
    one_line_error(audit_cli("--threshold", "2"), "--threshold")

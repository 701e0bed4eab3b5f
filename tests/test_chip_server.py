"""Chips behind a real chip server process on loopback: transfer, audit, calibrate and in-situ training through it,
and every fault a station can show (each one line and exit 2, nothing half-written, never a hang)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from chip_server import ChipServer
from pnndeploy.formats.profiles import read_profile

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _connect(cli, folder: Path, device: str, url: str, token_file: Path, name: str | None = None) -> str:
    name = name or f"{device}-remote"
    result = cli("chip", "connect", device, "--profiles", folder, "--address", url, "--token-file", token_file,
                 "--name", name)
    assert result.exit_code == 0, result.output
    return name


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tiny_fleet_dir):
    """A copy of the tiny fleet and a running server playing its chipB (the client sees only chipB-remote)."""
    folder = tmp_path_factory.mktemp("lab") / "profiles"
    shutil.copytree(tiny_fleet_dir, folder)
    with ChipServer(tiny_fleet_dir / "chipB.h5", folder.parent / "server") as server:
        yield folder, server


@pytest.fixture
def remote(lab, cli, tmp_path):
    """A fresh profiles folder: chipA, chipB (simulated) and chipB-remote pointing at the lab's server."""
    folder, server = lab
    mine = tmp_path / "profiles"
    shutil.copytree(folder, mine)
    _connect(cli, mine, "chipB", server.url, server.token_file)
    return mine, server


def _transfer(cli, model: Path, folder: Path, *args: str):
    return cli("transfer", "--model", model, "--profiles", folder, *args)


# ------------------------------------------------------------------------------------------- the path

def test_a_remote_chip_gives_the_simulated_chips_accuracy(cli, remote, model_file, tmp_path, monkeypatch):
    folder, server = remote
    monkeypatch.chdir(tmp_path)
    result = _transfer(cli, model_file, folder, "--device", "chipB", "--device", "chipB-remote", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    by = {d["device"]: d for d in doc["devices"]}
    sim, real = by["chipB"], by["chipB-remote"]
    assert sim["evaluated_by"] == "simulator" and real["evaluated_by"] == "backend:http"
    assert real["simulated"] is False and real["invalid_samples"] == 0
    # the same chip measured through the network: inside each other's 95 % interval
    assert sim["ci95"][0] <= real["accuracy"] <= sim["ci95"][1]
    assert real["ci95"][0] <= sim["accuracy"] <= real["ci95"][1]
    assert server.requests_logged("/v1/infer") >= 2 * -(-doc["samples"] // 128)   # streamed in batches
    # the deployment of the remote chip is what was programmed, written after the measurement
    assert Path(real["deployment"]).is_file() and doc["fleet"]["count"] == 2
    assert "Authorization" not in server.log.read_text() and server.token_file.read_text().strip() \
        not in server.log.read_text()


def test_chip_info_and_profile_show_name_the_station(cli, remote):
    folder, server = remote
    info = cli("chip", "info", "chipB-remote", "--profiles", folder, "--json")
    assert info.exit_code == 0, info.output
    doc = json.loads(info.stdout)
    assert doc["device_id"] == "chipB" and doc["array"] == [16, 16] and "temperature" in doc["supports"]
    assert doc["wire"] == "stream"                                       # what the station offers, auto takes
    shown = cli("profile", "show", "chipB-remote", "--profiles", folder)
    assert shown.exit_code == 0 and f"http {server.url} (station chip chipB)" in shown.output


def test_a_mixed_fleet_audits_the_remote_chip_through_the_stations_temperature(cli, remote, model_file):
    folder, server = remote
    before = server.requests_logged("/v1/temperature")
    result = cli("audit", "--model", model_file, "--profiles", folder, "--device", "chipA", "--device",
                 "chipB-remote", "--temperature", "-0.5:0.5:0.5", "--days", "0:30:30", "--draws", "1",
                 "--require-temperature", "0.5", "--threshold", "0", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    t = doc["sweeps"]["temperature_K"]
    assert set(t["devices"]) == {"chipA", "chipB-remote"} and t["values"] == [-0.5, 0.0, 0.5]
    assert all(0.0 <= a <= 1.0 for a in t["devices"]["chipB-remote"])
    assert set(doc["sweeps"]["temperature_K_compensated"]["devices"]) == {"chipA", "chipB-remote"}
    # ageing only where it can be simulated; the real chip says why it was not checked
    assert set(doc["sweeps"]["days"]["devices"]) == {"chipA"}
    assert "cannot be aged" in doc["not_checked"]["chipB-remote"]
    assert server.requests_logged("/v1/temperature") - before >= 3


def test_calibrate_recovers_the_chips_offsets_to_the_measurement_noise(cli, remote, tiny_fleet_dir):
    folder, server = remote
    before = read_profile(folder / "chipB-remote.h5")
    result = cli("calibrate", "chipB-remote", "--profiles", folder, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["written"] == str(folder / "chipB-remote.h5") and doc["error_vs_truth"] is None   # truth unseen
    after = read_profile(folder / "chipB-remote.h5")
    truth = read_profile(tiny_fleet_dir / "chipB.h5").fabrication           # what only the server knows
    new_error = after.calibration["resonance_offset"] - truth["resonance_offset"]
    old_error = before.calibration["resonance_offset"] - truth["resonance_offset"]
    assert np.sqrt(np.mean(new_error ** 2)) < 1e-3 < 0.02 < np.sqrt(np.mean(old_error ** 2))   # nm
    assert np.abs(after.calibration["gamma"] - truth["gamma"]).max() < 2e-3
    assert doc["residual"]["rms_max"] < 0.01
    # the old calibration is kept; the new one carries its time and the station's temperature
    assert len(after.calibration_history) == 1
    np.testing.assert_array_equal(after.calibration_history[0].fields["resonance_offset"],
                                  before.calibration["resonance_offset"])
    assert after.calibration_measured_at == doc["measured_at"] != before.calibration_measured_at
    assert after.calibration_temperature_C == doc["temperature_C"] == 25.0
    assert after.backend == before.backend and after.fabrication is None


def test_in_situ_training_runs_through_the_server(cli, remote, tmp_path):
    folder, server = remote
    out = tmp_path / "pat.onnx"
    before = {path: server.requests_logged(path) for path in ("/v1/infer", "/v1/program", "/v1/measure")}
    result = cli("train", "--method", "standard", "--epochs", "1", "--hidden", "8", "--in-situ", "chipB-remote",
                 "--in-situ-profiles", folder, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    steps = -(-1437 // 32)
    assert doc["in_situ"]["chip_device_id"] == "chipB" and doc["in_situ"]["backend"] == "http"
    assert doc["in_situ"]["measurements"] == 2 * steps                  # every on-chip layer, every step
    # one program-and-measure exchange per layer and step (issue 26), nothing else
    assert server.requests_logged("/v1/measure") - before["/v1/measure"] == 2 * steps
    assert server.requests_logged("/v1/infer") + server.requests_logged("/v1/program") == \
        before["/v1/infer"] + before["/v1/program"]
    from pnndeploy.formats.onnx_io import load_model

    assert load_model(out).metadata["in_situ"]["device"] == "chipB-remote"


# ------------------------------------------------------------------------------------------- faults

def _no_output_files(tmp_path: Path) -> None:
    assert not (tmp_path / "deployments").exists()


def test_a_server_that_is_not_running_is_one_line(cli, lab, model_file, tmp_path, monkeypatch, one_line_error):
    folder, server = lab
    mine = tmp_path / "profiles"
    shutil.copytree(folder, mine)
    with socket.socket() as s:                      # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _connect(cli, mine, "chipB", f"http://127.0.0.1:{port}", server.token_file)
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    one_line_error(_transfer(cli, model_file, mine, "--device", "chipB-remote", "--timeout", "1"),
                   "connection refused", "4 tries", "pnndeploy chip serve")
    assert time.monotonic() - start < 15
    _no_output_files(tmp_path)


def test_a_wrong_token_is_refused(cli, lab, model_file, tmp_path, one_line_error):
    folder, server = lab
    mine = tmp_path / "profiles"
    shutil.copytree(folder, mine)
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token-of-this-server\n")
    wrong.chmod(0o600)                              # a token file is the user's alone (README, Security)
    _connect(cli, mine, "chipB", server.url, wrong)
    one_line_error(_transfer(cli, model_file, mine, "--device", "chipB-remote", "--no-save"), "401", "token")
    deadline = time.monotonic() + 10.0              # the server logs a request after its reply has left
    while " 401 " not in server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert " 401 " in server.log.read_text()


def test_a_chip_of_another_platform_is_refused(cli, tiny_fleet_dir, model_file, tmp_path, shipped_profiles_dir,
                                               one_line_error):
    mine = tmp_path / "profiles"
    shutil.copytree(tiny_fleet_dir, mine)
    with ChipServer(shipped_profiles_dir / "mzi" / "chipA.h5", tmp_path / "server") as server:
        _connect(cli, mine, "chipA", server.url, server.token_file)
        one_line_error(_transfer(cli, model_file, mine, "--device", "chipA-remote", "--no-save"),
                       "reports platform 'mzi'", "mrr")


def test_a_chip_whose_firmware_reports_another_array_is_refused(cli, tiny_fleet_dir, shipped_process, model_file,
                                                                tmp_path, one_line_error):
    from pnndeploy.simulation.fabrication import make_fleet

    other = dict(shipped_process, array={"rows": 8, "cols": 8})
    make_fleet(other, 2, "chip", 5, tmp_path / "small")
    mine = tmp_path / "profiles"
    shutil.copytree(tiny_fleet_dir, mine)
    with ChipServer(tmp_path / "small" / "chipB.h5", tmp_path / "server") as server:
        _connect(cli, mine, "chipB", server.url, server.token_file)
        one_line_error(_transfer(cli, model_file, mine, "--device", "chipB-remote", "--no-save"),
                       "8x8 array", "16x16")


@pytest.mark.parametrize("fault, fragments", [
    ("malformed", ("malformed reply",)),
    ("oversized", ("larger than the limit",)),
    ("stall", ("no reply within --timeout 0.5 s", "4 tries")),
])
def test_a_misbehaving_server_is_one_line_and_leaves_nothing(cli, tiny_fleet_dir, model_file, tmp_path, monkeypatch,
                                                             fault, fragments, one_line_error):
    mine = tmp_path / "profiles"
    shutil.copytree(tiny_fleet_dir, mine)
    monkeypatch.chdir(tmp_path)
    with ChipServer(tiny_fleet_dir / "chipB.h5", tmp_path / "server", "--fault", fault) as server:
        _connect(cli, mine, "chipB", server.url, server.token_file)
        start = time.monotonic()
        one_line_error(_transfer(cli, model_file, mine, "--device", "chipA", "--device", "chipB-remote",
                                 "--timeout", "0.5"), *fragments)
        assert time.monotonic() - start < 20
    _no_output_files(tmp_path)          # not even chipA's deployment: the report was never complete


def test_a_server_killed_mid_stream_is_one_line(cli, tiny_fleet_dir, model_file, tmp_path):
    mine = tmp_path / "profiles"
    shutil.copytree(tiny_fleet_dir, mine)
    with ChipServer(tiny_fleet_dir / "chipB.h5", tmp_path / "server", "--fault", "stall") as server:
        _connect(cli, mine, "chipB", server.url, server.token_file)
        client = subprocess.Popen([sys.executable, "-m", "pnndeploy", "transfer", "--model", str(model_file),
                                   "--profiles", str(mine), "--device", "chipB-remote", "--timeout", "20", "--json"],
                                  cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while server.requests_logged("/v1/program") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)                              # the client now waits for its first /infer reply
        server.process.kill()                        # the station dies mid-stream
        out, err = client.communicate(timeout=60)
    assert client.returncode == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pnndeploy: error:") and "Traceback" not in err, err
    assert "tries" in lines[0] and out == ""
    assert not (tmp_path / "deployments").exists()


def test_a_nan_output_is_reported_not_averaged_in(cli, tiny_fleet_dir, model_file, tmp_path):
    mine = tmp_path / "profiles"
    shutil.copytree(tiny_fleet_dir, mine)
    with ChipServer(tiny_fleet_dir / "chipB.h5", tmp_path / "server", "--fault", "nan") as server:
        _connect(cli, mine, "chipB", server.url, server.token_file)
        result = _transfer(cli, model_file, mine, "--device", "chipB-remote", "--no-save", "--json")
        table = _transfer(cli, model_file, mine, "--device", "chipB-remote", "--no-save")
    assert result.exit_code == 0, result.output
    device = json.loads(result.stdout)["devices"][0]
    batches = -(-json.loads(result.stdout)["samples"] // 128)
    assert device["invalid_samples"] == batches            # the first sample of every batch came back NaN
    assert device["accuracy"] is not None and np.isfinite(device["accuracy"])
    assert "NaN or inf outputs for" in table.output


def test_the_server_stops_by_itself_after_its_request_budget(tmp_path, tiny_fleet_dir):
    with ChipServer(tiny_fleet_dir / "chipB.h5", tmp_path / "server", max_requests=2) as server:
        import httpx

        headers = {"Authorization": f"Bearer {server.token_file.read_text().strip()}"}
        assert httpx.get(f"{server.url}/v1/info", headers=headers, timeout=5).json()["device_id"] == "chipB"
        assert httpx.get(f"{server.url}/v1/info", timeout=5).status_code == 401          # no token
        assert server.process.wait(20) == 0
    assert "--max-requests" in server.log.read_text()


def test_the_server_refuses_oversized_and_malformed_requests(tmp_path, tiny_fleet_dir):
    import httpx

    with ChipServer(tiny_fleet_dir / "chipB.h5", tmp_path / "server") as server:
        headers = {"Authorization": f"Bearer {server.token_file.read_text().strip()}"}
        big = httpx.post(f"{server.url}/v1/infer", headers={**headers, "Content-Type": "application/json"},
                         content=b" " * (17 * 1024 * 1024), timeout=20)
        assert big.status_code == 413
        bad = httpx.post(f"{server.url}/v1/infer", headers=headers, json={"layer": 0, "x": {"dtype": "|O"}},
                         timeout=5)
        assert bad.status_code == 400 and "array object" in bad.json()["error"]
        unprogrammed = httpx.post(f"{server.url}/v1/infer", headers=headers, timeout=5, json={
            "layer": 3, "x": {"dtype": "<f8", "shape": [1, 2], "data": "AAAAAAAAAAAAAAAAAAAAAA=="}})
        assert unprogrammed.status_code == 400 and "not programmed" in unprogrammed.json()["error"]


def test_an_audit_of_remote_chips_only_plots_and_says_ageing_was_not_checked(cli, remote, model_file, tmp_path):
    folder, server = remote
    plot = tmp_path / "audit.png"
    result = cli("audit", "--model", model_file, "--profiles", folder, "--device", "chipB-remote", "--temperature",
                 "-0.5:0.5:0.5", "--days", "0:30:30", "--draws", "1", "--require-temperature", "0.5",
                 "--threshold", "0", "--plot", plot, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["sweeps"]["days"]["devices"] == {} and doc["recommended_recalibration_days"] is None
    assert doc["sweeps"]["temperature_K_compensated"]["bias_units"] == "nm"
    assert doc["invalid_samples"] == {"chipB-remote": 0} and plot.stat().st_size > 0
    table = cli("audit", "--model", model_file, "--profiles", folder, "--device", "chipB-remote", "--temperature",
                "-0.5:0.5:0.5", "--days", "0:30:30", "--draws", "1", "--require-temperature", "0.5",
                "--threshold", "0")
    assert "not measured (no simulated chip to age" in table.output
    assert "ageing requirement was not checked for" in " ".join(table.output.split())


def test_an_audit_of_a_chip_returning_nan_reports_it_and_keeps_the_compensation_sane(cli, tiny_fleet_dir,
                                                                                      model_file, tmp_path):
    mine = tmp_path / "profiles"
    shutil.copytree(tiny_fleet_dir, mine)
    with ChipServer(tiny_fleet_dir / "chipB.h5", tmp_path / "server", "--fault", "nan") as server:
        _connect(cli, mine, "chipB", server.url, server.token_file)
        result = cli("audit", "--model", model_file, "--profiles", mine, "--device", "chipB-remote", "--temperature",
                     "0:0.5:0.5", "--days", "0:30:30", "--draws", "1", "--require-temperature", "0.5",
                     "--threshold", "0", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["invalid_samples"]["chipB-remote"] > 0
    window = doc["drift_compensation"]["window"]
    biases = doc["sweeps"]["temperature_K_compensated"]["bias"]["chipB-remote"]
    assert all(abs(b) <= 2 * window for b in biases), biases     # NaN outputs did not push the search away


def test_in_situ_as_trained_programs_through_the_nominal_device(cli, tmp_path, shipped_profiles_dir):
    """--in-situ-programming as-trained (the paper's protocol): each step's controls go to the chip as trained,
    mapped through the drawing (zero offsets, nominal rings, no crosstalk), not through the calibration; the
    model file says which.  The same run through the calibration trains another model."""
    from pnndeploy.deploy.mapping import uncalibrated
    from pnndeploy.formats.profiles import read_profile
    from pnndeploy.training.in_situ import InSituChip

    docs = {}
    for programming in ("calibrated", "as-trained"):
        out = tmp_path / f"{programming}.onnx"
        result = cli("train", "--method", "standard", "--epochs", "1", "--hidden", "8", "--in-situ", "chipB",
                     "--in-situ-profiles", shipped_profiles_dir, "--in-situ-programming", programming,
                     "--out", out, "--json")
        assert result.exit_code == 0, result.output
        docs[programming] = json.loads(result.stdout)
        assert docs[programming]["in_situ"]["programming"] == programming
    assert docs["calibrated"]["model_sha256"] != docs["as-trained"]["model_sha256"]
    # as-trained maps through the drawing: a ring's setting is its trained detuning (to the DAC's step)
    profile = read_profile(shipped_profiles_dir / "chipB.h5")
    chip = InSituChip(None, uncalibrated(profile), "as-trained")
    controls = np.linspace(-2.0, 2.0, 8 * 64).reshape(8, 64)
    mapped = chip.platform.map_layer(None if not chip.platform.linear else chip.platform.transfer(controls), controls,
                                     chip.profile.calibration, chip.profile.environment, chip.profile.shape)
    step = np.ptp(profile.environment.heater_range) / (2 ** profile.environment.dac_bits - 1)
    assert np.max(np.abs(mapped.settings - controls)) <= step / 2 + 1e-12


def test_in_situ_programming_needs_in_situ(cli, one_line_error, tmp_path):
    one_line_error(cli("train", "--in-situ-programming", "as-trained", "--epochs", "1", "--out", tmp_path / "m.onnx"),
                   "--in-situ-programming", "--in-situ DEVICE")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("args", [["chip", "serve", "chipB", "--latency-ms", "nan"],
                                  ["chip", "serve", "chipB", "--idle-timeout", "nan"],
                                  ["chip", "connect", "chipB", "--address", "http://127.0.0.1:9", "--busy-poll-ms", "nan"],
                                  ["calibrate", "chipB", "--max-residual", "nan"]])
def test_nan_is_no_number_for_any_range_option(cli, tiny_fleet_dir, one_line_error, args):
    """click's ranges let NaN through (it compares false with both bounds): every range option refuses it, before
    anything is served or written."""
    one_line_error(cli(*args, "--profiles", tiny_fleet_dir), "nan", "is not a number")
    assert not (tiny_fleet_dir / "chipB-remote.h5").exists()

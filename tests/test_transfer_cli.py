"""`pnndeploy transfer`, `fleet make/list` and `profile show/validate` from the command line."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from pnndeploy.formats.deployments import read_deployment
from pnndeploy.formats.onnx_io import load_model
from pnndeploy.formats.profile_folder import PROFILES_ENV
from pnndeploy.formats.profiles import write_profile
from pnndeploy.simulation.fabrication import generate_chip

TRANSFER_KEYS = {"model", "model_sha256", "dataset", "samples", "nominal_accuracy", "temperature_delta_K",
                 "devices", "fleet"}
FLEET_KEYS = {"count", "mean", "std", "min", "p5", "median", "worst_device", "threshold", "yield"}


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Run from a temporary folder (deployments/ lands there) with no profiles folder from the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(PROFILES_ENV, raising=False)


def _datasets(folder: Path) -> dict:
    out = {}
    for path in sorted(folder.glob("*.h5")):
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: out.__setitem__(f"{path.name}/{name}", obj[()])
                         if isinstance(obj, h5py.Dataset) else None)
    return out


# ------------------------------------------------------------------------------------------ transfer


def test_transfer_one_device_writes_its_deployment(cli, model_file, tiny_fleet_dir, tmp_path) -> None:
    result = cli("transfer", "--model", "M.onnx", "--profiles", tiny_fleet_dir, "--device", "chipB")
    assert result.exit_code == 0, result.output
    assert "chipB" in result.stdout
    target = tmp_path / "deployments" / "M@chipB.h5"
    assert sorted(p.name for p in (tmp_path / "deployments").iterdir()) == ["M@chipB.h5"]
    deployment = read_deployment(target)
    assert deployment.device_id == "chipB"
    assert deployment.model_sha256 == hashlib.sha256(model_file.read_bytes()).hexdigest()


def test_transfer_fleet_json_document(cli, model_file, tiny_fleet_dir, tiny_export) -> None:
    result = cli("transfer", "--model", "M.onnx", "--profiles", tiny_fleet_dir, "--fleet", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)                    # stdout is exactly one JSON document
    model = load_model(model_file)
    assert TRANSFER_KEYS <= set(doc)
    assert doc["model"] == "M.onnx"
    assert doc["model_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert doc["dataset"] == "digits" and doc["samples"] == 360
    assert doc["temperature_delta_K"] == 0.0
    assert abs(doc["nominal_accuracy"] - tiny_export.summary.test_accuracy) <= 1 / 360 + 1e-12
    names = [d["device"] for d in doc["devices"]]
    assert names == ["chipA", "chipB", "chipC"]
    acc = np.array([d["accuracy"] for d in doc["devices"]])
    for d in doc["devices"]:
        assert 0.0 <= d["accuracy"] <= 1.0
        lo, hi = d["ci95"]
        assert 0.0 <= lo <= d["accuracy"] <= hi <= 1.0 and hi - lo > 0.01
        assert d["deployment"] == str(Path("deployments") / f"M@{d['device']}.h5")
        assert Path(d["deployment"]).is_file()
        assert d["accuracy"] * 360 == pytest.approx(round(d["accuracy"] * 360))   # a count of samples
        # the clipped weights by cause, beside the total they add up to, for the chip and per layer
        clipping = d["clipping"]
        assert {"devices", "total", "reach", "range", "faulty", "fraction", "layers"} <= set(clipping)
        assert clipping["total"] == d["clipped_weights"] == clipping["reach"] + clipping["range"] + clipping["faulty"]
        assert clipping["faulty"] == 0 and clipping["devices"] == sum(layer.weight.size for layer in model.layers)
        assert [layer["layer"] for layer in clipping["layers"]] == [layer.name for layer in model.layers]
        assert sum(layer["reach"] for layer in clipping["layers"]) == clipping["reach"]
        assert clipping["fraction"]["total"] == pytest.approx(clipping["total"] / clipping["devices"])
    fleet = doc["fleet"]
    assert FLEET_KEYS <= set(fleet)
    assert fleet["count"] == 3 and fleet["threshold"] == 0.9
    assert fleet["mean"] == pytest.approx(acc.mean())
    assert fleet["min"] == pytest.approx(acc.min()) and fleet["median"] == pytest.approx(np.median(acc))
    assert fleet["worst_device"] == names[int(np.argmin(acc))]
    assert fleet["yield"] == pytest.approx(float((acc >= 0.9).mean()))
    assert result.stderr.strip() == ""                 # no progress noise when stderr is not a terminal


def test_transfer_temperature_delta_changes_the_accuracy(cli, model_file, tiny_fleet_dir) -> None:
    def accs(*extra):
        r = cli("transfer", "--model", "M.onnx", "--profiles", tiny_fleet_dir, "--fleet", "--no-save", "--json",
                *extra)
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    hot = accs("--temperature-delta", "2")
    assert hot["temperature_delta_K"] == 2.0
    assert [d["accuracy"] for d in hot["devices"]] != [d["accuracy"] for d in accs()["devices"]]


def test_transfer_no_save_writes_nothing(cli, model_file, tiny_fleet_dir, tmp_path) -> None:
    result = cli("transfer", "--model", "M.onnx", "--profiles", tiny_fleet_dir, "--fleet", "--no-save", "--json")
    assert result.exit_code == 0, result.output
    assert all(d["deployment"] is None for d in json.loads(result.stdout)["devices"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["M.onnx"]


def test_transfer_min_yield(cli, model_file, tiny_fleet_dir) -> None:
    args = ("transfer", "--model", "M.onnx", "--profiles", tiny_fleet_dir, "--fleet", "--no-save", "--json")
    failed = cli(*args, "--threshold", "1.0", "--min-yield", "1.0")
    assert failed.exit_code == 1, failed.output
    assert json.loads(failed.stdout)["fleet"]["yield"] < 1.0
    assert "--min-yield" in failed.stderr and "Traceback" not in failed.output
    passed = cli(*args, "--threshold", "0.0", "--min-yield", "1.0")
    assert passed.exit_code == 0, passed.output
    assert json.loads(passed.stdout)["fleet"]["yield"] == 1.0


def test_transfer_bad_usage(cli, one_line_error, model_file, tiny_fleet_dir, tmp_path) -> None:
    base = ("transfer", "--model", "M.onnx", "--profiles", tiny_fleet_dir)
    one_line_error(cli(*base, "--device", "chipA", "--threshold", "1.5"), "--threshold")
    one_line_error(cli(*base, "--device", "chipA", "--min-yield", "-0.1"), "--min-yield")
    one_line_error(cli(*base, "--device", "chipQ"), "chipQ")
    one_line_error(cli(*base, "--device", "../x"), "../x")
    one_line_error(cli(*base, "--device", "chipA", "--fleet"), "--fleet")
    one_line_error(cli(*base), "--device")
    one_line_error(cli("transfer", "--model", "missing.onnx", "--profiles", tiny_fleet_dir, "--device", "chipA"),
                   "missing.onnx")
    one_line_error(cli("transfer", "--model", "M.onnx", "--profiles", tmp_path / "nowhere", "--fleet"),
                   "nowhere")
    assert not (tmp_path / "deployments").exists()


def test_transfer_rejects_non_finite_temperature(cli, one_line_error, model_file, tiny_fleet_dir) -> None:
    one_line_error(cli("transfer", "--model", "M.onnx", "--profiles", tiny_fleet_dir, "--device", "chipA",
                       "--no-save", "--json", "--temperature-delta", "nan"), "--temperature-delta")


def test_real_chip_is_mapped_and_written_but_not_evaluated(cli, one_line_error, model_file, tmp_path,
                                                            shipped_process) -> None:
    """A lab's chip has a calibration and no truth: its deployment is written, its accuracy is not invented."""
    folder = tmp_path / "lab"
    write_profile(replace(generate_chip(shipped_process, "chipR", 1), fabrication=None), folder / "chipR.h5")
    write_profile(generate_chip(shipped_process, "chipS", 1), folder / "chipS.h5")
    result = cli("transfer", "--model", "M.onnx", "--profiles", folder, "--fleet", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    real, sim = doc["devices"]
    assert real["device"] == "chipR" and real["accuracy"] is None and real["ci95"] is None
    assert not real["simulated"] and sim["simulated"] and 0.0 <= sim["accuracy"] <= 1.0
    assert doc["not_evaluated"] == ["chipR"] and doc["fleet"]["count"] == 1
    deployed = read_deployment(real["deployment"])
    assert deployed.device_id == "chipR" and deployed.layers[0].settings.shape == (8, 64)
    # only real chips: nothing to summarise, and a yield gate cannot pass
    alone = cli("transfer", "--model", "M.onnx", "--profiles", folder, "--device", "chipR", "--json",
                "--min-yield", "0.5")
    assert alone.exit_code == 1 and json.loads(alone.stdout)["fleet"] is None
    # an audit needs the truth: one clear line
    one_line_error(cli("audit", "--model", "M.onnx", "--profiles", folder, "--device", "chipR"),
                   "chipR", "names no backend", "pnndeploy chip connect")


def test_profiles_env_var(cli, model_file, tiny_fleet_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(PROFILES_ENV, str(tiny_fleet_dir))
    result = cli("transfer", "--model", "M.onnx", "--device", "chipC", "--json")
    assert result.exit_code == 0, result.output
    assert [d["device"] for d in json.loads(result.stdout)["devices"]] == ["chipC"]
    assert (tmp_path / "deployments" / "M@chipC.h5").is_file()
    # --profiles wins over the environment
    monkeypatch.setenv(PROFILES_ENV, str(tmp_path / "nowhere"))
    assert cli("transfer", "--model", "M.onnx", "--device", "chipC", "--no-save").exit_code == 2
    assert cli("transfer", "--model", "M.onnx", "--device", "chipC", "--no-save",
               "--profiles", tiny_fleet_dir).exit_code == 0


def test_train_then_transfer_with_defaults(cli, tmp_path, monkeypatch, shipped_profiles_dir) -> None:
    monkeypatch.setenv(PROFILES_ENV, str(shipped_profiles_dir))
    trained = cli("train", "--epochs", "1", "--hidden", "8")
    assert trained.exit_code == 0, trained.output
    assert (tmp_path / "models" / "model.onnx").is_file()
    result = cli("transfer", "--device", "chipB")
    assert result.exit_code == 0, result.output
    assert "chipB" in result.stdout
    assert read_deployment(tmp_path / "deployments" / "model@chipB.h5").device_id == "chipB"


# ------------------------------------------------------------------------------------------ fleet and profiles


def test_fleet_make_is_reproducible(cli, tmp_path, shipped_process) -> None:
    process = Path(__file__).resolve().parents[1] / "device_profiles" / "process.yaml"
    args = ("fleet", "make", "--process", process, "--count", "3", "--seed", "1")
    first = cli(*args, "--out", "one", "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["profiles"] == [str(Path("one") / f"chip{c}.h5") for c in "ABC"]
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["chipA.h5", "chipB.h5", "chipC.h5", "process.yaml"]
    assert cli(*args, "--out", "two").exit_code == 0
    a, b = _datasets(tmp_path / "one"), _datasets(tmp_path / "two")
    assert sorted(a) == sorted(b) and len(a) > 20
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    with h5py.File(tmp_path / "one" / "chipB.h5", "r") as f:       # the same chip as the library draws
        np.testing.assert_array_equal(f["fabrication/resonance_offset"][()],
                                      generate_chip(shipped_process, "chipB", 1).fabrication["resonance_offset"])
    other = cli("fleet", "make", "--process", process, "--count", "1", "--seed", "2", "--out", "three")
    assert other.exit_code == 0
    with h5py.File(tmp_path / "three" / "chipA.h5", "r") as f:
        assert not np.array_equal(f["fabrication/gamma"][()], a["chipA.h5/fabrication/gamma"])


def test_fleet_make_without_process_file_is_one_line(cli, one_line_error) -> None:
    one_line_error(cli("fleet", "make", "--count", "1", "--out", "x"), "process.yaml")


def test_fleet_list_and_profile_show(cli, tiny_fleet_dir) -> None:
    listed = cli("fleet", "list", "--profiles", tiny_fleet_dir, "--json")
    assert listed.exit_code == 0, listed.output
    doc = json.loads(listed.stdout)
    assert doc["profiles_dir"] == str(tiny_fleet_dir)
    assert [d["device_id"] for d in doc["devices"]] == ["chipA", "chipB", "chipC"]
    shown = cli("profile", "show", "chipA", "--profiles", tiny_fleet_dir, "--json")
    assert shown.exit_code == 0, shown.output
    summary = json.loads(shown.stdout)
    assert summary["device_id"] == "chipA" and summary["simulated"] is True and summary["array"] == [16, 16]
    err = summary["calibration_error"]
    assert set(err) == {"resonance_offset", "gamma", "a"}
    assert 0.04 < err["resonance_offset"]["std"] < 0.06              # process: sigma(r_hat - r) = 0.05 nm
    assert err["resonance_offset"]["units"] == "nm"
    assert cli("profile", "show", "chipZ", "--profiles", tiny_fleet_dir).exit_code == 2


def test_profile_validate(cli, one_line_error, tiny_fleet_dir, tmp_path) -> None:
    good = cli("profile", "validate", tiny_fleet_dir / "chipA.h5")
    assert good.exit_code == 0 and "valid" in good.stdout
    text = tmp_path / "bad.h5"
    text.write_text("this is not a profile\n")
    one_line_error(cli("profile", "validate", text), "bad.h5")
    as_json = cli("profile", "validate", text, "--json")
    assert as_json.exit_code == 2
    doc = json.loads(as_json.stdout)
    assert doc["valid"] is False and doc["problems"]
    truncated = tmp_path / "cut.h5"
    data = (tiny_fleet_dir / "chipA.h5").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    one_line_error(cli("profile", "validate", truncated), "cut.h5")


def test_uncalibrated_maps_through_the_nominal_device_and_writes_nothing(cli, tmp_path, monkeypatch) -> None:
    """`transfer --uncalibrated` (the paper's in-silico transfer): the same chips, mapped through the drawing
    instead of their calibration, lose accuracy, and no deployment (which would program a chip blind) is written."""
    import json

    from pnndeploy.training.config import TrainConfig
    from pnndeploy.training.pipeline import train_and_export

    monkeypatch.chdir(tmp_path)
    model = tmp_path / "m.onnx"
    train_and_export("digits", TrainConfig(platform="mrr", method="standard", epochs=3), model)
    profiles = Path(__file__).resolve().parents[1] / "device_profiles"
    runs = {}
    for flag in (("--uncalibrated",), ()):
        result = cli("transfer", "--model", model, "--fleet", "--profiles", profiles, "--json", *flag)
        assert result.exit_code == 0, result.output
        runs[flag] = json.loads(result.stdout)
        if flag:
            assert not (tmp_path / "deployments").exists()      # the blind mapping is not kept
    blind, calibrated = runs[("--uncalibrated",)], runs[()]
    assert blind["mapped_through"] == "nominal device" and "mapped_through" not in calibrated
    assert blind["fleet"]["mean"] < calibrated["fleet"]["mean"] - 0.05
    assert len(list((tmp_path / "deployments").glob("*.h5"))) == 8      # the calibrated run writes its own

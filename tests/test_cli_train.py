"""The `pnndeploy` command line: train and inspect, configs, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from pnndeploy import __version__
from pnndeploy.cli import main
from pnndeploy.formats.onnx_io import load_model

TRAIN_KEYS = {"model", "platform", "method", "dataset", "train_accuracy", "test_accuracy", "sharpness", "seconds"}


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Run every CLI test from a temporary folder, so a default path can never land in the repo."""
    monkeypatch.chdir(tmp_path)


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    err = result.stderr
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("pnndeploy: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == ""
    return lines[0]


def test_help_lists_commands_and_version():
    result = run("--help")
    assert result.exit_code == 0
    assert "train" in result.stdout and "inspect" in result.stdout
    assert run("-h").stdout == result.stdout
    version = run("--version")
    assert version.exit_code == 0 and __version__ in version.stdout
    sub = run("train", "--help")
    assert sub.exit_code == 0
    for flag in ("--method", "--epochs", "--rho", "--config", "--json", "--out", "--adaptive"):
        assert flag in sub.stdout


def test_python_dash_m_works():
    proc = subprocess.run([sys.executable, "-m", "pnndeploy", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout and "inspect" in proc.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "m.onnx"
    result = run("train", "--epochs", "2", "--hidden", "8", "--out", str(out), "--json")
    return out, result


def test_train_json_prints_exactly_one_object(trained):
    out, result = trained
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert isinstance(doc, dict)
    assert TRAIN_KEYS <= set(doc)
    assert doc["model"] == str(out) and out.is_file()
    assert doc["platform"] == "mrr" and doc["method"] == "spec-sat" and doc["dataset"] == "digits"
    assert 0.0 <= doc["train_accuracy"] <= 1.0 and 0.0 <= doc["test_accuracy"] <= 1.0
    assert doc["sharpness"] > 0 and doc["seconds"] > 0
    assert doc["config"]["epochs"] == 2 and doc["config"]["hidden"] == [8]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx"]


def test_inspect_json_shows_the_metadata(trained):
    out, train_result = trained
    result = run("inspect", str(out), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    meta = doc["metadata"]
    train_doc = json.loads(train_result.stdout)
    assert meta["method"] == "spec-sat" and meta["platform"] == "mrr" and meta["dataset"] == "digits"
    # the default spec-sat's radius: 2 sigma of the shipped process spec (the model records its set)
    assert meta["seed"] == 0 and meta["rho"] == pytest.approx(meta["perturbation_set"]["rho"]) \
        and 0.1 < meta["rho"] < 0.12 and meta["version"] == __version__
    assert meta["perturbation_set"]["compensated"] is True
    assert meta["metrics"]["test_accuracy"] == train_doc["test_accuracy"]
    assert meta["metrics"]["sharpness"] == train_doc["sharpness"]
    assert {"offset", "scale"} <= set(meta["input_scaling"])
    assert "controls" not in meta  # the bulky controls stay out of the document
    assert doc["sha256"] == train_doc["model_sha256"]
    assert [layer["shape"] for layer in doc["layers"]] == [[8, 64], [10, 8]]
    human = run("inspect", str(out))
    assert human.exit_code == 0 and "sat" in human.stdout


def test_config_file_is_applied_and_flags_win(tmp_path):
    out = tmp_path / "cfg.onnx"
    config = tmp_path / "train.yaml"
    config.write_text(f"epochs: 1\nmethod: standard\nhidden: [8]\nrho: 0.2\nout: {out}\n")
    result = run("train", "--config", str(config), "--method", "sat", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["method"] == "sat"
    assert doc["model"] == str(out)
    meta = load_model(out).metadata
    assert meta["method"] == "sat"
    assert meta["config"]["epochs"] == 1 and meta["config"]["hidden"] == [8]
    assert meta["rho"] == pytest.approx(0.2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.onnx", "train.yaml"]


def test_unknown_config_key_suggests_the_close_match(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("epoch: 1\n")
    result = run("train", "--config", str(config), "--out", str(tmp_path / "x.onnx"))
    assert_one_line_error(result, "epoch", "did you mean 'epochs'")
    assert not (tmp_path / "x.onnx").exists()


def test_python_object_tag_is_refused(tmp_path):
    marker = tmp_path / "made_by_yaml"
    config = tmp_path / "evil.yaml"
    config.write_text(f"epochs: !!python/object/apply:os.mkdir [{str(marker)!r}]\n")
    result = run("train", "--config", str(config), "--out", str(tmp_path / "x.onnx"))
    assert_one_line_error(result, str(config))
    assert not marker.exists()
    config.write_text("method: !!python/object:collections.OrderedDict {}\n")
    assert_one_line_error(run("train", "--config", str(config), "--out", str(tmp_path / "x.onnx")))


def test_wrongly_typed_config_value(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: two\n")
    assert_one_line_error(run("train", "--config", str(config), "--out", str(tmp_path / "x.onnx")), "epochs")


@pytest.mark.parametrize("args,fragment", [
    (["--epochs", "-1"], "--epochs"),
    (["--rho", "-1"], "--rho"),
    (["--hidden", "8,x"], "--hidden"),
    (["--lr", "0"], "--lr"),
])
def test_bad_flag_values_are_one_line_errors(tmp_path, args, fragment):
    out = tmp_path / "never.onnx"
    result = run("train", *args, "--out", str(out))
    assert_one_line_error(result, fragment)
    assert not out.exists()


def test_inspect_missing_file(tmp_path):
    assert_one_line_error(run("inspect", str(tmp_path / "missing.onnx")), "missing.onnx")


@pytest.mark.parametrize("content", [b"epochs: 3\nthis is YAML, not ONNX\n", b"\xff\xfe\x00garbage\x01\x02", b""])
def test_inspect_non_onnx_file(tmp_path, content):
    path = tmp_path / "notamodel.onnx"
    path.write_bytes(content)
    assert_one_line_error(run("inspect", str(path)), "notamodel.onnx")
    assert_one_line_error(run("inspect", str(path), "--json"))


# ------------------------------------------------------------------------------- bad hyperparameters and outputs
QUICK = ("--dataset", "iris", "--epochs", "1", "--hidden", "4")


@pytest.mark.parametrize("args", [
    pytest.param(["--lr", "inf"], id="lr-inf"),
    pytest.param(["--rho", "inf"], id="rho-inf"),
    pytest.param(["--noise", "inf", "--method", "noise-aware"], id="noise-inf"),
])
def test_infinite_hyperparameters_are_one_line_errors(tmp_path, args):
    out = tmp_path / "never.onnx"
    assert_one_line_error(run("train", *QUICK, *args, "--out", str(out), "--json"))
    assert not out.exists()


def test_diverging_training_is_a_one_line_error(tmp_path):
    out = tmp_path / "never.onnx"
    assert_one_line_error(run("train", *QUICK, "--lr", "1e30", "--out", str(out), "--json"), "--lr")
    assert not out.exists()


def test_out_is_a_folder(tmp_path):
    folder = tmp_path / "afolder"
    folder.mkdir()
    assert_one_line_error(run("train", *QUICK, "--out", str(folder)), "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afolder"]
    assert list(folder.iterdir()) == []


def test_config_accepts_scientific_notation(tmp_path):
    out = tmp_path / "sci.onnx"
    config = tmp_path / "c.yaml"
    config.write_text("method: sat\nlr: 1e-3\nrho: 5e-2\n")
    result = run("train", *QUICK, "--config", str(config), "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert load_model(out).metadata["config"]["lr"] == pytest.approx(1e-3)

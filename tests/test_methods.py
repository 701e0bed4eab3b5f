"""The method registry: every method passes one conformance suite, a new one is one module plus one registry line,
and the settings, flags, refusals and model-file records all come from the methods' own declarations."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from pnndeploy.errors import ConfigError
from pnndeploy.formats.process_spec import load_process
from pnndeploy.platforms import get_platform
from pnndeploy.training.config import RUN_SETTINGS, TrainConfig
from pnndeploy.training.methods import METHODS, get_method
from pnndeploy.training.methods.base import setting_names, setup_axes
from pnndeploy.training.settings import default_of, described, flag

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_declares_what_the_command_line_and_model_file_need(name: str) -> None:
    method = METHODS[name]
    assert method.name == name and method.summary
    for f in fields(method.settings):
        assert described(f).help, f"{name}: setting {f.name} has no help"
    config = TrainConfig(method=name)
    assert config.hidden == list(method.default_hidden)
    recorded = config.to_dict()
    assert recorded["method"] == name and "seed" in recorded
    assert math.isfinite(method.model_records(config, {})["rho"])
    for variant in method.variants("mrr"):          # every demo row is a config training accepts
        assert TrainConfig(**variant.settings).method == name


@pytest.mark.parametrize("name", list(METHODS))
def test_a_setting_of_another_method_is_refused_naming_its_owner(name: str) -> None:
    method = METHODS[name]
    foreign = [f for f in fields(TrainConfig) if f.name not in setting_names(method)
               and f.name not in RUN_SETTINGS
               and not f.name.startswith(("robust_r", "robust_sh", "robust_sc", "misal"))]
    assert foreign, name
    for f in foreign:
        value = not default_of(f) if isinstance(default_of(f), bool) else 0.5 if f.type != "str | None" else "x"
        if described(f).choices is not None:
            continue
        with pytest.raises(ConfigError, match=flag(f.name)) as caught:
            TrainConfig(method=name, **{f.name: value})
        takers = [m.name for m in METHODS.values() if f.name in setting_names(m)]
        assert any(t in str(caught.value) for t in takers), str(caught.value)


def test_every_setting_is_a_train_flag_with_its_default_in_the_help() -> None:
    from pnndeploy.cli import main

    text = " ".join(CliRunner().invoke(main, ["train", "--help"], terminal_width=400).output.split())
    for f in fields(TrainConfig):
        assert flag(f.name) in text, f.name
    assert "Samples per step (default 32)." in text                   # written once, in RunSettings
    assert "(default 0.1)" in text and "(default 0.5)" in text       # --rho, --misalignment-rho


def test_the_model_file_config_is_round_2s_for_every_method_on_rings() -> None:
    """The keys and their order are what round 2 wrote (the golden test pins the values of one)."""
    assert list(TrainConfig(method="standard").to_dict()) == [
        "method", "platform", "hidden", "epochs", "batch_size", "lr", "seed", "rho", "adaptive", "noise", "perturb",
        "drift_budget", "sat_every"]
    assert list(TrainConfig().to_dict()) == [
        "method", "platform", "hidden", "epochs", "batch_size", "lr", "seed", "sat_every", "robust_to",
        "require_temperature", "require_days", "robust_z", "drift_compensation"]
    assert TrainConfig(method="noise-aware").to_dict()["noise"] == get_platform("mrr").default_noise


@pytest.mark.parametrize("platform", ["mrr", "mzi", "freespace"])
@pytest.mark.parametrize("name", list(METHODS))
def test_a_model_files_config_reads_back_as_the_same_settings(name: str, platform: str) -> None:
    """What a model file records makes the same TrainConfig again (a sweep or a retrain starts from it)."""
    config = TrainConfig(method=name, platform=platform)
    recorded = config.to_dict()
    again = TrainConfig(**recorded)
    assert again.to_dict() == recorded
    assert again.misalignment_box == config.misalignment_box


def test_a_setting_at_its_off_value_is_no_setting() -> None:
    """The baseline's file records noise 0 (no noise): that reads back; a real noise is refused."""
    assert TrainConfig(method="standard", noise=0.0).control_noise == 0.0
    with pytest.raises(ConfigError, match="--noise is a setting of training noise on the controls and --method "
                                          "standard would ignore it; use it with --method sat or noise-aware"):
        TrainConfig(method="standard", noise=0.05)


def test_a_new_method_is_one_module_and_one_registry_line(tmp_path: Path) -> None:
    """tests/example_method.py is written as README's recipe says; registering it is all the rest needs."""
    code = f"""
import json, sys
sys.path.insert(0, {str(TESTS)!r})
from pnndeploy.training import methods
from example_method import RandomDrift
methods.METHODS["random-drift"] = RandomDrift()          # the registry line
from click.testing import CliRunner
from pnndeploy.cli import main
from pnndeploy.formats.onnx_io import load_model
run = lambda *a: CliRunner().invoke(main, list(a), terminal_width=300)
help = run("train", "--help").output
out = {str(tmp_path / "m.onnx")!r}
trained = run("train", "--method", "random-drift", "--drift-range", "0.5", "--dataset", "iris", "--epochs", "2",
              "--hidden", "4", "--out", out, "--json")
refused = run("train", "--method", "sat", "--drift-range", "0.5", "--dataset", "iris", "--out", out + "x")
print(json.dumps({{"help": help, "trained": trained.exit_code, "summary": trained.output,
                  "config": load_model(out).metadata["config"] if trained.exit_code == 0 else None,
                  "refused": refused.exit_code, "error": refused.stderr}}))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout.splitlines()[-1])
    assert "random-drift" in doc["help"] and "--drift-range" in doc["help"]
    assert "each step at a random common-mode temperature change" in doc["help"]
    assert doc["trained"] == 0, doc["summary"]
    assert doc["config"]["method"] == "random-drift" and doc["config"]["drift_range"] == 0.5
    assert "rho" not in doc["config"]                                 # it records its own settings only
    assert doc["refused"] == 2
    assert "--drift-range is a setting of random-drift training and --method sat would ignore it; use it with " \
           "--method random-drift" in doc["error"]


# ------------------------------------------------------------------------------------------------ the setup box
def test_spec_sats_setup_box_is_z_sigma_of_the_process_spec() -> None:
    process = load_process(REPO / "device_profiles" / "freespace" / "process.yaml")
    mask, rel = process["mask"], process["calibration"]["param_rel_sigma"]
    config = TrainConfig(platform="freespace")
    centre, widths = config.misalignment_box
    assert [a.name for a in setup_axes("freespace")] == ["rotation_deg", "shift_x_px", "shift_y_px", "scale"]
    assert centre == [0.0, 0.0, 0.0, 1.0]
    rotation = 2 * math.hypot(mask["rotation_sigma_deg"], rel["rotation"] * mask["rotation_sigma_deg"])
    shift = 2 * math.hypot(mask["shift_sigma_px"], rel["shift_x"] * mask["shift_sigma_px"])
    scale = 2 * math.hypot(mask["scale_sigma"], rel["scale"] * math.hypot(1.0, mask["scale_sigma"]))
    assert widths == pytest.approx([rotation, shift, shift, scale])
    assert widths[0] == pytest.approx(1.005, abs=1e-3)
    wider = replace(config, robust_z=3.0).misalignment_box[1]
    assert wider == pytest.approx([1.5 * w for w in widths])
    assert config.to_dict()["robust_shift"] == pytest.approx(shift)


def test_sat_keeps_the_papers_box_and_a_given_half_width_wins() -> None:
    assert TrainConfig(method="sat", platform="freespace").misalignment_box[1] == [2.0, 2.0, 2.0, 0.1]
    given = TrainConfig(platform="freespace", robust_shift=2.0).misalignment_box[1]
    assert given[1:3] == [2.0, 2.0] and given[0] == pytest.approx(1.005, abs=1e-3)
    assert TrainConfig(method="standard", platform="freespace").misalignment_box is None
    assert TrainConfig().misalignment_box is None                       # rings have no setup axis


@pytest.mark.parametrize(("settings", "fragment"), [
    ({"robust_shift": 1.0}, "--platform mrr has no such axis; drop it or use --platform freespace"),
    ({"platform": "freespace", "method": "standard", "robust_rotation": 1.0},
     "--robust-rotation is a setting of FD-SAT's setup box and --method standard would ignore it; use it with "
     "--method sat or spec-sat"),
    ({"platform": "freespace", "robust_scale": 0.5}, "a magnification error of 50 % or more"),
    ({"platform": "freespace", "robust_shift": -1.0}, "--robust-shift must be a finite number, 0 or more"),
    ({"platform": "freespace", "method": "standard", "robust_scale": 0.6},     # the method's refusal comes first
     "--robust-scale is a setting of FD-SAT's setup box and --method standard would ignore it"),
    ({"platform": "freespace", "robust_to": str(REPO / "device_profiles" / "process.yaml")},
     "describes mrr chips but the model is for freespace"),
    ({"platform": "freespace", "robust_z": 60.0}, "a magnification error of ±0.6 is not a misalignment"),
])
def test_setup_box_settings_are_checked(settings: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TrainConfig(**settings).misalignment_box
    assert fragment in str(caught.value)


# ------------------------------------------------------------------------------------------------ compensation
def test_spec_sat_trains_and_records_the_deployments_compensation() -> None:
    from pnndeploy.deploy.audit import model_compensation

    default = TrainConfig()
    assert TrainConfig(compensation="bias").to_dict() == default.to_dict()          # one spelling per deployment
    programmed = TrainConfig(compensation="none")
    assert programmed.to_dict() == TrainConfig(drift_compensation=False).to_dict()
    gain = TrainConfig(compensation="gain-bias")
    assert gain.to_dict()["compensation"] == "gain-bias" and gain.to_dict()["drift_compensation"] is True
    spec = get_method("spec-sat")
    assert spec.perturbations(gain).compensated and not spec.perturbations(programmed).compensated
    for config, strategy in ((default, "bias"), (programmed, "none"), (gain, "gain-bias")):
        assert model_compensation({"config": config.to_dict()}) == strategy
    with pytest.raises(ConfigError, match="contradict"):
        TrainConfig(compensation="gain-bias", drift_compensation=False)
    with pytest.raises(ConfigError, match="contradict"):
        TrainConfig(compensation="none", drift_compensation=True)
    assert replace(programmed, compensation="gain-bias").to_dict() == gain.to_dict()
    with pytest.raises(ConfigError, match="--compensation 'nope' is unknown; use one of none, bias, gain-bias"):
        TrainConfig(compensation="nope")
    with pytest.raises(ConfigError, match="--compensation is a setting of spec-SAT's perturbation set"):
        TrainConfig(method="sat", compensation="gain-bias")

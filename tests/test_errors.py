"""Bad input, interrupted runs and untrusted files: a clear one-line error, nothing lost, nothing executed.

Every case runs the real command line (click's runner in-process, or a subprocess where a process must be
killed) and checks exit status 2, one line ``pnndeploy: error: ...`` on stderr naming the problem, and no
traceback.  Sections follow the issue: profiles, device names, models, datasets, configs and flags,
interrupted writes, fuzzing.
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from pnndeploy.data.datasets import load_idx
from pnndeploy.data.scaling import InputScaling
from pnndeploy.deploy.mapping import check_compatible
from pnndeploy.errors import ConfigError, DatasetError, PnnError, ProfileError
from pnndeploy.formats.deployments import read_deployment
from pnndeploy.formats.onnx_io import ModelLayer, load_model, save_model
from pnndeploy.formats.profile_schema import validate_profile
from pnndeploy.formats.profiles import read_profile
from pnndeploy.platforms import get_platform

REPO_ROOT = Path(__file__).resolve().parents[1]
MRR = get_platform("mrr")
#: Examples per fuzzing property; PNNDEPLOY_FUZZ_EXAMPLES=2000 runs a long campaign.
FUZZ_EXAMPLES = int(os.environ.get("PNNDEPLOY_FUZZ_EXAMPLES", "60"))


def fuzz_settings(share: float = 1.0) -> settings:
    return settings(max_examples=max(1, int(FUZZ_EXAMPLES * share)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


FUZZ = fuzz_settings()
FUZZ_CLI = fuzz_settings(0.4)


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Run from a temporary folder, so default outputs (deployments/, models/) never land in the repo."""
    monkeypatch.chdir(tmp_path)


# ------------------------------------------------------------------------------------------------ helpers


def write_synthetic_model(path: Path, widths=(64, 8, 10), seed: int = 0, dataset: str = "digits",
                          platform: str = "mrr", bias: float = 0.0, model_seed: int = 0) -> Path:
    """A model written by the real writer (save_model) without training: random detunings, digits scaling."""
    rng = np.random.default_rng(seed)
    layers = []
    for k, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        controls = rng.uniform(-0.3, 0.3, (n_out, n_in)).astype(np.float32)
        weight = np.asarray(MRR.transfer(controls.astype(np.float64), **MRR.nominal), dtype=np.float32)
        layers.append(ModelLayer(f"layer{k}", weight, controls, np.ones(n_out, np.float32),
                                 np.full(n_out, bias, np.float32)))
    save_model(path, layers, InputScaling(offset=0.0, scale=1.0 / 16.0), platform=platform,
               platform_params={**MRR.params_dict(), "control_units": MRR.control_units,
                                "control_range": list(MRR.control_range)},
               method="sat", rho=0.1, dataset=dataset, metrics={"test_accuracy": 0.1}, seed=model_seed)
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A small pnndeploy model (64 -> 8 -> 10, digits); copy it before changing it."""
    return write_synthetic_model(tmp_path_factory.mktemp("errors_model") / "M.onnx")


def edited_model(src: Path, dst: Path, edit) -> Path:
    proto = onnx.load_from_string(src.read_bytes())
    edit(proto)
    dst.write_bytes(proto.SerializeToString())
    return dst


def set_meta(key: str, value: str):
    def edit(proto):
        for entry in proto.metadata_props:
            if entry.key == f"pnndeploy.{key}":
                entry.value = value
    return edit


def initializer(proto, name: str):
    return next(t for t in proto.graph.initializer if t.name == name)


def copied_profile(tiny_fleet_dir: Path, tmp_path: Path, name: str = "chipM", edit=None) -> Path:
    """A copy of chipA as ``tmp_path/profiles/NAME.h5``, optionally edited with h5py; returns the folder."""
    folder = tmp_path / "profiles"
    folder.mkdir(exist_ok=True)
    target = folder / f"{name}.h5"
    shutil.copyfile(tiny_fleet_dir / "chipA.h5", target)
    if edit is not None:
        with h5py.File(target, "r+") as f:
            edit(f)
    return folder


def transfer_args(model: Path, device: str, profiles: Path, *extra: str) -> list:
    return ["transfer", "--model", model, "--device", device, "--profiles", profiles, "--no-save", *extra]


def assert_clean_exit(result) -> None:
    """Exit 0, or exit 2 with one 'pnndeploy: error:' line; never a traceback or another exception."""
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        return
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pnndeploy: error:"), result.stderr


# =============================================================================================== Profiles


def test_profile_missing_file(cli, one_line_error, tiny_fleet_dir, tmp_path, model_path):
    one_line_error(cli("profile", "show", "chipZ", "--profiles", tiny_fleet_dir), "chipZ", "fleet list")
    one_line_error(cli("profile", "validate", tmp_path / "gone.h5"), "gone.h5", "not found")
    one_line_error(cli(*transfer_args(model_path, "chipA", tmp_path / "nowhere")), "nowhere", "does not exist")


@pytest.mark.parametrize("content, fragment", [
    (b"", "empty"),
    (b"schema_version: 1\nthis is text, not HDF5\n", "not an HDF5 file"),
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "not an HDF5 file"),
], ids=["empty", "text", "png"])
def test_profile_not_hdf5_or_empty(cli, one_line_error, tmp_path, content, fragment):
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "chipX.h5").write_bytes(content)
    one_line_error(cli("profile", "show", "chipX", "--profiles", folder), "chipX.h5", fragment)
    one_line_error(cli("profile", "validate", folder / "chipX.h5"), "chipX.h5", fragment)


@pytest.mark.parametrize("keep", [0.05, 0.3, 0.5, 0.9, 0.999])
def test_profile_truncated(cli, one_line_error, tiny_fleet_dir, tmp_path, keep):
    folder = copied_profile(tiny_fleet_dir, tmp_path, "chipT")
    data = (folder / "chipT.h5").read_bytes()
    (folder / "chipT.h5").write_bytes(data[:int(len(data) * keep)])
    one_line_error(cli("profile", "show", "chipT", "--profiles", folder), "chipT.h5", "truncated")


def _del(path):
    def edit(f):
        del f[path]
    return edit


def _replace(path, data, units="nm"):
    def edit(f):
        del f[path]
        f[path] = data
        if units is not None:
            f[path].attrs["units"] = units
    return edit


def _set(path, index, value):
    def edit(f):
        ds = f[path]
        values = ds[()]
        values[index] = value
        units = ds.attrs.get("units")
        del f[path]
        f[path] = values
        if units is not None:
            f[path].attrs["units"] = units
    return edit


def _attr(path, key, value):
    def edit(f):
        if value is None:
            del f[path].attrs[key]
        else:
            f[path].attrs[key] = value
    return edit


def _layout(rows, cols):
    def edit(f):
        f["layout"].attrs["rows"] = rows
        f["layout"].attrs["cols"] = cols
    return edit


@pytest.mark.parametrize("edit, fragment", [
    (_del("environment"), "missing group 'environment'"),
    (_del("calibration"), "missing group 'calibration'"),
    (_del("calibration/gamma"), "missing dataset 'calibration/gamma'"),
    (_del("environment/dac_bits"), "missing dataset 'environment/dac_bits'"),
    (_replace("calibration/gamma", np.full((4, 4), 0.15)), "has shape (4, 4), expected (16, 16)"),
    (_replace("calibration/gamma", np.full((16, 16), 1, dtype=np.int32)), "expected a float"),
    (_replace("environment/dac_bits", 12.0, "bit"), "expected an integer"),
    (_replace("calibration/a", np.full((16, 16), "x", dtype="S1"), "1"), "expected a float"),
    (_set("calibration/resonance_offset", (0, 0), np.nan), "NaN or inf"),
    (_set("fabrication/gamma", (3, 4), np.inf), "NaN or inf"),
    (_set("environment/drift_coefficient", (1, 1), -np.inf), "NaN or inf"),
    (_set("calibration/gamma", (0, 0), 0.0), "'calibration/gamma' has 1 value(s) outside (0, inf)"),
    (_set("fabrication/gamma", (2, 2), -0.15), "'fabrication/gamma' has 1 value(s) outside (0, inf)"),
    (_set("calibration/a", (0, 0), 0.0), "'calibration/a' has 1 value(s) outside (0, 1]"),
    (_set("fabrication/a", (5, 5), 1.2), "'fabrication/a' has 1 value(s) outside (0, 1]"),
    (_set("calibration/a", (1, 1), -0.3), "outside (0, 1]"),
    (_attr("calibration/gamma", "units", None), "'calibration/gamma' has no 'units' attribute"),
    (_attr("environment/heater_range", "units", None), "'environment/heater_range' has no 'units'"),
    (_attr("calibration/gamma", "units", "pm"), "has units 'pm', expected 'nm'"),
    (_attr("/", "device_id", "../../outside"), "'device_id' is not a valid name"),
    (_attr("/", "process", b"\x80\xff"), "non-text root attribute 'process'"),
    (_replace("environment/heater_range", np.array([3.0, -3.0])), "needs low < high"),
    (_replace("environment/heater_range", np.array([-1e308, 1.7e308])), "spans more than a float can hold"),
    (_replace("environment/heater_range", np.array([0.0, 1e-320])), "too narrow for 12 DAC bits"),
    (_replace("environment/dac_bits", np.int64(0), "bit"), "expected 1..32"),
    (_replace("environment/crosstalk", 0.7, "1"), "outside [0, 0.5)"),
    (_replace("environment/detector_noise", -0.1, "1"), "outside [0, inf)"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_profile_content_problems(cli, one_line_error, tiny_fleet_dir, tmp_path, edit, fragment):
    folder = copied_profile(tiny_fleet_dir, tmp_path, edit=edit)
    line = one_line_error(cli("profile", "show", "chipM", "--profiles", folder), "chipM.h5", fragment)
    assert "fleet make" in line  # says what to do
    as_json = cli("profile", "validate", folder / "chipM.h5", "--json")
    assert as_json.exit_code == 2 and json.loads(as_json.stdout)["valid"] is False


def test_profile_problems_stop_transfer_before_anything_is_written(cli, one_line_error, tiny_fleet_dir,
                                                                   tmp_path, model_path):
    folder = copied_profile(tiny_fleet_dir, tmp_path, edit=_set("calibration/gamma", (0, 0), -1.0))
    one_line_error(cli("transfer", "--model", model_path, "--device", "chipM", "--profiles", folder),
                   "chipM.h5", "calibration/gamma")
    assert not (tmp_path / "deployments").exists()


def test_profile_schema_versions(cli, one_line_error, tiny_fleet_dir, tmp_path):
    folder = copied_profile(tiny_fleet_dir, tmp_path, edit=_attr("/", "schema_version", np.int64(7)))
    one_line_error(cli("profile", "show", "chipM", "--profiles", folder), "schema_version 7", "upgrade pnndeploy")
    folder = copied_profile(tiny_fleet_dir, tmp_path, edit=_attr("/", "schema_version", np.int64(0)))
    line = one_line_error(cli("profile", "show", "chipM", "--profiles", folder), "schema_version 0", "older")
    assert "no migration" in line and "fleet make" in line  # says how: write it again / regenerate
    folder = copied_profile(tiny_fleet_dir, tmp_path, edit=_attr("/", "schema_version", "1"))
    one_line_error(cli("profile", "show", "chipM", "--profiles", folder), "'schema_version' is not an integer")
    folder = copied_profile(tiny_fleet_dir, tmp_path, edit=_attr("/", "schema_version", None))
    one_line_error(cli("profile", "show", "chipM", "--profiles", folder), "no 'schema_version'")


def test_profile_of_an_unknown_platform(cli, one_line_error, tiny_fleet_dir, tmp_path, model_path):
    folder = copied_profile(tiny_fleet_dir, tmp_path, edit=_attr("/", "platform", "plasmonic"))
    line = one_line_error(cli(*transfer_args(model_path, "chipM", folder)), "chipM.h5", "platform 'plasmonic'")
    assert "knows d2nn, freespace, mrr, mzi" in line and "upgrade pnndeploy" in line


def test_profile_of_another_known_platform_than_the_model(cli, one_line_error, tmp_path, model_path):
    """An MRR model on an MZI chip: one line, exit 2."""
    from pnndeploy.formats.process_spec import load_process
    from pnndeploy.formats.profiles import write_profile
    from pnndeploy.simulation.fabrication import generate_chip

    process = load_process(Path(__file__).resolve().parents[1] / "device_profiles" / "mzi" / "process.yaml")
    folder = tmp_path / "profiles"
    write_profile(generate_chip(process, "chipZ", seed=0), folder / "chipZ.h5")
    line = one_line_error(cli(*transfer_args(model_path, "chipZ", folder)), "chipZ", "mzi chip")
    assert "trained for mrr" in line and str(model_path) in line


def test_check_compatible_refuses_another_platform(model_path, tiny_fleet_dir):
    model = load_model(model_path)
    profile = read_profile(tiny_fleet_dir / "chipB.h5")
    check_compatible(model, profile)  # same platform: fine
    with pytest.raises(ProfileError, match="is a mzi chip but model .* was trained for mrr"):
        check_compatible(model, dataclasses.replace(profile, platform="mzi"))


def test_array_size_any_array_works_and_an_empty_one_is_refused(cli, one_line_error, tiny_fleet_dir, tmp_path,
                                                                 model_path, shipped_process):
    """Mapping tiles a layer onto the array (weight (o, i) on ring (o mod R, i mod C)), so no array with at
    least one ring is too small for a model: a 1x1 chip works (every weight on the one ring).  What can be
    too small is an array without rings, and validation refuses it."""
    from pnndeploy.formats.profiles import write_profile
    from pnndeploy.simulation.fabrication import generate_chip

    folder = tmp_path / "profiles"
    process = {**shipped_process, "array": {"rows": 1, "cols": 1}}
    write_profile(generate_chip(process, "chipOne", 0), folder / "chipOne.h5")
    result = cli("transfer", "--model", model_path, "--device", "chipOne", "--profiles", folder, "--json")
    assert result.exit_code == 0, result.output
    deployment = read_deployment(json.loads(result.stdout)["devices"][0]["deployment"])
    assert deployment.array == (1, 1) and deployment.layers[0].settings.shape == (8, 64)
    for rows, cols in ((0, 16), (16, 0), (-1, 4)):
        folder = copied_profile(tiny_fleet_dir, tmp_path, edit=_layout(rows, cols))
        one_line_error(cli(*transfer_args(model_path, "chipM", folder)), "chipM.h5", "both must be >= 1")


def test_two_profiles_of_one_device_are_refused(cli, one_line_error, tiny_fleet_dir, tmp_path, model_path):
    folder = tmp_path / "profiles"
    folder.mkdir()
    shutil.copyfile(tiny_fleet_dir / "chipA.h5", folder / "chipA.h5")
    shutil.copyfile(tiny_fleet_dir / "chipA.h5", folder / "chipA-copy.h5")   # same device_id inside
    one_line_error(cli("transfer", "--model", model_path, "--fleet", "--profiles", folder),
                   "chipA-copy.h5", "device_id 'chipA'")
    assert not (tmp_path / "deployments").exists()


def test_profiles_folder_is_a_file(cli, one_line_error, tmp_path, model_path):
    (tmp_path / "afile").write_text("x")
    one_line_error(cli("fleet", "list", "--profiles", tmp_path / "afile"), "afile", "is a file, not a folder")


# =========================================================================================== Device names

BAD_NAMES = ["../chipA", "chipA/../../x", "a/b", "/etc/passwd", "a\\b", "..", "a..b", ".hidden", "",
             "x" * 65, "x" * 5000, "chip A", "chip\nA", "chip\x00A", "chipé"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: repr(n)[:20])
def test_device_names_are_names_not_paths(cli, one_line_error, tiny_fleet_dir, model_path, name):
    line = one_line_error(cli("profile", "show", name, "--profiles", tiny_fleet_dir), "device name")
    assert len(line) < 400  # an absurdly long name is shortened, not echoed
    one_line_error(cli(*transfer_args(model_path, name, tiny_fleet_dir)), "device name")


def test_device_name_refusals_say_what_is_wrong(cli, one_line_error, tiny_fleet_dir):
    def show(name):
        return cli("profile", "show", name, "--profiles", tiny_fleet_dir)

    one_line_error(show("../x"), "looks like a path")
    one_line_error(show(""), "empty")
    one_line_error(show("x" * 300), "longer than 64 characters", "...")
    one_line_error(show("chipA.h5"), "did you mean 'chipA'")
    one_line_error(show("chipa"), "case-sensitive")


@pytest.mark.parametrize("prefix", ["../", "lot/7", "x" * 70, ".hidden"])
def test_fleet_make_refuses_prefixes_that_make_paths(cli, one_line_error, tmp_path, prefix):
    one_line_error(cli("fleet", "make", "--prefix", prefix, "--count", "2", "--out", tmp_path / "out",
                       "--process", REPO_ROOT / "device_profiles" / "process.yaml"), "--prefix")
    assert not (tmp_path / "out").exists()


# ================================================================================================= Models


def test_model_missing_file(cli, one_line_error, tiny_fleet_dir, tmp_path):
    one_line_error(cli("inspect", tmp_path / "gone.onnx"), "gone.onnx", "not found")
    one_line_error(cli(*transfer_args(tmp_path / "gone.onnx", "chipA", tiny_fleet_dir)), "gone.onnx", "--model")


@pytest.mark.parametrize("content, fragment", [
    (b"", "empty"),
    (b"epochs: 3\nthis is YAML\n", "not an ONNX file"),
    (b"\x89HDF\r\n\x1a\n" + b"\x00" * 100, "not an ONNX file"),
    (bytes(range(256)) * 4, "not an ONNX file"),
], ids=["empty", "yaml", "hdf5", "bytes"])
def test_model_not_onnx(cli, one_line_error, tiny_fleet_dir, tmp_path, content, fragment):
    path = tmp_path / "junk.onnx"
    path.write_bytes(content)
    one_line_error(cli("inspect", path), "junk.onnx", fragment)
    one_line_error(cli(*transfer_args(path, "chipA", tiny_fleet_dir)), "junk.onnx")


def test_model_valid_onnx_not_written_by_pnndeploy(cli, one_line_error, tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "foreign",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = tmp_path / "foreign.onnx"
    path.write_bytes(model.SerializeToString())
    one_line_error(cli("inspect", path), "foreign.onnx", "not written by pnndeploy", "no pnndeploy.* metadata")


@pytest.mark.parametrize("key, value, fragment", [
    ("layers", "[{", "pnndeploy.layers is not valid JSON"),
    ("controls", "{'single': 'quotes'}", "pnndeploy.controls is not valid JSON"),
    ("input_scaling", "", "pnndeploy.input_scaling is not valid JSON"),
    ("metrics", '{"test_accuracy": NaN}', "pnndeploy.metrics is not valid JSON"),
    ("layers", '[{"name": "layer0", "in": "abc", "out": 8}, {"name": "layer1", "in": 8, "out": 10}]',
     "pnndeploy.layers"),
    ("layers", "[1, 2]", "pnndeploy.layers"),
    ("onchip", '"layer0.weight"', "pnndeploy.onchip"),
    ("seed", '"zero"', "pnndeploy.seed"),
    ("seed", "-5", "pnndeploy.seed"),
    ("rho", "-1", "pnndeploy.rho"),
    ("platform_params", "[1]", "pnndeploy.platform_params"),
    ("metrics", "[1]", "pnndeploy.metrics"),
    ("format_version", "0", "format_version"),
    ("format_version", "true", "format_version"),
    ("format_version", '"1"', "format_version"),
    ("format_version", "99", "upgrade pnndeploy"),
    ("input_scaling", '{"offset": 0}', "input_scaling has no 'scale'"),
    ("input_scaling", '{"offset": [0, 0, 0], "scale": [1, 1, 1]}', "input_scaling has 3 features"),
], ids=lambda v: v[:24] if isinstance(v, str) else None)
def test_model_malformed_metadata(cli, one_line_error, tmp_path, model_path, key, value, fragment):
    path = edited_model(model_path, tmp_path / "bad.onnx", set_meta(key, value))
    line = one_line_error(cli("inspect", path), "bad.onnx", fragment)
    assert "re-export" in line or "upgrade" in line


def test_model_metadata_not_utf8(cli, one_line_error, tmp_path, model_path):
    data = model_path.read_bytes()
    assert data.count(b"pnndeploy.method") == 1
    path = tmp_path / "bad.onnx"
    path.write_bytes(data.replace(b"pnndeploy.method", b"pnndeploy.metho\xff"))  # same length: valid protobuf
    one_line_error(cli("inspect", path), "bad.onnx", "not valid UTF-8")


def test_model_missing_metadata_key(cli, one_line_error, tmp_path, model_path):
    def drop(proto):
        keep = [p for p in proto.metadata_props if p.key != "pnndeploy.controls"]
        del proto.metadata_props[:]
        proto.metadata_props.extend(keep)
    path = edited_model(model_path, tmp_path / "bad.onnx", drop)
    one_line_error(cli("inspect", path), "bad.onnx", "lacks pnndeploy.controls")


def _replace_initializer(name, make):
    def edit(proto):
        tensor = initializer(proto, name)
        tensor.CopyFrom(numpy_helper.from_array(make(numpy_helper.to_array(tensor)), name))
    return edit


def _truncate_raw(name):
    def edit(proto):
        tensor = initializer(proto, name)
        tensor.raw_data = tensor.raw_data[:-8]
    return edit


@pytest.mark.parametrize("edit, fragment", [
    (_replace_initializer("layer0.weight", lambda a: a[:, :10].copy()), "contradict the metadata (8x64)"),
    (_replace_initializer("layer1.weight", lambda a: a.T.copy()), "contradict the metadata (10x8)"),
    (_replace_initializer("layer0.gain", lambda a: np.ones(3, np.float32)), "contradict the metadata"),
    (_replace_initializer("layer1.bias", lambda a: np.zeros((10, 2), np.float32)), "contradict the metadata"),
    (_truncate_raw("layer0.weight"), "'layer0.weight' cannot be decoded"),
    (_replace_initializer("layer0.weight", lambda a: np.where(a > 0, np.nan, a).astype(np.float32)),
     "NaN or infinite"),
    (_replace_initializer("layer1.gain", lambda a: np.full_like(a, np.inf)), "NaN or infinite"),
    (lambda proto: proto.graph.initializer.remove(initializer(proto, "layer1.bias")), "'layer1.bias'"),
], ids=["narrow", "transposed", "gain", "bias2d", "raw-truncated", "nan-weight", "inf-gain", "no-bias"])
def test_model_initializers_contradict_metadata(cli, one_line_error, tmp_path, model_path, tiny_fleet_dir,
                                                edit, fragment):
    path = edited_model(model_path, tmp_path / "bad.onnx", edit)
    one_line_error(cli("inspect", path), "bad.onnx", fragment)
    one_line_error(cli(*transfer_args(path, "chipA", tiny_fleet_dir)), "bad.onnx", fragment)


def _external(location: str, where: str = "initializer"):
    def edit(proto):
        if where == "initializer":
            tensor = initializer(proto, "layer0.weight")
        else:  # a Constant node whose value lives in a side file
            proto.graph.node.append(helper.make_node(
                "Constant", [], ["unused_const"], value=numpy_helper.from_array(np.zeros(4, np.float32), "c")))
            tensor = proto.graph.node[-1].attribute[0].t
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", "2048")):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return edit


@pytest.mark.parametrize("location, where", [
    ("/etc/passwd", "initializer"), ("weights.bin", "initializer"), ("../../secret.bin", "initializer"),
    ("weights.bin", "constant"),
])
def test_model_with_external_data_is_refused_unread(cli, one_line_error, tmp_path, model_path, location, where):
    side = tmp_path / "weights.bin"
    side.write_bytes(np.zeros(512, np.float32).tobytes())
    before = side.stat().st_atime_ns
    path = edited_model(model_path, tmp_path / "ext.onnx", _external(location, where))
    one_line_error(cli("inspect", path), "ext.onnx", "external data", "never reads files")
    assert side.stat().st_atime_ns == before


def test_model_of_an_unknown_platform(cli, one_line_error, tmp_path, model_path, tiny_fleet_dir):
    path = edited_model(model_path, tmp_path / "plasmonic.onnx", set_meta("platform", "plasmonic"))
    one_line_error(cli(*transfer_args(path, "chipA", tiny_fleet_dir)), "plasmonic.onnx", "trained for plasmonic")


# =============================================================================================== Datasets


def _idx_bytes(array: np.ndarray, magic: bytes | None = None) -> bytes:
    header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    return header + b"".join(struct.pack(">I", d) for d in array.shape) + array.astype(np.uint8).tobytes()


def _mnist_folder(folder: Path, n_train: int = 20, n_test: int = 10, size: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size)),
             "train-labels-idx1-ubyte": np.arange(n_train) % 10,
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size)),
             "t10k-labels-idx1-ubyte": np.arange(n_test) % 10}
    for name, array in files.items():
        (folder / name).write_bytes(_idx_bytes(array))
    return folder


def test_dataset_missing_path(cli, one_line_error, tmp_path, model_path, tiny_fleet_dir):
    one_line_error(cli(*transfer_args(model_path, "chipA", tiny_fleet_dir, "--dataset", "npz:gone.npz")),
                   "npz:gone.npz", "not found")
    one_line_error(cli("train", "--dataset", "mnist:nowhere", "--out", tmp_path / "x.onnx"), "mnist:nowhere",
                   "not found")
    _mnist_folder(tmp_path / "mn")
    (tmp_path / "mn" / "t10k-labels-idx1-ubyte").unlink()
    one_line_error(cli("train", "--dataset", "mnist:mn", "--out", tmp_path / "x.onnx"), "t10k-labels")
    assert not (tmp_path / "x.onnx").exists()


def test_model_dataset_gone_suggests_dataset_flag(cli, one_line_error, tmp_path, tiny_fleet_dir):
    model = write_synthetic_model(tmp_path / "N.onnx", dataset="npz:/no/such/data.npz")
    one_line_error(cli(*transfer_args(model, "chipA", tiny_fleet_dir)), "/no/such/data.npz", "--dataset")


@pytest.mark.parametrize("damage, fragment", [
    (lambda raw: b"\x08\x00" + raw[2:], "not an IDX file"),
    (lambda raw: b"\x00\x00\x42" + raw[3:], "unknown IDX data type"),
    (lambda raw: raw[:-5], "truncated"),
    (lambda raw: raw[:10], "truncated in its header"),
    (lambda raw: raw[:2], "too short"),
    (lambda raw: raw + b"\x00\x00", "longer than its header says"),
    (lambda raw: gzip.compress(raw)[:-6], "not a valid gzip file"),
], ids=["magic", "dtype", "truncated", "header", "tiny", "trailing", "gzip"])
def test_dataset_idx_damaged(cli, one_line_error, tmp_path, damage, fragment):
    folder = _mnist_folder(tmp_path / "mn")
    target = folder / "t10k-images-idx3-ubyte"
    target.write_bytes(damage(target.read_bytes()))
    one_line_error(cli("train", "--dataset", "mnist:mn", "--epochs", "1", "--out", tmp_path / "x.onnx"),
                   "t10k-images-idx3-ubyte", fragment)
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("arrays, fragment", [
    ({"Z": np.zeros(3)}, "no array 'X'"),
    ({"X": np.zeros((20, 64))}, "no array 'y'"),
    ({"features": np.zeros((20, 64)), "labels": np.zeros(20)}, "no array 'X' (arrays: features, labels)"),
], ids=["nothing", "no-y", "other-names"])
def test_dataset_npz_without_x_or_y(cli, one_line_error, tmp_path, model_path, tiny_fleet_dir, arrays, fragment):
    np.savez(tmp_path / "d.npz", **arrays)
    one_line_error(cli(*transfer_args(model_path, "chipA", tiny_fleet_dir, "--dataset", "npz:d.npz")),
                   "npz:d.npz", fragment)


def test_dataset_npz_not_an_archive_or_pickled(cli, one_line_error, tmp_path, model_path, tiny_fleet_dir):
    (tmp_path / "text.npz").write_text("X,y\n1,2\n")
    one_line_error(cli(*transfer_args(model_path, "chipA", tiny_fleet_dir, "--dataset", "npz:text.npz")),
                   "not an .npz archive")
    np.savez(tmp_path / "obj.npz", X=np.array([object()] * 4, dtype=object), y=np.zeros(4))
    one_line_error(cli(*transfer_args(model_path, "chipA", tiny_fleet_dir, "--dataset", "npz:obj.npz")),
                   "Python objects")


def test_dataset_feature_count_does_not_match_the_model(cli, one_line_error, tmp_path, model_path,
                                                         tiny_fleet_dir):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", X=rng.random((60, 10)), y=np.arange(60) % 3)
    one_line_error(cli(*transfer_args(model_path, "chipA", tiny_fleet_dir, "--dataset", "npz:d.npz")),
                   "10 features", "expects 64")
    _mnist_folder(tmp_path / "mn", size=9)  # 81 pixels
    one_line_error(cli(*transfer_args(model_path, "chipA", tiny_fleet_dir, "--dataset", "mnist:mn")),
                   "81 features", "expects 64")


@pytest.mark.parametrize("test_split", [False, True], ids=["split", "own-test-arrays"])
def test_dataset_labels_the_model_does_not_know(cli, one_line_error, tmp_path, model_path, tiny_fleet_dir,
                                                 test_split):
    rng = np.random.default_rng(0)
    arrays = {"X": rng.random((120, 64)) * 16, "y": np.arange(120) % 12}
    if test_split:  # the unknown labels are only in the training arrays: still not the model's data
        arrays.update(X_test=rng.random((20, 64)) * 16, y_test=np.arange(20) % 10)
    np.savez(tmp_path / "d.npz", **arrays)
    one_line_error(cli(*transfer_args(model_path, "chipA", tiny_fleet_dir, "--dataset", "npz:d.npz")),
                   "label 11", "knows 10 classes")


# ===================================================================================== Configs and flags

NO_TRAIN = ("--dataset", "iris", "--hidden", "4")


def _config(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "run.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("text, fragments", [
    ("epoch: 1\n", ("unknown key 'epoch'", "did you mean 'epochs'")),
    ("hiden: [8]\n", ("unknown key 'hiden'", "did you mean 'hidden'")),
    ("learning_rate: 0.1\n", ("unknown key 'learning_rate'", "known keys")),
    ("epochs: 1\nbatchsize: 8\n", ("unknown key 'batchsize'", "did you mean 'batch_size'")),
], ids=["epoch", "hiden", "far", "batchsize"])
def test_config_unknown_key_named_with_suggestion(cli, one_line_error, tmp_path, text, fragments):
    config = _config(tmp_path, text)
    one_line_error(cli("train", "--config", config, "--out", tmp_path / "x.onnx"), "run.yaml", *fragments)
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("text, key", [
    ("epochs: two\n", "epochs"), ("epochs: 1.5\n", "epochs"), ("epochs: true\n", "epochs"),
    ("lr: fast\n", "lr"), ("lr: .nan\n", "lr"), ("rho: .inf\n", "rho"), ("hidden: [8, x]\n", "hidden"),
    ("hidden: [true]\n", "hidden"), ("adaptive: maybe\n", "adaptive"), ("method: 3\n", "method"),
    ("dataset: [digits]\n", "dataset"), ("seed: {a: 1}\n", "seed"),
])
def test_config_wrong_types(cli, one_line_error, tmp_path, text, key):
    one_line_error(cli("train", "--config", _config(tmp_path, text), "--out", tmp_path / "x.onnx"),
                   "run.yaml", key)


@pytest.mark.parametrize("tag", [
    "!!python/object/apply:os.mkdir [{marker!r}]",
    "!!python/object/new:os.mkdir [{marker!r}]",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/object:collections.OrderedDict {{}}",
])
def test_config_python_tags_are_refused(cli, one_line_error, tmp_path, tag):
    marker = tmp_path / "made_by_yaml"
    config = _config(tmp_path, f"epochs: {tag.format(marker=str(marker))}\n")
    one_line_error(cli("train", "--config", config, "--out", tmp_path / "x.onnx"), "run.yaml",
                   "no !!python tags")
    process = tmp_path / "process.yaml"
    process.write_text(f"name: {tag.format(marker=str(marker))}\n")
    one_line_error(cli("fleet", "make", "--process", process, "--out", tmp_path / "p"), "process.yaml")
    assert not marker.exists() and not (tmp_path / "p").exists()


@pytest.mark.parametrize("text, fragments", [
    ("epochs: 1\nlr: 0.1\nepochs: 50\n", ("key 'epochs' appears twice", "line 1 and line 3")),
    (b"epochs: \xff\xfe\n", ("not UTF-8",)),
    ("- epochs\n- 3\n", ("expected a mapping",)),
    ("epochs: [1\n", ("line",)),
    ("when: 2026-13-45\n", ("cannot be read",)),
    ("epochs: " + "[" * 5000 + "]" * 5000 + "\n", ("run.yaml",)),
], ids=["duplicate", "binary", "list", "unclosed", "bad-date", "deep"])
def test_config_malformed_yaml(cli, one_line_error, tmp_path, text, fragments):
    one_line_error(cli("train", "--config", _config(tmp_path, text), "--out", tmp_path / "x.onnx"),
                   "run.yaml", *fragments)


def test_config_missing_or_folder(cli, one_line_error, tmp_path):
    one_line_error(cli("train", "--config", tmp_path / "gone.yaml"), "gone.yaml", "not found")
    (tmp_path / "folder.yaml").mkdir()
    one_line_error(cli("train", "--config", tmp_path / "folder.yaml"), "folder.yaml", "--config")


@pytest.mark.parametrize("text, fragments", [
    ("epochs: -3\n", ("run.yaml", "key 'epochs'", "at least 1")),
    ("rho: -0.1\n", ("run.yaml", "key 'rho'", "0 or more")),
    ("lr: 0\n", ("run.yaml", "key 'lr'", "positive")),
])
def test_config_values_out_of_range_name_the_file(cli, one_line_error, tmp_path, text, fragments):
    one_line_error(cli("train", "--config", _config(tmp_path, text), "--out", tmp_path / "x.onnx"), *fragments)


@pytest.mark.parametrize("args, fragment", [
    (["--epochs", "-1"], "--epochs"), (["--epochs", "0"], "--epochs"), (["--rho", "-0.5"], "--rho"),
    (["--rho", "nan"], "--rho"), (["--batch-size", "0"], "--batch-size"), (["--noise", "-1"], "--noise"),
    (["--epochs", "abc"], "'--epochs': 'abc' is not a valid integer"), (["--method", "magic"], "--method"),
    (["--no-such-flag"], "No such option"), (["--hidden", "8,,x"], "--hidden"),
])
def test_train_flags(cli, one_line_error, tmp_path, args, fragment):
    line = one_line_error(cli("train", *NO_TRAIN, *args, "--out", tmp_path / "x.onnx"), fragment)
    assert not (tmp_path / "x.onnx").exists()
    if "valid integer" in fragment or "No such" in fragment:
        assert "pnndeploy train --help" in line  # click's usage errors become one line too


@pytest.mark.parametrize("flag, value", [("--threshold", "1.5"), ("--threshold", "-0.1"), ("--threshold", "nan"),
                                         ("--min-yield", "2")])
def test_transfer_fraction_flags(cli, one_line_error, model_path, tiny_fleet_dir, flag, value):
    one_line_error(cli(*transfer_args(model_path, "chipA", tiny_fleet_dir, flag, value)), flag, "outside [0, 1]")


@pytest.mark.parametrize("args, fragment", [
    (["--threshold", "1.01"], "--threshold"),
    (["--temperature", "1:0:0.1"], "--temperature '1:0:0.1'"),
    (["--temperature", "a:b"], "LO:HI:STEP"),
    (["--temperature", "-1:1"], "LO:HI:STEP"),
    (["--temperature", "-1:1:0"], "STEP > 0"),
    (["--temperature", "-1:1:-0.5"], "STEP > 0"),
    (["--temperature", "nan:1:0.1"], "finite"),
    (["--temperature", "-1:inf:0.1"], "finite"),
    (["--temperature", "0:1e9:1e-6"], "more than 10000 points"),
    (["--days", "0:30"], "--days"),
    (["--days", "-5:10:1"], "cannot be negative"),
    (["--require-temperature", "-1"], "--require-temperature"),
    (["--draws", "0"], "--draws"),
])
def test_audit_flags_and_sweep_ranges(cli, one_line_error, model_path, tiny_fleet_dir, args, fragment):
    one_line_error(cli("audit", "--model", model_path, "--device", "chipA", "--profiles", tiny_fleet_dir,
                       *args), fragment)


def test_unwritable_outputs_are_refused_before_work(cli, one_line_error, tmp_path, model_path, tiny_fleet_dir):
    (tmp_path / "afile").write_text("x")
    one_line_error(cli("fleet", "make", "--out", tmp_path / "afile", "--count", "1",
                       "--process", REPO_ROOT / "device_profiles" / "process.yaml"), "--out", "not a folder")
    one_line_error(cli("audit", "--model", model_path, "--device", "chipA", "--profiles", tiny_fleet_dir,
                       "--plot", tmp_path / "afile" / "a.png"), "--plot")
    one_line_error(cli("train", *NO_TRAIN, "--out", tmp_path / "afile" / "m.onnx"), "--out")


# ===================================================================================== Interrupted writes


class _DiskFull:
    """Stands in for the os module inside pnndeploy.atomic: every fsync fails as on a full disk."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_leaves_nothing_behind(cli, one_line_error, tmp_path, model_path, tiny_fleet_dir, monkeypatch):
    monkeypatch.setattr("pnndeploy.atomic.os", _DiskFull())
    one_line_error(cli("fleet", "make", "--count", "2", "--out", tmp_path / "fleet",
                       "--process", REPO_ROOT / "device_profiles" / "process.yaml"),
                   "chipA.h5", "No space left on device")
    one_line_error(cli("transfer", "--model", model_path, "--device", "chipA", "--profiles", tiny_fleet_dir),
                   "M@chipA.h5", "No space left on device")
    one_line_error(cli("audit", "--model", model_path, "--device", "chipA", "--profiles", tiny_fleet_dir,
                       "--temperature", "0:0:1", "--days", "0:0:1", "--draws", "1", "--report",
                       tmp_path / "audit.md"), "audit.md", "No space left on device")
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == [], left  # no profile, deployment, report or temporary file


WRITER = r"""
import sys
from pathlib import Path
import numpy as np
from pnndeploy.data.scaling import InputScaling
from pnndeploy.formats.process_spec import load_process
from pnndeploy.simulation.fabrication import generate_chip
from pnndeploy.formats.deployments import Deployment, LayerDeployment, write_deployment
from pnndeploy.formats.onnx_io import ModelLayer, save_model
from pnndeploy.platforms import get_platform
from pnndeploy.formats.profiles import write_profile

folder, rounds, process_path = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
process = load_process(process_path)
process["array"] = {"rows": 96, "cols": 96}
chip = generate_chip(process, "chipK", 0)
mrr = get_platform("mrr")
rng = np.random.default_rng(0)
controls = rng.uniform(-0.3, 0.3, (192, 192)).astype(np.float32)
weight = np.asarray(mrr.transfer(controls.astype(np.float64), **mrr.nominal), dtype=np.float32)
i = int(sys.argv[4]) if len(sys.argv) > 4 else 0
done = 0
while rounds == 0 or done < rounds:
    i += 1
    done += 1
    # every file carries its version twice, so a mix of two versions would show
    chip.process = f"v{i}"
    chip.environment.ageing_rate = i * 1e-6
    write_profile(chip, folder / "profiles" / "chipK.h5")
    layers = [ModelLayer("layer0", weight, controls, np.ones(192, np.float32), np.full(192, i, np.float32))]
    save_model(folder / "models" / "big.onnx", layers, InputScaling(0.0, 1.0), platform="mrr",
               platform_params=mrr.params_dict(), method="sat", rho=0.1, dataset="digits", metrics={},
               seed=i)
    write_deployment(Deployment(device_id="chipK", model_sha256=f"v{i}", model_path="big.onnx",
                                calibration_measured_at=chip.calibration_measured_at, array=(96, 96),
                                layers=[LayerDeployment("layer0", np.full((384, 384), float(i)), i)],
                                control_units="nm"), folder / "deployments" / "big@chipK.h5")
    print(i, flush=True)
"""


def _writer(folder: Path, rounds: int, start: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(rounds),
                             str(REPO_ROOT / "device_profiles" / "process.yaml"), str(start)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _versions(folder: Path) -> dict[str, int]:
    """The version each target holds; every one must be absent or complete and self-consistent."""
    versions = {}
    profile_path = folder / "profiles" / "chipK.h5"
    if profile_path.exists():
        assert validate_profile(profile_path) == []
        profile = read_profile(profile_path)
        versions["profile"] = n = int(profile.process[1:])
        assert profile.environment.ageing_rate == pytest.approx(n * 1e-6)
    model_path = folder / "models" / "big.onnx"
    if model_path.exists():
        model = load_model(model_path)
        versions["model"] = n = model.metadata["seed"]
        assert np.all(model.layers[0].bias == n) and model.layers[0].weight.shape == (192, 192)
    deployment_path = folder / "deployments" / "big@chipK.h5"
    if deployment_path.exists():
        deployment = read_deployment(deployment_path)
        versions["deployment"] = n = int(deployment.model_sha256[1:])
        assert deployment.layers[0].clipped == n and np.all(deployment.layers[0].settings == n)
    return versions


def test_killed_writers_leave_the_previous_file_or_none(cli, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    rng = random.Random(1234)
    last = 0
    for attempt in range(6):
        proc = _writer(folder, rounds=0, start=last + 10)
        try:
            first = proc.stdout.readline().strip()
            assert first, proc.stderr.read()      # one full round written
            time.sleep(rng.uniform(0.0, 0.5))     # then a random moment, mostly in the middle of a write
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        printed = [first, *proc.stdout.read().split()]
        proc.stdout.close()
        proc.stderr.close()
        last = int(printed[-1])
        # each file is the last finished version, or the next one if the kill came after its rename
        versions = _versions(folder)
        assert set(versions) == {"profile", "model", "deployment"}
        assert all(v in (last, last + 1) for v in versions.values()), (last, versions)
    # a killed writer may leave its hidden temporary file; nothing reads or lists it
    leftovers = [p.name for p in folder.rglob("*.tmp")]
    assert all(name.startswith(".") for name in leftovers), leftovers
    profiles = folder / "profiles"
    (profiles / ".chipK.h5.abc123.tmp").write_bytes(b"half a profile")  # as a kill would leave it
    result = cli("fleet", "list", "--profiles", profiles, "--json")
    assert result.exit_code == 0, result.output
    assert [d["device_id"] for d in json.loads(result.stdout)["devices"]] == ["chipK"]
    plain = cli("fleet", "list", "--profiles", profiles)
    assert plain.exit_code == 0 and ".tmp" not in plain.stdout


def test_a_normal_run_leaves_no_temporary_files(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    proc = _writer(folder, rounds=2)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.split() == ["1", "2"]
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "deployments/big@chipK.h5", "models/big.onnx", "profiles/chipK.h5"]
    assert _versions(folder) == {"profile": 2, "model": 2, "deployment": 2}


def test_sigterm_during_fleet_make_removes_the_temporary_file(tmp_path):
    folder = tmp_path / "fleet"
    proc = subprocess.Popen([sys.executable, "-m", "pnndeploy", "fleet", "make", "--count", "3000", "--out",
                             str(folder), "--process", str(REPO_ROOT / "device_profiles" / "process.yaml")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(folder.glob("*.h5"))) < 5:
            time.sleep(0.05)
        time.sleep(random.uniform(0.0, 0.2))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (proc.returncode, err)
    assert "Traceback" not in err and err.strip().splitlines() == [
        "pnndeploy: terminated; no partial output files were left"]
    names = sorted(p.name for p in folder.iterdir())
    assert names and not [n for n in names if not n.endswith(".h5") or n.startswith(".")], names
    for path in folder.iterdir():
        assert validate_profile(path) == [], path


def test_concurrent_transfers_to_different_devices(tmp_path, model_path, tiny_fleet_dir):
    shutil.copyfile(model_path, tmp_path / "M.onnx")
    procs = [subprocess.Popen([sys.executable, "-m", "pnndeploy", "transfer", "--model", "M.onnx", "--device",
                               device, "--profiles", str(tiny_fleet_dir), "--json"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for device in ("chipA", "chipB")]
    results = [proc.communicate(timeout=180) for proc in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    model = load_model(tmp_path / "M.onnx")
    for device, (out, _) in zip(("chipA", "chipB"), results):
        doc = json.loads(out)
        path = tmp_path / doc["devices"][0]["deployment"]
        assert path == tmp_path / "deployments" / f"M@{device}.h5"
        deployment = read_deployment(path)
        assert deployment.device_id == device and deployment.model_sha256 == model.sha256
        assert [layer.settings.shape for layer in deployment.layers] == [(8, 64), (10, 8)]
    assert sorted(p.name for p in (tmp_path / "deployments").iterdir()) == ["M@chipA.h5", "M@chipB.h5"]


# ================================================================================================ Fuzzing
#
# The HDF5 C library itself is not hardened against arbitrary damage to a file's internal structure (its
# B-trees and heaps): random bytes flipped there can crash or hang it inside h5py, below anything Python can
# catch.  The fuzzing below therefore damages profiles the ways that happen in practice and that pnndeploy
# can answer: edited attributes and datasets, truncation, appended junk, damaged array values (refused by
# their Fletcher-32 checksums), and files that are not HDF5 at all.

def utf8_text(max_size: int):
    """Text that can be written as UTF-8 (lone surrogates replaced), for any hypothesis 6 release."""
    return st.text(max_size=max_size).map(lambda t: t.encode("utf-8", "replace").decode("utf-8"))


PROFILE_PATHS = ["layout", "calibration", "fabrication", "environment", "calibration/resonance_offset",
                 "calibration/gamma", "calibration/a", "fabrication/resonance_offset", "fabrication/gamma",
                 "fabrication/a", "environment/drift_coefficient", "environment/crosstalk",
                 "environment/detector_noise", "environment/dac_bits", "environment/heater_range",
                 "environment/ageing_rate"]
ROOT_ATTRS = ["schema_version", "device_id", "platform", "process", "created", "simulated"]

scalars = st.one_of(
    st.integers(min_value=-2**63, max_value=2**63 - 1), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.booleans(), st.binary(max_size=12),
    st.sampled_from([0, 1, 2, -1, 0.0, 1.0, 1e308, -1e308, 5e-324, "mrr", "chipA", "nm", "1",
                     "2026-11-01T09:00:00+00:00", "../x"]))
def _array(shape, dtype, fill, value) -> np.ndarray:
    if dtype == "S4":
        return np.full(shape, b"ab", dtype="S4")
    with np.errstate(invalid="ignore", over="ignore"):
        return np.full(shape, value if fill else 0).astype(dtype)


arrays = st.builds(
    _array,
    st.sampled_from([(), (2,), (16, 16), (16, 15), (0, 16), (3, 3, 3)]),
    st.sampled_from(["f8", "f4", "i8", "u1", "?", "S4"]),
    st.booleans(), st.sampled_from([0.0, 0.15, 1.0, -1.0, 1.5, np.nan, np.inf, 1e300]))

profile_edits = st.one_of(
    st.tuples(st.just("root_attr"), st.sampled_from(ROOT_ATTRS + ["extra"]), scalars),
    st.tuples(st.just("del_root_attr"), st.sampled_from(ROOT_ATTRS)),
    st.tuples(st.just("delete"), st.sampled_from(PROFILE_PATHS)),
    st.tuples(st.just("replace"), st.sampled_from(PROFILE_PATHS[4:]), arrays, st.booleans()),
    st.tuples(st.just("value"), st.sampled_from(PROFILE_PATHS[4:]), st.integers(0, 255),
              st.floats(allow_nan=True, allow_infinity=True)),
    st.tuples(st.just("units"), st.sampled_from(PROFILE_PATHS[4:]), st.one_of(st.none(), scalars)),
    st.tuples(st.just("layout"), st.sampled_from(["rows", "cols"]), scalars),
    st.tuples(st.just("group_attr"), st.sampled_from(["measured_at", "temperature_C"]), scalars),
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("flip_data"), st.sampled_from(PROFILE_PATHS[4:11]), st.integers(0, 10**6),
              st.integers(1, 255)),
)


def _apply_profile_edit(path: Path, edit: tuple) -> None:
    kind = edit[0]
    if kind == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * edit[1])])
        return
    if kind == "append":
        with open(path, "ab") as fh:
            fh.write(edit[1])
        return
    if kind == "flip_data":   # damage stored array values (not HDF5's own structures)
        try:
            with h5py.File(path, "r") as f:
                if edit[1] not in f or not isinstance(f[edit[1]], h5py.Dataset):
                    return
                dsid = f[edit[1]].id
                layout = dsid.get_create_plist().get_layout()
                if layout == h5py.h5d.CONTIGUOUS and dsid.get_offset() is not None:
                    start, size = dsid.get_offset(), dsid.get_storage_size()
                elif layout == h5py.h5d.CHUNKED and dsid.get_num_chunks():
                    info = dsid.get_chunk_info(0)
                    start, size = info.byte_offset, info.size
                else:
                    return
        except (OSError, RuntimeError, ValueError, KeyError):
            return  # already not an HDF5 file (truncated): nothing to flip
        if not size or start + size > path.stat().st_size:
            return
        with open(path, "r+b") as fh:
            fh.seek(start + edit[2] % size)
            byte = fh.read(1)
            fh.seek(start + edit[2] % size)
            fh.write(bytes([byte[0] ^ edit[3]]))
        return
    try:
        with h5py.File(path, "r+") as f:
            if kind == "root_attr":
                f.attrs[edit[1]] = edit[2]
            elif kind == "del_root_attr":
                if edit[1] in f.attrs:
                    del f.attrs[edit[1]]
            elif kind == "delete":
                if edit[1] in f:
                    del f[edit[1]]
            elif kind in ("replace", "value", "units"):
                if edit[1] not in f or not isinstance(f[edit[1]], h5py.Dataset):
                    return
                if kind == "units":
                    if edit[2] is not None:
                        f[edit[1]].attrs["units"] = edit[2]
                    elif "units" in f[edit[1]].attrs:
                        del f[edit[1]].attrs["units"]
                    return
                if kind == "replace":
                    data, keep_units = edit[2], edit[3]
                else:
                    data = np.array(f[edit[1]][()])
                    keep_units = True
                    if data.dtype.kind == "f" and data.size:
                        data.flat[edit[2] % data.size] = edit[3]
                units = f[edit[1]].attrs.get("units")
                del f[edit[1]]
                f[edit[1]] = data
                if keep_units and units is not None:
                    f[edit[1]].attrs["units"] = units
            elif kind == "layout":
                if "layout" in f:
                    f["layout"].attrs[edit[1]] = edit[2]
            elif kind == "group_attr":
                if "calibration" in f:
                    f["calibration"].attrs[edit[1]] = edit[2]
    except (TypeError, ValueError, OSError, KeyError):
        pass  # h5py cannot store this value: the file stays as it was


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory, shipped_process) -> Path:
    """A profile written by this pnndeploy's writer (checksummed arrays)."""
    from pnndeploy.formats.profiles import write_profile
    from pnndeploy.simulation.fabrication import generate_chip

    path = tmp_path_factory.mktemp("fuzz_base") / "chipA.h5"
    write_profile(generate_chip(shipped_process, "chipA", 0), path)
    return path


@FUZZ
@given(edits=st.lists(profile_edits, min_size=1, max_size=3), shipped=st.booleans())
def test_fuzz_profiles_readers(tmp_path, fuzz_base, model_path, edits, shipped):
    path = tmp_path / "fuzz" / "chipA.h5"
    path.parent.mkdir(exist_ok=True)
    shipped_file = REPO_ROOT / "device_profiles" / "chipA.h5"
    shutil.copyfile(shipped_file if shipped and not any(e[0] == "flip_data" for e in edits) else fuzz_base, path)
    for edit in edits:
        _apply_profile_edit(path, edit)
    problems = validate_profile(path)
    assert isinstance(problems, list) and all(isinstance(p, str) and "\n" not in p for p in problems)
    try:
        profile = read_profile(path)
    except ProfileError as exc:
        assert problems and "\n" not in str(exc)
        return
    assert problems == []
    # a profile that validates must be usable: mapping it gives finite settings or a clean error
    from pnndeploy.deploy.mapping import map_model
    try:
        deployment = map_model(load_model(model_path), profile)
    except PnnError:
        return
    assert all(np.all(np.isfinite(layer.settings)) for layer in deployment.layers)


@FUZZ_CLI
@given(edits=st.lists(profile_edits, min_size=1, max_size=2))
def test_fuzz_profiles_cli(cli, tmp_path, fuzz_base, edits):
    folder = tmp_path / "fuzzcli"
    folder.mkdir(exist_ok=True)
    shutil.copyfile(fuzz_base, folder / "chipA.h5")
    for edit in edits:
        _apply_profile_edit(folder / "chipA.h5", edit)
    assert_clean_exit(cli("profile", "validate", folder / "chipA.h5"))
    assert_clean_exit(cli("profile", "show", "chipA", "--profiles", folder))
    assert_clean_exit(cli("fleet", "list", "--profiles", folder))


META_KEYS = ["format_version", "platform", "platform_params", "method", "rho", "dataset", "input_scaling",
             "onchip", "controls", "layers", "metrics", "version", "seed"]
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
              utf8_text(8)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.sampled_from(["name", "in", "out", "offset", "scale",
                                                                "values", "shape", "clip"]), children,
                                               max_size=3)),
    max_leaves=8)
model_edits = st.one_of(
    st.tuples(st.just("meta_json"), st.sampled_from(META_KEYS), json_values),
    st.tuples(st.just("meta_text"), st.sampled_from(META_KEYS), utf8_text(20)),
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("initializer"), st.sampled_from(["layer0.weight", "layer0.gain", "layer1.bias",
                                                       "input_scale"]),
              st.sampled_from([(), (0,), (3,), (8, 64), (64, 8), (10, 8), (8, 64, 1)]),
              st.sampled_from(["float32", "float64", "int64", "float16"]),
              st.sampled_from([0.0, 1.0, -1.0, np.nan, np.inf, 1e30])),
)


def _apply_model_edit(data: bytes, edit: tuple) -> bytes:
    kind = edit[0]
    if kind == "truncate":
        return data[:int(len(data) * edit[1])]
    if kind == "flip":
        if not data:
            return data
        b = bytearray(data)
        b[edit[1] % len(b)] ^= edit[2]
        return bytes(b)
    try:
        proto = onnx.load_from_string(data)
    except Exception:  # noqa: BLE001 - already damaged beyond protobuf: leave it
        return data
    if kind in ("meta_json", "meta_text"):
        value = json.dumps(edit[2]) if kind == "meta_json" else edit[2]
        set_meta(edit[1], value)(proto)
    else:
        name, shape, dtype, fill = edit[1:]
        if any(t.name == name for t in proto.graph.initializer):
            with np.errstate(invalid="ignore", over="ignore"):
                array = np.full(shape, fill).astype(dtype)
            initializer(proto, name).CopyFrom(numpy_helper.from_array(array, name))
    return proto.SerializeToString()


@FUZZ
@given(edits=st.lists(model_edits, min_size=1, max_size=3))
def test_fuzz_model_reader(tmp_path, model_path, edits):
    data = model_path.read_bytes()
    for edit in edits:
        data = _apply_model_edit(data, edit)
    path = tmp_path / "fuzz.onnx"
    path.write_bytes(data)
    try:
        model = load_model(path)
    except PnnError as exc:
        assert "\n" not in str(exc) and "fuzz.onnx" in str(exc)
        return
    assert all(np.all(np.isfinite(layer.weight)) and np.all(np.isfinite(layer.gain)) for layer in model.layers)


idx_headers = st.builds(
    lambda zeros, code, ndim, dims, body_delta, body_seed, gz: (zeros, code, ndim, dims, body_delta, body_seed, gz),
    st.sampled_from([b"\x00\x00", b"\x00\x01", b"\x1f\x8b", b"\xff\xff"]),
    st.one_of(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]), st.integers(0, 255)),
    st.integers(0, 6),
    st.lists(st.one_of(st.integers(0, 12), st.integers(0, 2**32 - 1)), min_size=0, max_size=6),
    st.integers(-8, 8), st.integers(0, 2**16), st.booleans())


def _idx_file(spec) -> bytes:
    zeros, code, ndim, dims, body_delta, body_seed, gz = spec
    header = zeros + bytes([code, ndim]) + b"".join(struct.pack(">I", d) for d in dims[:ndim])
    itemsize = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}.get(code, 1)
    n = int(np.prod(dims[:ndim], dtype=np.float64)) * itemsize if ndim else 0
    n = max(0, min(n, 4096) + body_delta)
    body = np.random.default_rng(body_seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    raw = header + body
    return gzip.compress(raw) if gz else raw


@FUZZ
@given(spec=idx_headers, noise=st.binary(max_size=64), use_noise=st.booleans())
def test_fuzz_idx_reader(tmp_path, spec, noise, use_noise):
    path = tmp_path / "fuzz.idx"
    path.write_bytes(noise if use_noise else _idx_file(spec))
    try:
        array = load_idx(path)
    except DatasetError as exc:
        assert "\n" not in str(exc) and "fuzz.idx" in str(exc)
        return
    assert isinstance(array, np.ndarray)


@FUZZ_CLI
@given(spec=idx_headers)
def test_fuzz_idx_cli(cli, tmp_path, model_path, tiny_fleet_dir, spec):
    folder = _mnist_folder(tmp_path / "mn")
    (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx_file(spec))
    assert_clean_exit(cli(*transfer_args(model_path, "chipA", tiny_fleet_dir, "--dataset", f"mnist:{folder}")))


TRAIN_KEYS = ["method", "hidden", "epochs", "batch_size", "lr", "seed", "rho", "adaptive", "noise", "perturb",
              "drift_budget", "dataset", "out", "epoch", "platform", "sat_every"]
yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
              utf8_text(10)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(utf8_text(6), children,
                                               max_size=3)),
    max_leaves=6)
yaml_snippets = st.sampled_from([
    "!!python/object/apply:os.mkdir ['pwned']", "!!python/name:builtins.eval", "&a [*a]", "*undefined",
    "!!binary AAAA", "!!int x", "!!float y", "!!timestamp z", "2026-13-45", "{[1]: 2}", ": :", "- - -", "'",
    '"\\x"', "\t", "%YAML 1.1", "---", "...", "!!set {a, b}", "!!omap [1]", "<<: *x", "? [1, 2]", "0x1G", "~",
])


@st.composite
def yaml_texts(draw):
    kind = draw(st.sampled_from(["structured", "snippet", "noise"]))
    if kind == "noise":
        return draw(utf8_text(80))
    import yaml

    doc = draw(st.dictionaries(st.sampled_from(TRAIN_KEYS), yaml_values, max_size=4))
    text = yaml.safe_dump(doc)
    if kind == "snippet":
        lines = text.splitlines() or [""]
        at = draw(st.integers(0, len(lines)))
        key = draw(st.sampled_from(TRAIN_KEYS))
        lines.insert(at, f"{key}: {draw(yaml_snippets)}")
        text = "\n".join(lines) + "\n"
    return text


@FUZZ
@given(text=yaml_texts())
def test_fuzz_yaml_readers(tmp_path, text):
    from pnndeploy.formats.process_spec import load_process
    from pnndeploy.training.config import load_config

    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    for reader in (load_config, load_process):
        try:
            result = reader(path)
        except ConfigError as exc:
            assert "\n" not in str(exc) and "fuzz.yaml" in str(exc)
            continue
        assert isinstance(result, dict)


@FUZZ_CLI
@given(text=yaml_texts())
def test_fuzz_yaml_cli(cli, tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    # --epochs 0 makes a config that happens to be valid fail validation: nothing ever trains here
    result = cli("train", "--config", path, "--epochs", "0", "--out", tmp_path / "never.onnx")
    assert_clean_exit(result)
    assert result.exit_code == 2 and not (tmp_path / "never.onnx").exists()
    assert_clean_exit(cli("fleet", "make", "--process", path, "--count", "1", "--out", tmp_path / "fz"))
    assert not (tmp_path / "pwned").exists()

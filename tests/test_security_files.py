"""Hostile files: every reader of a file someone else may have made, attacked as issue 25 describes.

Each case runs the real command line (click's runner in-process, or a subprocess where time and memory
are measured or a process must be signalled) and checks one line ``pnndeploy: error: ...`` naming what
is wrong, where and how to fix it, the documented exit status, no traceback and nothing half-written.
The bombs run in a subprocess that reports its peak RSS growth (``resource.getrusage``) and time, each
held to under 10 s and 300 MB.  Anything that could block (a FIFO) runs with a timeout.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest

from pnndeploy.errors import PnnError, ProfileError
from pnndeploy.formats.deployments import read_deployment
from pnndeploy.formats.hdf5 import MAX_LINKS, structure_problems
from pnndeploy.formats.profile_folder import check_device_name
from pnndeploy.formats.profile_schema import validate_profile

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "device_profiles"
#: Per case: wall time of the command itself and growth of its peak RSS.
MAX_SECONDS = 10.0
MAX_GROWTH = 300 * 2**20

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX only (FIFOs, signals)")


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Run from a temporary folder, so default outputs never land in the repo."""
    monkeypatch.chdir(tmp_path)


# ------------------------------------------------------------------------------------------------ helpers

#: Runs `pnndeploy ARGS` after importing what the command needs, then writes its own time and peak RSS
#: growth (bytes) as JSON to $PNN_MEASURE: the cost of the attack, not of Python's imports.
MEASURED = r"""
import atexit, importlib, json, os, resource, sys, time
for name in filter(None, os.environ.get("PNN_PRELOAD", "").split(",")):
    importlib.import_module(name)
from pnndeploy.cli import main
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
def report():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(os.environ["PNN_MEASURE"], "w") as fh:
        json.dump({"seconds": time.perf_counter() - start, "growth": (peak - base) * 1024}, fh)
atexit.register(report)
main(sys.argv[1:], prog_name="pnndeploy")
"""


def measured(tmp_path: Path, *args: str, preload: str = "h5py,onnx,yaml,numpy", timeout: float = 60):
    """Run the CLI in a subprocess; returns (returncode, stderr, {"seconds", "growth"})."""
    out = tmp_path / "measure.json"
    env = {**os.environ, "PNN_MEASURE": str(out), "PNN_PRELOAD": preload}
    proc = subprocess.run([sys.executable, "-c", MEASURED, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=tmp_path)
    figures = json.loads(out.read_text())
    print(f"{args[0]} {args[1] if len(args) > 1 else ''}: {figures['seconds']:.2f} s, "
          f"{figures['growth'] / 2**20:.1f} MiB growth")
    return proc.returncode, proc.stderr, figures


def assert_one_line(returncode: int, stderr: str, *fragments: str, status: int = 2) -> str:
    assert returncode == status, (returncode, stderr)
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("pnndeploy: error:"), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def assert_bounded(figures: dict) -> None:
    assert figures["seconds"] < MAX_SECONDS, figures
    assert figures["growth"] < MAX_GROWTH, figures


def hostile_profile(tmp_path: Path, edit, name: str = "chipA") -> Path:
    """A copy of the shipped chipA in tmp_path/profiles/NAME.h5, edited by ``edit(h5py.File)``."""
    folder = tmp_path / "profiles"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.h5"
    shutil.copyfile(SHIPPED / "chipA.h5", path)
    with h5py.File(path, "r+") as f:
        if name != "chipA":
            f.attrs["device_id"] = name
        edit(f)
    return path


def replace_dataset(f: h5py.File, where: str, **create) -> h5py.Dataset:
    units = f[where].attrs["units"]
    group, name = where.rsplit("/", 1)
    del f[where]
    ds = f[group].create_dataset(name, **create)
    ds.attrs["units"] = units
    return ds


def no_temporaries(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*.tmp")]


# ============================================================================================ HDF5 profiles


def test_fill_value_bomb_is_refused_by_its_declared_shape(tmp_path):
    """A 3 KiB file declaring 320 GB of calibration: refused from the declaration, nothing read."""
    hostile_profile(tmp_path, lambda f: replace_dataset(f, "calibration/gamma", shape=(200_000, 200_000),
                                                        dtype="f8", chunks=(1000, 1000)))
    code, err, figures = measured(tmp_path, "profile", "show", "chipA", "--profiles", "profiles")
    assert_one_line(code, err, "profiles/chipA.h5", "calibration/gamma", "declares shape (200000, 200000)",
                    "64 MiB")
    assert_bounded(figures)


def test_fill_value_bomb_matching_a_huge_layout_is_refused(tmp_path):
    """The layout itself declares 50000x50000 rings and every field matches it: the size caps still hold."""
    def edit(f):
        f["layout"].attrs["rows"] = np.int64(50_000)
        f["layout"].attrs["cols"] = np.int64(50_000)
        for section in ("calibration", "fabrication"):
            for field in ("a", "gamma", "resonance_offset"):
                replace_dataset(f, f"{section}/{field}", shape=(50_000, 50_000), dtype="f8", chunks=(500, 500))
        replace_dataset(f, "environment/drift_coefficient", shape=(50_000, 50_000), dtype="f8", chunks=(500, 500))

    path = hostile_profile(tmp_path, edit)
    code, err, figures = measured(tmp_path, "profile", "validate", path)
    assert_one_line(code, err, "declares shape (50000, 50000)")
    assert_bounded(figures)


def test_declared_shape_other_than_the_schema_is_never_read(tmp_path, monkeypatch):
    """A mismatch under the caps is reported from the shape alone: the values are never read."""
    path = hostile_profile(tmp_path, lambda f: replace_dataset(f, "calibration/gamma", shape=(2000, 2000),
                                                               dtype="f8", chunks=(2000, 2000)))
    read = []
    real = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda ds, key: read.append(ds.name) or real(ds, key))
    problems = validate_profile(path)
    assert any("has shape (2000, 2000), expected (16, 16)" in p for p in problems), problems
    assert read and "/calibration/gamma" not in read


@pytest.fixture
def secret(tmp_path) -> Path:
    """A local file an attacker would like read: 256 float64 values, a plausible gamma."""
    path = tmp_path / "secret.bin"
    path.write_bytes(np.full(256, 0.15).tobytes())
    return path


def test_external_storage_pointing_at_a_local_file_is_refused(tmp_path, secret, cli, one_line_error):
    def edit(f):
        replace_dataset(f, "calibration/gamma", shape=(16, 16), dtype="f8", external=[(str(secret), 0, 2048)])

    path = hostile_profile(tmp_path, edit)
    line = one_line_error(cli("profile", "validate", path), "calibration/gamma", "another file", "secret.bin",
                          "never reads a file")
    assert "valid" not in line.split("error:")[0]
    from test_errors import write_synthetic_model

    model = write_synthetic_model(tmp_path / "M.onnx")
    one_line_error(cli("transfer", "--model", model, "--device", "chipA", "--profiles", path.parent, "--no-save"),
                   "calibration/gamma", "another file")


def test_external_storage_pointing_at_a_fifo_does_not_block(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    hostile_profile(tmp_path, lambda f: replace_dataset(f, "calibration/gamma", shape=(16, 16), dtype="f8",
                                                        external=[(str(fifo), 0, 2048)]))
    start = time.monotonic()
    code, err, figures = measured(tmp_path, "profile", "show", "chipA", "--profiles", "profiles", timeout=20)
    assert time.monotonic() - start < 20
    assert_one_line(code, err, "calibration/gamma", "another file", "pipe")
    assert_bounded(figures)


def test_external_link_is_not_followed(tmp_path, cli, one_line_error):
    other = hostile_profile(tmp_path, lambda f: None, name="chipB")
    path = hostile_profile(tmp_path, lambda f: None, name="chipC")
    with h5py.File(path, "r+") as f:
        del f["calibration"]
        f["calibration"] = h5py.ExternalLink(str(other), "/calibration")
    one_line_error(cli("profile", "show", "chipC", "--profiles", path.parent), "'calibration' is an external link",
                   "chipB.h5", "never follows a link out of the file")


def test_soft_link_is_refused(tmp_path, cli, one_line_error):
    def edit(f):
        del f["calibration/gamma"]
        f["calibration/gamma"] = h5py.SoftLink("/fabrication/gamma")      # the truth passed off as measured

    path = hostile_profile(tmp_path, edit)
    one_line_error(cli("profile", "validate", path), "'calibration/gamma' is a soft link", "without links")


def test_virtual_dataset_is_refused(tmp_path, secret, cli, one_line_error):
    def edit(f):
        layout = h5py.VirtualLayout(shape=(16, 16), dtype="f8")
        layout[:] = h5py.VirtualSource(str(tmp_path / "source.h5"), "data", shape=(16, 16))
        units = f["calibration/gamma"].attrs["units"]
        del f["calibration/gamma"]
        f["calibration"].create_virtual_dataset("gamma", layout).attrs["units"] = units

    with h5py.File(tmp_path / "source.h5", "w") as src:
        src["data"] = np.full((16, 16), 0.15)
    path = hostile_profile(tmp_path, edit)
    one_line_error(cli("profile", "validate", path), "'calibration/gamma' is a virtual dataset", "other files")


def test_compressed_dataset_is_refused_unread(tmp_path, cli, one_line_error):
    """gzip inflates without bound inside HDF5 (and an unknown filter loads a plugin): only Fletcher-32 is read."""
    path = hostile_profile(tmp_path, lambda f: replace_dataset(f, "calibration/gamma", data=np.full((16, 16), 0.15),
                                                               compression="gzip"))
    one_line_error(cli("profile", "validate", path), "'calibration/gamma' is stored through the filter",
                   "deflate", "h5repack -f NONE")


@pytest.mark.parametrize("kind", ["long text", "large array", "many attributes"])
def test_oversized_attributes_are_refused(tmp_path, kind):
    def edit(f):
        if kind == "long text":
            f.attrs["process"] = "x" * 5_000_000
        elif kind == "large array":
            f["calibration"].attrs["notes"] = np.zeros(2_000_000)
        else:
            for k in range(300):
                f["layout"].attrs[f"a{k}"] = k

    path = hostile_profile(tmp_path, edit)
    code, err, figures = measured(tmp_path, "profile", "validate", path)
    expected = {"long text": "attribute 'process' of '/' holds 4.768 MiB", "large array":
                "attribute 'notes' of 'calibration' holds 15.26 MiB", "many attributes": "'layout' has 302 attributes"}
    assert_one_line(code, err, expected[kind])
    assert_bounded(figures)


def test_many_links_and_link_cycles_cost_bounded_time(tmp_path, cli, one_line_error):
    def edit(f):
        junk = f.create_group("junk")
        junk["loop"] = junk                       # a hard-link cycle: visited once
        for k in range(MAX_LINKS + 10):
            junk[f"g{k}"] = f["layout"]

    path = hostile_profile(tmp_path, edit)
    start = time.monotonic()
    one_line_error(cli("profile", "validate", path), f"more than {MAX_LINKS} links")
    assert time.monotonic() - start < MAX_SECONDS


def test_a_hard_link_cycle_alone_is_harmless(tmp_path):
    def edit(f):
        f["calibration"]["loop"] = f["calibration"]

    assert validate_profile(hostile_profile(tmp_path, edit)) == []


def test_shipped_profiles_pass_the_structure_check():
    paths = sorted(SHIPPED.rglob("*.h5"))
    assert len(paths) >= 24
    for path in paths:
        with h5py.File(path, "r") as f:
            assert structure_problems(f) == [], path


# ---------------------------------------------------------------------------------- special files, links


def test_profile_path_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "chip.h5"
    os.mkfifo(fifo)
    code, err, figures = measured(tmp_path, "profile", "validate", fifo, timeout=20)
    assert_one_line(code, err, "chip.h5", "is a FIFO (named pipe), not a regular file")
    assert_bounded(figures)


@pytest.mark.parametrize("command", ["show", "list"])
def test_fifo_in_a_profiles_folder_is_never_opened(tmp_path, command):
    folder = tmp_path / "profiles"
    folder.mkdir()
    shutil.copyfile(SHIPPED / "chipA.h5", folder / "chipA.h5")
    os.mkfifo(folder / "chipF.h5")
    args = ["profile", "show", "chipF"] if command == "show" else ["fleet", "list", "--json"]
    proc = subprocess.run([sys.executable, "-m", "pnndeploy", *args, "--profiles", str(folder)],
                          capture_output=True, text=True, timeout=30)
    if command == "show":
        assert_one_line(proc.returncode, proc.stderr, "no profile for device 'chipF'")
    else:
        assert proc.returncode == 0, proc.stderr
        assert [d["device_id"] for d in json.loads(proc.stdout)["devices"]] == ["chipA"]


def test_symlink_out_of_the_profiles_folder_is_refused(tmp_path, cli, one_line_error):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copyfile(SHIPPED / "chipB.h5", elsewhere / "chipB.h5")
    folder = tmp_path / "profiles"
    folder.mkdir()
    shutil.copyfile(SHIPPED / "chipA.h5", folder / "chipA.h5")
    (folder / "chipB.h5").symlink_to(elsewhere / "chipB.h5")
    one_line_error(cli("profile", "show", "chipB", "--profiles", folder), "symbolic link",
                   "outside the profiles folder", "copy the file into it")
    one_line_error(cli("fleet", "list", "--profiles", folder), "profiles/chipB.h5 is a symbolic link")
    from test_errors import write_synthetic_model

    model = write_synthetic_model(tmp_path / "M.onnx")
    one_line_error(cli("transfer", "--model", model, "--fleet", "--profiles", folder, "--no-save"),
                   "outside the profiles folder")
    # a link inside the folder, and a linked folder, are fine
    (folder / "chipB.h5").unlink()
    (folder / "chipB.h5").symlink_to("chipA.h5")
    assert cli("profile", "show", "chipB", "--profiles", folder).exit_code == 0
    (tmp_path / "linked").symlink_to(elsewhere)
    assert cli("profile", "show", "chipB", "--profiles", tmp_path / "linked").exit_code == 0


def test_symlink_to_a_device_is_never_opened(tmp_path, cli, one_line_error):
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "chipZ.h5").symlink_to("/dev/zero")
    start = time.monotonic()
    one_line_error(cli("profile", "validate", folder / "chipZ.h5"), "is a character device, not a regular file")
    one_line_error(cli("profile", "show", "chipZ", "--profiles", folder), "no profile for device 'chipZ'")
    assert time.monotonic() - start < MAX_SECONDS


# ============================================================================================= deployments


def _deployment(tmp_path: Path) -> Path:
    """A real deployment file (the tiny synthetic model mapped onto the shipped chipA)."""
    from test_errors import write_synthetic_model

    from pnndeploy.deploy.mapping import map_model
    from pnndeploy.formats.deployments import write_deployment
    from pnndeploy.formats.onnx_io import load_model
    from pnndeploy.formats.profiles import read_profile

    model = load_model(write_synthetic_model(tmp_path / "M.onnx"))
    return write_deployment(map_model(model, read_profile(SHIPPED / "chipA.h5")), tmp_path / "M@chipA.h5")


def test_deployment_with_external_storage_or_a_bomb_is_refused(tmp_path, secret):
    path = _deployment(tmp_path)
    assert read_deployment(path).layers
    with h5py.File(path, "r+") as f:
        attrs = dict(f["settings/layer0"].attrs)
        del f["settings/layer0"]
        ds = f["settings"].create_dataset("layer0", shape=(8, 64), dtype="f8",
                                          external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
        ds.attrs.update(attrs)
    with pytest.raises(PnnError, match="another file .*secret.bin.*pnndeploy transfer"):
        read_deployment(path)
    with h5py.File(path, "r+") as f:
        del f["settings/layer0"]
        ds = f["settings"].create_dataset("layer0", shape=(100_000, 100_000), dtype="f8", chunks=(1000, 1000))
        ds.attrs.update(attrs)
    with pytest.raises(PnnError, match=r"declares shape \(100000, 100000\)"):
        read_deployment(path)


def test_deployment_path_that_is_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "M@chipA.h5")
    with pytest.raises(PnnError, match="FIFO"):
        read_deployment(tmp_path / "M@chipA.h5")


# ==================================================================================================== YAML


def alias_bomb(levels: int = 9, fanout: int = 9) -> str:
    """A few hundred bytes of nested aliases: fanout**levels scalars once expanded (387 M here)."""
    lines = [f"- &a0 [{', '.join(['lol'] * fanout)}]"]
    lines += [f"- &a{k} [{', '.join([f'*a{k - 1}'] * fanout)}]" for k in range(1, levels)]
    return "\n".join(lines) + "\n"


def _yaml_cases(tmp_path: Path, body: str) -> dict[str, list[str]]:
    """The three commands that read user YAML, each given ``body`` where a value is expected."""
    (tmp_path / "train.yaml").write_text(f"epochs:\n{_indent(body)}")
    (tmp_path / "process.yaml").write_text(f"schema_version: 1\nname:\n{_indent(body)}")
    (tmp_path / "grid.yaml").write_text(f"seeds:\n{_indent(body)}")
    return {"train": ["train", "--config", "train.yaml", "--epochs", "1"],
            "fleet make": ["fleet", "make", "--process", "process.yaml", "--out", "fleet"],
            "sweep": ["sweep", "grid.yaml", "--out", "sweeps"]}


def _indent(body: str) -> str:
    return "".join(f"  {line}\n" for line in body.splitlines())


COMMANDS = ["train", "fleet make", "sweep"]


@pytest.mark.parametrize("command", COMMANDS)
def test_yaml_alias_bomb_is_refused_before_expansion(tmp_path, command):
    args = _yaml_cases(tmp_path, alias_bomb())[command]
    assert max(p.stat().st_size for p in tmp_path.glob("*.yaml")) < 1000
    code, err, figures = measured(tmp_path, *args, preload="h5py,onnx,yaml,numpy,torch")
    assert_one_line(code, err, "expands to more than 100000 values", "alias bomb", "line ")
    assert len(err) < 400
    assert_bounded(figures)
    assert not (tmp_path / "fleet").exists() and not (tmp_path / "sweeps").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_yaml_deep_nesting_is_refused(tmp_path, command):
    args = _yaml_cases(tmp_path, "[" * 50_000 + "]" * 50_000)[command]
    code, err, figures = measured(tmp_path, *args, preload="h5py,onnx,yaml,numpy,torch")
    assert_one_line(code, err, "nested more than 32 levels deep")
    assert_bounded(figures)


@pytest.mark.parametrize("command", COMMANDS)
def test_yaml_recursive_alias_and_long_values_give_short_messages(tmp_path, cli, one_line_error, command):
    args = _yaml_cases(tmp_path, "&a [1, *a]")[command]
    one_line_error(cli(*args), "refers to a collection that contains it")
    args = _yaml_cases(tmp_path, "[" + ", ".join(["x" * 1000] * 900) + "]")[command]    # 900 kB, legal YAML
    line = one_line_error(cli(*args))
    assert len(line) < (2100 if command == "train" else 400), len(line)


def test_yaml_file_that_is_a_fifo_or_too_large_is_refused(tmp_path, cli, one_line_error):
    os.mkfifo(tmp_path / "pipe.yaml")
    proc = subprocess.run([sys.executable, "-m", "pnndeploy", "fleet", "make", "--process", "pipe.yaml", "--out",
                           "fleet"], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert_one_line(proc.returncode, proc.stderr, "pipe.yaml", "is a FIFO (named pipe), not a regular file")
    (tmp_path / "big.yaml").write_text("epochs: 1\n" + "# padding\n" * 120_000)
    one_line_error(cli("train", "--config", "big.yaml"), "big.yaml", "more than the 1 MiB")


def test_shipped_yaml_still_loads(monkeypatch):
    from pnndeploy.experiments.sweep import load_sweep

    monkeypatch.chdir(REPO)           # the example grid names its fleets relative to the checkout
    from pnndeploy.formats.process_spec import load_process

    for path in [*SHIPPED.rglob("process.yaml"), *(REPO / "pnndeploy" / "platforms" / "processes").glob("*.yaml")]:
        assert load_process(path)["schema_version"] == 1, path
    assert load_sweep(REPO / "examples" / "sweep.yaml").cells()


def test_yaml_aliases_within_the_limits_still_work(tmp_path):
    from pnndeploy.formats.yamlio import load_yaml

    text = "base: &b {epochs: 3, hidden: [8, 8]}\nrun: *b\nmerged: {<<: *b, epochs: 5}\n"
    assert load_yaml(text, "t") == {"base": {"epochs": 3, "hidden": [8, 8]}, "run": {"epochs": 3, "hidden": [8, 8]},
                                    "merged": {"epochs": 5, "hidden": [8, 8]}}


# ==================================================================================================== ONNX


def _deep_metadata_model(tmp_path: Path, model_path: Path, key: str, depth: int) -> Path:
    proto = onnx.load_from_string(model_path.read_bytes())
    value = "{\"a\": " + "[" * depth + "]" * depth + "}"
    for prop in proto.metadata_props:
        if prop.key == key:
            prop.value = value
            break
    else:
        proto.metadata_props.add(key=key, value=value)
    out = tmp_path / f"deep{depth}.onnx"
    out.write_bytes(proto.SerializeToString())
    return out


@pytest.fixture
def model_path(tmp_path) -> Path:
    from test_errors import write_synthetic_model

    return write_synthetic_model(tmp_path / "model.onnx")


@pytest.mark.parametrize("depth", [33, 985, 100_000])
@pytest.mark.parametrize("key", ["pnndeploy.metrics", "pnndeploy.extra"])
def test_onnx_metadata_nested_deep_is_refused_by_inspect_json(tmp_path, model_path, cli, one_line_error, key, depth):
    path = _deep_metadata_model(tmp_path, model_path, key, depth)
    one_line_error(cli("inspect", "--json", path), path.name, f"metadata {key}", "nested more than 32 levels deep",
                   "re-export")
    one_line_error(cli("inspect", path), "nested more than 32 levels deep")


def test_onnx_metadata_within_the_depth_still_loads(tmp_path, model_path, cli):
    path = _deep_metadata_model(tmp_path, model_path, "pnndeploy.extra", 20)
    result = cli("inspect", "--json", path)
    assert result.exit_code == 0, result.output


def test_terminal_escapes_in_printed_text_are_refused(tmp_path, model_path, cli, one_line_error):
    """Text that `profile show` / `inspect` would print must not drive the terminal (issue 25's log injection)."""
    escape = "gen\x1b]0;owned\x07\x1b[2J"
    hostile_profile(tmp_path, lambda f: f.attrs.__setitem__("process", escape))
    line = one_line_error(cli("profile", "show", "chipA", "--profiles", "profiles"), "'process'", "control characters")
    assert "\x1b" not in line
    proto = onnx.load_from_string(model_path.read_bytes())
    for prop in proto.metadata_props:
        if prop.key == "pnndeploy.metrics":
            prop.value = json.dumps({"test_accuracy": 0.1, "note": escape})
    (tmp_path / "esc.onnx").write_bytes(proto.SerializeToString())
    line = one_line_error(cli("inspect", "esc.onnx"), "pnndeploy.metrics", "control characters")
    assert "\x1b" not in line
    spec = re.sub(r"(?m)^name: (\S+)", r'name: "\\e[31m\1"', (SHIPPED / "process.yaml").read_text())
    assert 'name: "\\e[31m' in spec
    (tmp_path / "p.yaml").write_text(spec)
    line = one_line_error(cli("fleet", "make", "--process", "p.yaml", "--out", "fleet"), "key 'name'", "plain text")
    assert "\x1b" not in line and not (tmp_path / "fleet").exists()


def test_model_path_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "m.onnx")
    proc = subprocess.run([sys.executable, "-m", "pnndeploy", "inspect", "m.onnx"], capture_output=True, text=True,
                          timeout=30, cwd=tmp_path)
    assert_one_line(proc.returncode, proc.stderr, "m.onnx", "is a FIFO (named pipe)")


def test_a_deep_or_huge_resumed_sweep_cell_is_recomputed_not_trusted(tmp_path):
    from pnndeploy.experiments.sweep import _load_cell

    for key, text in (("deep", "{\"key\": \"deep\", \"x\": " + "[" * 990 + "]" * 990 + "}"),
                      ("nan", "{\"key\": \"nan\", \"x\": NaN}"), ("good", "{\"key\": \"good\"}")):
        (tmp_path / "cells").mkdir(exist_ok=True)
        (tmp_path / "models").mkdir(exist_ok=True)
        (tmp_path / "cells" / f"{key}.json").write_text(text)
        (tmp_path / "models" / f"{key}.onnx").write_bytes(b"")
    assert _load_cell(tmp_path, "deep") is None and _load_cell(tmp_path, "nan") is None
    assert _load_cell(tmp_path, "good") == {"key": "good"}
    os.mkfifo(tmp_path / "cells" / "fifo.json")
    (tmp_path / "models" / "fifo.onnx").write_bytes(b"")
    assert _load_cell(tmp_path, "fifo") is None


# ============================================================================================= data files


def _idx_header(dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize("kind", ["declares 4 GiB", "inflates past its header"])
def test_gzip_idx_bomb_is_bounded(tmp_path, kind):
    folder = tmp_path / "mnist"
    folder.mkdir()
    if kind == "declares 4 GiB":
        payload = _idx_header((65536, 256, 256)) + bytes(1 << 20)
    else:
        payload = _idx_header((10, 28, 28)) + bytes(600 << 20)    # 600 MiB of zeros: 600 KiB of gzip
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb", compresslevel=9) as fh:
        for start in range(0, len(payload), 16 << 20):
            fh.write(payload[start:start + (16 << 20)])
    assert (folder / "train-images-idx3-ubyte.gz").stat().st_size < 1 << 20
    code, err, figures = measured(tmp_path, "train", "--dataset", "mnist:mnist", "--epochs", "1",
                                  preload="h5py,onnx,yaml,numpy,torch")
    expected = "more than the 1024 MiB" if kind == "declares 4 GiB" else "longer than its header says"
    assert_one_line(code, err, "train-images-idx3-ubyte.gz", expected)
    assert_bounded(figures)


def test_npz_zip_bomb_is_refused_from_its_directory(tmp_path):
    path = tmp_path / "bomb.npz"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.float32))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("X.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, {**header, "shape": ((1100 << 20) // 4, 1)})
            zeros = bytes(16 << 20)
            for _ in range(1100 // 16 + 1):
                member.write(zeros)
        archive.writestr("y.npy", b"")
    assert path.stat().st_size < 8 << 20            # 5 MB inflating to 1.1 GB
    code, err, figures = measured(tmp_path, "train", "--dataset", f"npz:{path}", "--epochs", "1",
                                  preload="h5py,onnx,yaml,numpy,torch")
    assert_one_line(code, err, "bomb.npz", "more than the 1024 MiB")
    assert_bounded(figures)


def test_data_file_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "d.npz")
    (tmp_path / "mnist").mkdir()
    os.mkfifo(tmp_path / "mnist" / "one.idx")
    for spec in ("npz:d.npz",):
        proc = subprocess.run([sys.executable, "-m", "pnndeploy", "train", "--dataset", spec, "--epochs", "1"],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert_one_line(proc.returncode, proc.stderr, "d.npz", "is a FIFO (named pipe)")
    from pnndeploy.data.datasets import load_idx
    from pnndeploy.errors import DatasetError

    with pytest.raises(DatasetError, match="FIFO"):
        load_idx(tmp_path / "mnist" / "one.idx")


# ============================================================================================== interrupts

#: Runs `pnndeploy ARGS` with os.open wrapped: right after the Nth hidden temporary file is created (the
#: window issue 25 found between creating it and registering it), the process sends itself SIGTERM.
SIGTERM_AFTER_CREATE = r"""
import os, signal, sys
real_open, seen = os.open, [0]
def hooked(path, flags, *args, **kwargs):
    fd = real_open(path, flags, *args, **kwargs)
    name = os.path.basename(os.fsdecode(path))
    if flags & os.O_CREAT and name.startswith(".") and name.endswith(".tmp"):
        seen[0] += 1
        if seen[0] == int(os.environ["PNN_KILL_AT"]):
            os.kill(os.getpid(), signal.SIGTERM)
    return fd
os.open = hooked
from pnndeploy.cli import main
main(sys.argv[1:], prog_name="pnndeploy")
"""

WRITERS = {
    "fleet make, first profile": (["fleet", "make", "--count", "2", "--out", "fleet", "--process", "{process}"], 1),
    "fleet make, second profile": (["fleet", "make", "--count", "2", "--out", "fleet", "--process", "{process}"], 2),
    "train, model": (["train", "--epochs", "1", "--hidden", "8", "--out", "models/m.onnx"], 1),
    "transfer, deployment": (["transfer", "--model", "M.onnx", "--device", "chipA", "--profiles", "{profiles}"], 1),
    "audit, plot": (["audit", "--model", "M.onnx", "--device", "chipA", "--profiles", "{profiles}", "--temperature",
                     "0:0.5:0.5", "--days", "0:0:1", "--draws", "1", "--plot", "a.png", "--report", "a.md"], 1),
    "audit, report": (["audit", "--model", "M.onnx", "--device", "chipA", "--profiles", "{profiles}", "--temperature",
                       "0:0.5:0.5", "--days", "0:0:1", "--draws", "1", "--plot", "a.png", "--report", "a.md"], 2),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_sigterm_right_after_a_temporary_file_is_created_leaves_nothing(tmp_path, writer):
    from test_errors import write_synthetic_model

    args, kill_at = WRITERS[writer]
    write_synthetic_model(tmp_path / "M.onnx")
    before = {p for p in tmp_path.rglob("*")}
    args = [a.format(profiles=SHIPPED, process=SHIPPED / "process.yaml") for a in args]
    proc = subprocess.run([sys.executable, "-c", SIGTERM_AFTER_CREATE, *args], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={**os.environ, "PNN_KILL_AT": str(kill_at)})
    assert proc.returncode == 143, (proc.returncode, proc.stderr)
    assert proc.stderr.strip().splitlines() == ["pnndeploy: terminated; no partial output files were left"]
    assert no_temporaries(tmp_path) == []
    written = sorted(str(p.relative_to(tmp_path)) for p in set(tmp_path.rglob("*")) - before if p.is_file())
    # only files finished before the signal: the first profile when the second was being written
    assert written == (["fleet/chipA.h5"] if kill_at == 2 and "fleet" in writer else
                       ["a.png"] if kill_at == 2 else []), written
    for path in (tmp_path / "fleet").glob("*.h5"):
        assert validate_profile(path) == []


def test_an_interrupt_inside_temporary_file_creation_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C landing just after the file exists, before atomic_path has its name: it is removed all the same."""
    import pnndeploy.atomic as atomic

    real_open = os.open

    def interrupted(path, flags, *args, **kwargs):
        real_open(path, flags, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "open", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_bytes_atomic(tmp_path / "out.bin", b"data")
    monkeypatch.undo()
    assert no_temporaries(tmp_path) == [] and not atomic._ACTIVE and not (tmp_path / "out.bin").exists()


# ============================================================================================== path names


@pytest.mark.parametrize("name,fragment", [("../chipA", "looks like a path"), ("a/b", "looks like a path"),
                                           ("..", "looks like a path"), (".hidden", "starts with '.'"),
                                           ("x" * 300, "longer than 64 characters"), ("", "is empty"),
                                           ("chip A", "characters outside")])
def test_device_names_are_names_not_paths(tmp_path, cli, one_line_error, name, fragment):
    from test_errors import write_synthetic_model

    write_synthetic_model(tmp_path / "M.onnx")
    line = one_line_error(cli("transfer", "--model", "M.onnx", "--device", name, "--profiles", SHIPPED, "--no-save"),
                          fragment)
    assert len(line) < 400
    one_line_error(cli("profile", "show", name, "--profiles", SHIPPED), fragment)
    if name:                                # an empty prefix is fine there: chips A, B, ...
        one_line_error(cli("fleet", "make", "--count", "1", "--prefix", name, "--out", "fleet", "--process",
                           SHIPPED / "process.yaml"), fragment)
    assert not (tmp_path / "fleet").exists() and not (tmp_path.parent / "chipAA.h5").exists()


def test_nul_and_control_characters_in_names_are_refused():
    for name in ("chip\0A", "chip\nA", "chip\x1b[31mA"):
        with pytest.raises(ProfileError, match="characters outside"):
            check_device_name(name)


def test_a_profile_whose_device_id_is_a_path_is_refused(tmp_path, cli, one_line_error):
    path = hostile_profile(tmp_path, lambda f: f.attrs.__setitem__("device_id", "../../evil"))
    one_line_error(cli("profile", "validate", path), "device_id", "looks like a path")


@pytest.mark.parametrize("name", ["../out", "a/b", ".hidden", "x" * 65])
def test_sweep_names_are_folder_names(tmp_path, cli, one_line_error, name):
    (tmp_path / "grid.yaml").write_text(json.dumps({"name": name}) + "\n")
    one_line_error(cli("sweep", "grid.yaml"), "must be a plain folder name")


@pytest.mark.parametrize("address", ["/etc/hostname", "../chipA", "sub/chipA"])
def test_a_simulated_backend_cannot_make_pnndeploy_read_another_file(tmp_path, address, cli, one_line_error,
                                                                     tiny_fleet_dir, model_file):
    """A profile's simulated backend names its chip by a plain profile name beside it, never a path."""
    mine = tmp_path / "profiles"
    shutil.copytree(tiny_fleet_dir, mine)
    made = cli("chip", "connect", "chipC", "--profiles", mine, "--kind", "simulated", "--address", address,
               "--name", "chipC-sim")
    if made.exit_code == 0:
        one_line_error(cli("transfer", "--model", model_file, "--profiles", mine, "--device", "chipC-sim",
                           "--no-save"), "plain name of a profile")
    else:
        one_line_error(made)


def test_a_simulated_backend_named_by_profile_name_plays_that_chip(tmp_path, cli, tiny_fleet_dir, model_file):
    mine = tmp_path / "profiles"
    shutil.copytree(tiny_fleet_dir, mine)
    assert cli("chip", "connect", "chipC", "--profiles", mine, "--kind", "simulated", "--address", "chipC",
               "--name", "chipC-sim").exit_code == 0
    result = cli("transfer", "--model", model_file, "--profiles", mine, "--device", "chipC-sim", "--no-save", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["devices"][0]["evaluated_by"] == "backend:simulated"

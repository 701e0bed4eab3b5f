"""Device profiles (HDF5 schema v1) and simulated fleet generation."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import pytest

from pnndeploy.errors import ConfigError, PnnError, ProfileError
from pnndeploy.formats.process_spec import load_process
from pnndeploy.formats.profile_folder import check_device_name, list_profiles, profiles_dir, resolve_device
from pnndeploy.formats.profile_schema import SCHEMA_VERSION, validate_profile
from pnndeploy.formats.profiles import profile_summary, read_profile, write_profile
from pnndeploy.platforms import get_platform
from pnndeploy.simulation.fabrication import chip_names, chip_rng, generate_chip, make_fleet

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "device_profiles"
PROCESS = SHIPPED / "process.yaml"
FLEET = [f"chip{c}" for c in "ABCDEFGH"]
MRR = get_platform("mrr")


@pytest.fixture(scope="module")
def process() -> dict:
    return load_process(PROCESS)


def _small(process: dict, rows: int = 3, cols: int = 4) -> dict:
    p = dict(process)
    p["array"] = {"rows": rows, "cols": cols}
    return p


def _h5_contents(path: Path) -> dict:
    """Every attribute and dataset of a file, keyed by HDF5 path."""
    out: dict = {}

    def attrs(name: str, obj) -> None:
        for k, v in obj.attrs.items():
            out[f"{name}@{k}"] = v

    with h5py.File(path, "r") as f:
        attrs("/", f)

        def visit(name: str, obj) -> None:
            attrs(name, obj)
            if isinstance(obj, h5py.Dataset):
                out[name] = (obj.dtype.str, obj[()])
            else:
                out[name] = "group"

        f.visititems(visit)
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        va, vb = a[key], b[key]
        if isinstance(va, tuple):
            assert va[0] == vb[0], key
            np.testing.assert_array_equal(va[1], vb[1], err_msg=key)
            assert np.asarray(va[1]).tobytes() == np.asarray(vb[1]).tobytes(), key
        else:
            assert type(va) is type(vb), key
            assert np.all(va == vb), key


# --------------------------------------------------------------------------- round trip


def test_write_read_round_trip(tmp_path: Path, process: dict) -> None:
    prof = generate_chip(_small(process), "chipX", seed=7, created="2026-11-02T10:00:00+00:00")
    path = tmp_path / "chipX.h5"
    write_profile(prof, path)
    back = read_profile(path)
    assert back.device_id == "chipX"
    assert back.platform == "mrr"
    assert back.process == process["name"]
    assert back.created == "2026-11-02T10:00:00+00:00"
    assert back.shape == (3, 4)
    assert back.schema_version == SCHEMA_VERSION
    assert back.simulated
    assert back.calibration_measured_at == prof.calibration_measured_at
    assert back.calibration_temperature_C == prof.calibration_temperature_C
    for section in ("calibration", "fabrication"):
        a, b = getattr(prof, section), getattr(back, section)
        assert set(a) == set(b) == {MRR.offset_name, *MRR.param_units}
        for k in a:
            assert b[k].dtype == np.float64
            assert a[k].tobytes() == b[k].tobytes()
    e, eb = prof.environment, back.environment
    assert e.drift_coefficient.tobytes() == eb.drift_coefficient.tobytes()
    assert (eb.crosstalk, eb.detector_noise, eb.dac_bits, eb.heater_range, eb.ageing_rate) == (
        e.crosstalk, e.detector_noise, e.dac_bits, e.heater_range, e.ageing_rate)
    with h5py.File(path, "r") as f:
        assert f.attrs["schema_version"] == 1
        assert bool(f.attrs["simulated"]) is True
        assert f["calibration"][MRR.offset_name].attrs["units"] == "nm"
        assert f["calibration"]["a"].attrs["units"] == "1"
        assert f["environment"]["drift_coefficient"].attrs["units"] == "nm/K"
        assert f["environment"]["ageing_rate"].attrs["units"] == "nm/sqrt(day)"
        assert f["environment"]["dac_bits"].dtype.kind == "i"


def test_real_chip_without_truth(tmp_path: Path, process: dict) -> None:
    prof = generate_chip(_small(process), "lab1", seed=1)
    prof.fabrication = None
    write_profile(prof, tmp_path / "lab1.h5")
    back = read_profile(tmp_path / "lab1.h5")
    assert not back.simulated and back.fabrication is None
    summary = profile_summary(back)
    assert "calibration_error" not in summary and summary["simulated"] is False


def test_write_refuses_invalid_profile_and_leaves_nothing(tmp_path: Path, process: dict) -> None:
    prof = generate_chip(_small(process), "bad", seed=1)
    prof.calibration["gamma"] = -prof.calibration["gamma"]
    with pytest.raises(ProfileError, match="gamma"):
        write_profile(prof, tmp_path / "bad.h5")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_no_temp_files(tmp_path: Path, process: dict) -> None:
    paths = make_fleet(_small(process), 3, "chip", 0, tmp_path)
    write_profile(read_profile(paths[0]), paths[0])  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chipA.h5", "chipB.h5", "chipC.h5"]


# --------------------------------------------------------------------------- shipped fleet


def test_shipped_fleet_is_valid() -> None:
    assert [p.stem for p in list_profiles(SHIPPED)] == FLEET
    for name in FLEET:
        assert validate_profile(SHIPPED / f"{name}.h5") == [], name


def test_regenerated_chip_equals_shipped(tmp_path: Path, process: dict) -> None:
    path = tmp_path / "chipC.h5"
    write_profile(generate_chip(process, "chipC", seed=0), path)
    _assert_same(_h5_contents(path), _h5_contents(SHIPPED / "chipC.h5"))


def test_make_fleet_names_the_chips_and_reports_progress(tmp_path: Path, process: dict) -> None:
    """(That the shipped fleet is this regenerated: tests/test_platform_conformance.py, for every platform.)"""
    seen = []
    paths = make_fleet(process, 8, "chip", 0, tmp_path, progress=lambda i, n, name: seen.append((i, n, name)))
    assert [p.name for p in paths] == [f"{n}.h5" for n in FLEET]
    assert seen == [(i + 1, 8, n) for i, n in enumerate(FLEET)]


def test_calibration_error_matches_process(process: dict) -> None:
    errs = []
    for name in FLEET:
        prof = read_profile(SHIPPED / f"{name}.h5")
        errs.append(prof.calibration[MRR.offset_name] - prof.fabrication[MRR.offset_name])
    sigma = process["calibration"]["resonance_offset_sigma_nm"]
    assert np.std(np.concatenate([e.ravel() for e in errs])) == pytest.approx(sigma, rel=0.10)


def test_profile_summary(process: dict) -> None:
    prof = read_profile(SHIPPED / "chipA.h5")
    now = datetime(2026, 11, 11, 9, 0, tzinfo=timezone.utc)
    s = profile_summary(prof, now=now)
    assert s["device_id"] == "chipA" and s["array"] == [16, 16] and s["rings"] == 256
    assert s["calibration_age_days"] == pytest.approx(10.0)
    assert s["environment"]["dac_bits"] == 12
    err = s["calibration_error"][MRR.offset_name]
    assert set(err) == {"mean", "std", "max_abs", "units"} and err["units"] == "nm"
    assert 0.03 < err["std"] < 0.07


# --------------------------------------------------------------------------- random streams


def test_chip_streams_are_independent(tmp_path: Path, process: dict) -> None:
    small = _small(process)
    alone = generate_chip(small, "chipA", seed=0)
    fleet = [read_profile(p) for p in make_fleet(small, 3, "chip", 0, tmp_path)]
    for k in alone.calibration:
        assert alone.calibration[k].tobytes() == fleet[0].calibration[k].tobytes()
        assert alone.fabrication[k].tobytes() == fleet[0].fabrication[k].tobytes()
    assert not np.array_equal(fleet[0].fabrication[MRR.offset_name], fleet[1].fabrication[MRR.offset_name])
    other_seed = generate_chip(small, "chipA", seed=1)
    assert not np.array_equal(alone.fabrication["gamma"], other_seed.fabrication["gamma"])


def test_chip_rng_does_not_touch_global_state() -> None:
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    chip_rng(0, "chipA").standard_normal(10)
    assert np.array_equal(before, np.random.get_state()[1])
    assert chip_rng(0, "chipA").random() == chip_rng(0, "chipA").random()


# --------------------------------------------------------------------------- validation


def _copy(tmp_path: Path, name: str = "chipB") -> Path:
    dst = tmp_path / f"{name}.h5"
    shutil.copyfile(SHIPPED / f"{name}.h5", dst)
    return dst


def test_validate_reports_all_problems_at_once(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    with h5py.File(path, "r+") as f:
        del f["environment"]["drift_coefficient"]
        f["calibration"][MRR.offset_name][0, 0] = np.nan
        f["fabrication"]["gamma"][1, 2] = -0.1
        del f["calibration"]["a"].attrs["units"]
    problems = validate_profile(path)
    text = " | ".join(problems)
    assert len(problems) >= 4, problems
    assert "environment/drift_coefficient" in text
    assert f"calibration/{MRR.offset_name}" in text and "NaN" in text
    assert "fabrication/gamma" in text and "outside" in text
    assert "calibration/a" in text and "units" in text
    with pytest.raises(ProfileError) as info:
        read_profile(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    assert all(p in msg for p in problems)


def test_validate_shapes_dtypes_and_ranges(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    with h5py.File(path, "r+") as f:
        del f["calibration"]["gamma"]
        f["calibration"].create_dataset("gamma", data=np.full((4, 4), 0.15))
        f["calibration"]["gamma"].attrs["units"] = "nm"
        f["fabrication"]["a"][0, 0] = 1.5
        f["environment"]["crosstalk"][()] = 0.7
        del f["environment"]["dac_bits"]
        f["environment"].create_dataset("dac_bits", data=12.0)
        f["environment"]["dac_bits"].attrs["units"] = "bit"
        f["environment"]["heater_range"][...] = [3.0, -3.0]
        f["environment"]["ageing_rate"].attrs["units"] = "nm/day"
    text = " | ".join(validate_profile(path))
    for needle in ("calibration/gamma' has shape (4, 4)", "fabrication/a", "crosstalk",
                   "dac_bits' has dtype", "heater_range", "expected 'nm/sqrt(day)'"):
        assert needle in text, (needle, text)


def test_schema_versions(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = np.int64(2)
    problems = validate_profile(path)
    assert len(problems) == 1 and "upgrade" in problems[0]
    with pytest.raises(ProfileError, match="upgrade"):
        read_profile(path)
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = np.int64(0)
    assert "older" in validate_profile(path)[0] and "fleet make" in validate_profile(path)[0]
    with h5py.File(path, "r+") as f:
        del f.attrs["schema_version"]
    assert "schema_version" in validate_profile(path)[0]


def test_unknown_platform(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["platform"] = "mzi9000"
    assert any("mzi9000" in p for p in validate_profile(path))


def test_bad_files_give_profile_error_not_traceback(tmp_path: Path) -> None:
    text = tmp_path / "chipZ.h5"
    text.write_text("not hdf5 at all\n")
    assert validate_profile(text) and "HDF5" in validate_profile(text)[0]
    with pytest.raises(ProfileError, match="HDF5"):
        read_profile(text)
    truncated = tmp_path / "chipT.h5"
    truncated.write_bytes((SHIPPED / "chipA.h5").read_bytes()[:2000])
    with pytest.raises(ProfileError):
        read_profile(truncated)
    missing = tmp_path / "nope.h5"
    assert validate_profile(missing)
    with pytest.raises(ProfileError, match="not found"):
        read_profile(missing)
    assert issubclass(ProfileError, PnnError)


# --------------------------------------------------------------------------- names and folders


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "x" * 200, ".hidden", "a\\b", "a..b",
                                 "chip A", "chipé"])
def test_check_device_name_refuses_paths(bad: str) -> None:
    with pytest.raises(ProfileError) as info:
        check_device_name(bad)
    assert "\n" not in str(info.value)


def test_check_device_name_accepts() -> None:
    assert check_device_name("chipB") == "chipB"
    assert check_device_name("lab-2_rev.3") == "lab-2_rev.3"


def test_resolve_device(tmp_path: Path) -> None:
    assert resolve_device("chipC", SHIPPED) == SHIPPED / "chipC.h5"
    with pytest.raises(ProfileError) as info:
        resolve_device("chipQ", SHIPPED)
    msg = str(info.value)
    assert str(SHIPPED) in msg and "fleet list" in msg and "--profiles" in msg
    with pytest.raises(ProfileError, match="without .h5"):
        resolve_device("chipC.h5", SHIPPED)
    with pytest.raises(ProfileError, match="does not exist"):
        resolve_device("chipC", tmp_path / "nowhere")
    with pytest.raises(ProfileError):
        resolve_device("../device_profiles/chipC", SHIPPED)


def test_profiles_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PNNDEPLOY_PROFILES", raising=False)
    assert profiles_dir(None) == Path("device_profiles")
    monkeypatch.setenv("PNNDEPLOY_PROFILES", "/tmp/p")
    assert profiles_dir(None) == Path("/tmp/p")
    assert profiles_dir("mine") == Path("mine")


def test_list_profiles(tmp_path: Path) -> None:
    (tmp_path / ".chipA.h5.x.tmp").write_text("")
    (tmp_path / "notes.txt").write_text("")
    _copy(tmp_path, "chipB")
    _copy(tmp_path, "chipA")
    assert [p.name for p in list_profiles(tmp_path)] == ["chipA.h5", "chipB.h5"]
    with pytest.raises(ProfileError, match="does not exist"):
        list_profiles(tmp_path / "nowhere")


def test_chip_names() -> None:
    names = chip_names(28)
    assert names[:3] == ["chipA", "chipB", "chipC"] and names[25] == "chipZ"
    assert names[-2:] == ["chipAA", "chipAB"]
    assert chip_names(26 + 26 * 26 + 1, "d")[-1] == "dAAA"
    assert chip_names(0) == []
    assert len(set(chip_names(800))) == 800


# --------------------------------------------------------------------------- process spec


def test_load_process_shipped(process: dict) -> None:
    assert process["platform"] == "mrr" and process["array"] == {"rows": 16, "cols": 16}
    assert process["calibration"]["measured_at"] == "2026-11-01T09:00:00+00:00"


def _write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "process.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("old, new, key", [
    ("crosstalk: 0.02", "crosstalk: 0.9", "environment.crosstalk"),
    ("dac_bits: 12", "dac_bits: twelve", "environment.dac_bits"),
    ("gamma_nm: 0.15", "gamma_nmm: 0.15", "ring.gamma_nm"),
    ("platform: mrr", "platform: mrr\nextra: 1", "extra"),
    ("rows: 16", "rows: -1", "array.rows"),
    ("{gamma: 0.01, a: 0.01}", "{gamma: 0.01}", "calibration.param_rel_sigma.a"),
    ('"2026-11-01T09:00:00+00:00"', '"yesterday"', "calibration.measured_at"),
    ("heater_range_nm: [-3.0, 3.0]", "heater_range_nm: [3.0, -3.0]", "environment.heater_range_nm"),
])
def test_load_process_errors(tmp_path: Path, old: str, new: str, key: str) -> None:
    text = PROCESS.read_text()
    assert old in text
    path = _write_yaml(tmp_path, text.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_process(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and key in msg, msg


def test_load_process_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_process(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="line"):
        load_process(_write_yaml(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_process(_write_yaml(tmp_path, "- 1\n- 2\n"))

"""spec-SAT (issue 12): the perturbation set read off a process spec, its training step, and drift compensation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, SHIPPED_PROCESS
from pnndeploy.errors import ConfigError
from pnndeploy.training.config import TrainConfig
from pnndeploy.training.perturbation_set import PerturbationSet, perturbation_set
from pnndeploy.training.spec_sat import SpecAdversary


# ------------------------------------------------------------------------------ the perturbation set
def test_perturbation_set_is_the_process_spec_in_control_units(shipped_process: dict) -> None:
    pset = perturbation_set("mrr", SHIPPED_PROCESS, temperature_K=1.0, days=30.0)
    ring, cal, env = shipped_process["ring"], shipped_process["calibration"], shipped_process["environment"]
    lo, hi = env["heater_range_nm"]
    step = (hi - lo) / (2 ** env["dac_bits"] - 1)
    parts = pset.components
    assert parts["calibration"] == cal["resonance_offset_sigma_nm"]
    assert parts["ageing"] == pytest.approx(env["ageing_nm_per_sqrt_day"] * math.sqrt(30.0))
    assert parts["drift_spread"] == pytest.approx(ring["drift_nm_per_K"] * ring["drift_rel_sigma"])
    assert parts["dac"] == pytest.approx(step / math.sqrt(12))
    assert pset.sigma == pytest.approx(math.sqrt(sum(v * v for v in parts.values())))
    assert pset.rho == pytest.approx(2.0 * pset.sigma)            # rho = z sigma, z = 2 by default
    assert pset.common_shift == pytest.approx(ring["drift_nm_per_K"])
    assert pset.common_temperatures == (-1.0, 0.0, 1.0)
    # the default fleet's numbers: sigma about 0.055 nm, so rho about 0.11 nm (near SAT's hand-set 0.1)
    assert 0.05 < pset.sigma < 0.06


def test_perturbation_set_scales_with_the_requirement() -> None:
    short = perturbation_set("mrr", SHIPPED_PROCESS, temperature_K=0.5, days=1.0)
    long = perturbation_set("mrr", SHIPPED_PROCESS, temperature_K=2.0, days=180.0)
    assert long.sigma > short.sigma and long.common_shift == pytest.approx(4 * short.common_shift)
    comp = perturbation_set("mrr", SHIPPED_PROCESS, temperature_K=2.0, days=180.0, compensated=True)
    assert comp.common_temperatures == (0.0,) and comp.common_shift == 0.0
    assert comp.sigma == long.sigma                   # compensation cancels the common mode, not its spread


def test_perturbation_set_of_the_mesh_reads_its_own_keys() -> None:
    pset = perturbation_set("mzi", REPO_ROOT / "device_profiles" / "mzi" / "process.yaml")
    assert pset.drift == 0.07 and pset.calibration_sigma == 0.05


def test_default_process_is_the_platforms_default_fleets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pnndeploy.training.perturbation_set import PACKAGED_PROCESSES

    monkeypatch.chdir(REPO_ROOT)
    here = perturbation_set("mrr")
    assert here.source == str(Path("device_profiles") / "process.yaml")
    monkeypatch.chdir(tmp_path)                       # outside the checkout: the copy in the package
    away = perturbation_set("mrr")
    assert away.source == str(PACKAGED_PROCESSES / "mrr.yaml") and away.sigma == here.sigma


@pytest.mark.parametrize("platform, folder", [("mrr", ""), ("mzi", "mzi")])
def test_packaged_process_specs_are_the_default_fleets(platform: str, folder: str) -> None:
    from pnndeploy.training.perturbation_set import PACKAGED_PROCESSES

    shipped = REPO_ROOT / "device_profiles" / folder / "process.yaml"
    assert (PACKAGED_PROCESSES / f"{platform}.yaml").read_bytes() == shipped.read_bytes(), \
        f"copy {shipped} to pnndeploy/platforms/processes/{platform}.yaml"


def test_wrong_platforms_process_is_refused() -> None:
    with pytest.raises(ConfigError, match="describes mzi chips"):
        perturbation_set("mrr", REPO_ROOT / "device_profiles" / "mzi" / "process.yaml")


# ------------------------------------------------------------------------------------- the step
def _pset(**changes) -> PerturbationSet:
    base = dict(platform="mrr", source="test", temperature_K=1.0, days=0.0, drift=0.1, drift_rel_sigma=0.0,
                calibration_sigma=0.0, ageing_rate=0.0, dac_step=0.0)
    return PerturbationSet(**{**base, **changes})


def test_worst_shift_takes_the_max_over_the_range_and_its_middle() -> None:
    p = torch.nn.Parameter(torch.zeros(5))
    adversary = SpecAdversary([p], _pset())
    # a loss with its valley off-centre: the +1 K end is worst
    loss = lambda: float(((p + 0.02) ** 2).sum())  # noqa: E731
    adversary.begin()
    assert adversary.worst_shift(loss) == 1.0
    assert torch.allclose(p, torch.full((5,), 0.1))          # left at theta + k dT*
    adversary.restore()
    assert torch.equal(p, torch.zeros(5))
    # a loss that is worst at the middle (the trained point is not always in the valley): dT* = 0
    hump = lambda: float(-((p ** 2).sum()))  # noqa: E731
    adversary.begin()
    assert adversary.worst_shift(hump) == 0.0
    adversary.restore()


def test_ascent_has_radius_rho_and_restore_is_bit_exact() -> None:
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(7, 3))
    before = p.detach().clone()
    pset = _pset(calibration_sigma=0.05)
    adversary = SpecAdversary([p], pset)
    adversary.begin()
    noisy = p.detach().clone()
    assert not torch.equal(noisy, before)                       # a noise draw of sigma
    g = torch.randn(7, 3)
    assert adversary.ascend([g]) == pytest.approx(pset.rho)
    moved = p.detach() - noisy
    assert float(moved.norm()) == pytest.approx(pset.rho, rel=1e-5)
    assert torch.allclose(moved / moved.norm(), g / g.norm(), atol=1e-5)
    adversary.restore()
    assert torch.equal(p.detach(), before)


def test_zero_gradient_skips_the_ascent() -> None:
    p = torch.nn.Parameter(torch.ones(4))
    adversary = SpecAdversary([p], _pset(temperature_K=0.0))
    adversary.begin()
    assert adversary.ascend([torch.zeros(4)]) == 0.0
    assert torch.equal(p.detach(), torch.ones(4))
    adversary.restore()


# ------------------------------------------------------------------------------------- training
def test_spec_sat_trains_deterministically_and_records_its_set(tmp_path: Path, digits) -> None:
    from pnndeploy.formats.onnx_io import load_model
    from pnndeploy.training.pipeline import train_and_export

    config = TrainConfig(method="spec-sat", epochs=2, hidden=[8], robust_to=str(SHIPPED_PROCESS),
                         drift_compensation=False)
    a, _ = train_and_export(digits, config, tmp_path / "a.onnx")
    b, _ = train_and_export(digits, config, tmp_path / "b.onnx")
    ma, mb = load_model(tmp_path / "a.onnx"), load_model(tmp_path / "b.onnx")
    for la, lb in zip(ma.layers, mb.layers):
        assert np.array_equal(la.controls, lb.controls)
    pset = ma.metadata["perturbation_set"]
    assert ma.method == "spec-sat" and ma.metadata["rho"] == pytest.approx(pset["rho"])
    assert pset["common_temperatures_K"] == [-1.0, 0.0, 1.0] and pset["source"] == str(SHIPPED_PROCESS)
    assert "noise" not in ma.metadata["config"] and "rho" not in ma.metadata["config"]
    assert a.test_accuracy > 0.3                               # it learns something in 2 epochs


def test_spec_sat_moves_the_model_differently_from_noise_aware(tmp_path: Path, tiny_digits) -> None:
    from pnndeploy.training.methods import train

    spec = train(tiny_digits, TrainConfig(method="spec-sat", epochs=1, hidden=[8], robust_to=str(SHIPPED_PROCESS),
                                          drift_compensation=False))
    comp = train(tiny_digits, TrainConfig(method="spec-sat", epochs=1, hidden=[8], robust_to=str(SHIPPED_PROCESS),
                                          drift_compensation=True))
    # the uncompensated step trains against the common-mode shift, the compensated one does not
    assert not torch.equal(spec.model.layers[0].controls, comp.model.layers[0].controls)


@pytest.mark.parametrize("args, fragment", [
    (("--method", "spec-sat", "--rho", "0.2"), "--rho is not a setting of spec-sat"),
    (("--method", "spec-sat", "--noise", "0.05"), "--noise is not a setting of spec-sat"),
    (("--method", "sat", "--robust-z", "1"), "use it with --method spec-sat"),
    (("--method", "noise-aware", "--no-drift-compensation"), "use it with --method spec-sat"),
    (("--method", "spec-sat", "--require-days", "-1"), "--require-days must be"),
    (("--method", "spec-sat", "--robust-to", "missing.yaml"), "--robust-to"),
])
def test_bad_spec_sat_settings_are_one_line(cli, one_line_error, tmp_path: Path, args, fragment) -> None:
    out = tmp_path / "m.onnx"
    one_line_error(cli("train", *args, "--epochs", "1", "--out", out), fragment)
    assert not out.exists()


# ------------------------------------------------------------------------------- drift compensation
@pytest.fixture(scope="module")
def prepared_tiny(tiny_export, tiny_fleet_dir):
    from pnndeploy.deploy.transfer import prepare_fleet

    return prepare_fleet(tiny_export.path, [], True, tiny_fleet_dir, save_dir=None)


def test_compensation_finds_minus_k_dT(prepared_tiny) -> None:
    from pnndeploy.deploy.compensation import DriftCompensation, fit_bias
    from pnndeploy.simulation.fleet import Conditions

    fleet = prepared_tiny.require_simulated("a test")
    X = prepared_tiny.data.X
    k = fleet.platform.nominal_drift
    comp = DriftCompensation.for_range(k, 1.5)
    zero = fit_bias(fleet, X, Conditions(delta_T=0.0), comp)
    assert np.all(np.abs(zero) < 0.1 * k)                      # nothing to compensate at 0 K
    for dT in (-1.0, 1.0):
        bias = fit_bias(fleet, X, Conditions(delta_T=dT), comp)
        assert np.allclose(bias, -k * dT, atol=0.15 * k), (dT, bias)


def test_compensated_accuracy_recovers_the_drifted_chips(prepared_tiny) -> None:
    from pnndeploy.deploy.compensation import DriftCompensation, compensated_accuracy
    from pnndeploy.simulation.fleet import Conditions

    fleet = prepared_tiny.require_simulated("a test")
    X, y = prepared_tiny.data.X, prepared_tiny.data.y
    comp = DriftCompensation.for_range(fleet.platform.nominal_drift, 1.0)
    at_zero = fleet.accuracy(X, y, Conditions())
    drifted = fleet.accuracy(X, y, Conditions(delta_T=1.0))
    recovered, _ = compensated_accuracy(fleet, X, y, Conditions(delta_T=1.0), comp)
    assert drifted.mean() < at_zero.mean() - 0.05             # the tiny model does suffer from 1 K
    assert recovered.mean() > drifted.mean() + 0.05
    assert np.all(recovered >= at_zero - 0.05)


def test_audit_reports_both_sweeps_and_judges_the_chosen_one(cli, model_file: Path, tiny_fleet_dir: Path) -> None:
    common = ("audit", "--model", model_file, "--fleet", "--profiles", tiny_fleet_dir, "--temperature", "-1:1:0.5",
              "--days", "0:30:30", "--draws", "1", "--threshold", "0.3", "--json")
    plain = cli(*common)
    comp = cli(*common, "--drift-compensation")
    assert plain.exit_code in (0, 1) and comp.exit_code in (0, 1)
    a, b = json.loads(plain.stdout), json.loads(comp.stdout)
    assert a["sweeps"] == b["sweeps"]                           # the same measurements either way
    assert a["drift_compensation"]["used_for_verdict"] is False and b["drift_compensation"]["used_for_verdict"]
    sweep = b["sweeps"]["temperature_K_compensated"]
    assert sweep["values"] == a["sweeps"]["temperature_K"]["values"] and sweep["bias_units"] == "nm"
    plus = sweep["values"].index(1.0)
    assert min(sweep["fleet_min"][plus], 1.0) >= a["sweeps"]["temperature_K"]["fleet_min"][plus]
    text = cli(*common[:-1], "--drift-compensation")
    assert "compensated" in text.stdout and "verdict on the drift-compensated sweep" in text.stdout

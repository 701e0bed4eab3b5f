"""spec-SAT (issue 12): the perturbation set read off a process spec, its training step, and drift compensation."""

from __future__ import annotations

import dataclasses
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

    monkeypatch.delenv("PNNDEPLOY_PROFILES", raising=False)
    monkeypatch.chdir(REPO_ROOT)
    here = perturbation_set("mrr")
    assert here.source == str(Path("device_profiles") / "process.yaml")
    monkeypatch.chdir(tmp_path)                       # outside the checkout: the copy in the package
    away = perturbation_set("mrr")
    assert away.source == str(PACKAGED_PROCESSES / "mrr.yaml") and away.sigma == here.sigma


def test_a_named_profiles_folder_must_hold_its_own_spec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$PNNDEPLOY_PROFILES names the fleet: spec-sat reads that fleet's spec, never silently the default one."""
    monkeypatch.setenv("PNNDEPLOY_PROFILES", str(tmp_path))
    with pytest.raises(ConfigError, match="--robust-to"):
        perturbation_set("mrr")
    (tmp_path / "process.yaml").write_bytes(SHIPPED_PROCESS.read_bytes().replace(b"0.05 # std of the measured",
                                                                               b"0.09 # std of the measured"))
    assert perturbation_set("mrr").calibration_sigma == 0.09


def test_a_requirement_beyond_the_heater_is_refused() -> None:
    with pytest.raises(ConfigError, match="heater range"):
        perturbation_set("mrr", SHIPPED_PROCESS, temperature_K=30.0)
    # compensated, the common mode is cancelled: only its spread is trained against
    assert perturbation_set("mrr", SHIPPED_PROCESS, temperature_K=30.0, compensated=True).common_shift == 0.0


def test_warm_up_ramps_the_set_in_linearly() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    adversary = SpecAdversary([p], _pset(calibration_sigma=0.05))
    total = 100
    scales = []
    for step in range(total):
        adversary.ramp(step, total)
        scales.append(adversary.scale)
    assert scales[0] == pytest.approx(1 / 20) and scales[9] == pytest.approx(0.5) and scales[19] == 1.0
    assert all(a <= b for a, b in zip(scales, scales[1:])) and set(scales[19:]) == {1.0}
    adversary.ramp(4, total)                                   # a quarter of the way through the warm-up
    adversary.begin()
    assert adversary.worst_shift(lambda: float(((p + 0.02) ** 2).sum())) == 1.0
    assert torch.allclose(p, torch.full((3,), 0.25 * 0.1), atol=0.25 * 0.05 * 6)   # shift scaled by 1/4
    adversary.restore()


@pytest.mark.parametrize("platform, folder", [("mrr", ""), ("mzi", "mzi"), ("freespace", "freespace")])
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


def test_compensated_and_programmed_spec_sat_train_differently(tmp_path: Path, tiny_digits) -> None:
    from pnndeploy.training.loop import train

    spec = train(tiny_digits, TrainConfig(method="spec-sat", epochs=1, hidden=[8], robust_to=str(SHIPPED_PROCESS),
                                          drift_compensation=False))
    comp = train(tiny_digits, TrainConfig(method="spec-sat", epochs=1, hidden=[8], robust_to=str(SHIPPED_PROCESS),
                                          drift_compensation=True))
    # the uncompensated step trains against the common-mode shift, the compensated one does not
    assert not torch.equal(spec.model.layers[0].controls, comp.model.layers[0].controls)


def test_momentum_ascent_takes_one_pass_and_differs_from_the_gradient_ascent(tiny_digits) -> None:
    from pnndeploy.training.loop import train

    base = dict(method="sat", epochs=1, hidden=[8])
    grad = train(tiny_digits, TrainConfig(**base))
    mom = train(tiny_digits, TrainConfig(**base, ascent="momentum"))
    again = train(tiny_digits, TrainConfig(**base, ascent="momentum"))
    assert torch.equal(mom.model.layers[0].controls, again.model.layers[0].controls)      # deterministic
    assert not torch.equal(mom.model.layers[0].controls, grad.model.layers[0].controls)
    spec = train(tiny_digits, TrainConfig(method="spec-sat", epochs=1, hidden=[8], ascent="momentum",
                                          robust_to=str(SHIPPED_PROCESS)))
    assert math.isfinite(spec.history[-1].loss)


@pytest.mark.parametrize("settings", [
    {"method": "spec-sat", "drift_compensation": False},
    {"method": "spec-sat", "drift_compensation": False, "ascent": "momentum"},
    {"method": "spec-sat", "sat_every": 2},
    {"method": "sat", "noise": 0.05},
])
def test_a_front_end_runs_once_a_step_and_changes_no_bit(tiny_digits, monkeypatch: pytest.MonkeyPatch,
                                                         settings: dict) -> None:
    """The adversary moves only the on-chip controls, so the step computes the front end's features once for all
    its passes (issue 26): the model it trains is the one separate whole forwards train, bit for bit."""
    from pnndeploy.training import adversary
    from pnndeploy.training.loop import train
    from pnndeploy.training.model import FrontEnd

    images = dataclasses.replace(tiny_digits, image_shape=(1, 8, 8))     # the 8x8 digits are images
    config = TrainConfig(**settings, conv=[4], kernel=3, batch_norm=True, hidden=[16, 8], onchip=2, epochs=1,
                         **({"robust_to": str(SHIPPED_PROCESS)} if settings["method"] == "spec-sat" else {}))
    calls = {"train": 0}
    forward = FrontEnd.forward

    def counted(self: FrontEnd, x: torch.Tensor) -> torch.Tensor:
        calls["train"] += self.training
        return forward(self, x)

    monkeypatch.setattr(FrontEnd, "forward", counted)
    once = train(images, config)
    steps = -(-len(images.y_train) // config.batch_size)
    assert calls["train"] == steps
    monkeypatch.setattr(adversary, "passes", lambda model, xb, perturbed: ((lambda: model(xb)),) * 2)
    whole = train(images, config)
    assert calls["train"] > 2 * steps                 # the whole forwards did run the front end at every pass
    for (name, a), b in zip(once.model.state_dict().items(), whole.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("args, fragment", [
    (("--method", "sat", "--ascent", "momentum", "--sat-every", "5"), "--ascent momentum takes no extra pass"),
    (("--method", "noise-aware", "--ascent", "momentum"), "use it with --method sat or spec-sat"),
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
    from pnndeploy.simulation.compensation import DriftCompensation, fit_bias
    from pnndeploy.simulation.fleet import Conditions

    fleet = prepared_tiny.require_simulated("a test")
    X = prepared_tiny.data.X
    k = fleet.platform.nominal_drift
    comp = DriftCompensation.for_drift(k)
    zero = fit_bias(fleet, X, Conditions(delta_T=0.0), comp)
    assert np.all(np.abs(zero) < 0.1 * k)                      # nothing to compensate at 0 K
    for dT in (-1.0, 1.0):
        bias = fit_bias(fleet, X, Conditions(delta_T=dT), comp)
        assert np.allclose(bias, -k * dT, atol=0.15 * k), (dT, bias)


def test_compensated_accuracy_recovers_the_drifted_chips(prepared_tiny) -> None:
    from pnndeploy.simulation.compensation import DriftCompensation, compensated_accuracy
    from pnndeploy.simulation.fleet import Conditions

    fleet = prepared_tiny.require_simulated("a test")
    X, y = prepared_tiny.data.X, prepared_tiny.data.y
    comp = DriftCompensation.for_drift(fleet.platform.nominal_drift)
    at_zero = fleet.accuracy(X, y, Conditions())
    drifted = fleet.accuracy(X, y, Conditions(delta_T=1.0))
    recovered, _ = compensated_accuracy(fleet, X, y, Conditions(delta_T=1.0), comp)
    assert drifted.mean() < at_zero.mean() - 0.05             # the tiny model does suffer from 1 K
    assert recovered.mean() > drifted.mean() + 0.05
    assert np.all(recovered >= at_zero - 0.05)


def test_compensation_follows_a_drift_beyond_its_first_window(prepared_tiny) -> None:
    from pnndeploy.simulation.compensation import DriftCompensation, fit_bias
    from pnndeploy.simulation.fleet import Conditions

    fleet = prepared_tiny.require_simulated("a test")
    k = fleet.platform.nominal_drift
    comp = DriftCompensation.for_drift(k)                    # the first window covers 1.5 K
    bias = fit_bias(fleet, prepared_tiny.data.X, Conditions(delta_T=3.0), comp)
    assert np.allclose(bias, -3.0 * k, atol=0.15 * k), bias


def test_golden_section_finds_the_brute_force_minimum(prepared_tiny) -> None:
    from pnndeploy.simulation import compensation as C
    from pnndeploy.simulation.fleet import Conditions

    fleet = prepared_tiny.require_simulated("a test")
    X = prepared_tiny.data.X
    conditions = Conditions(delta_T=0.7)
    comp = C.DriftCompensation.for_drift(fleet.platform.nominal_drift)
    found = C.fit_bias(fleet, X, conditions, comp)
    X_ref = X[:comp.samples]
    chips = slice(0, len(fleet))
    record = fleet.scores(X_ref, Conditions(eval_seed=C.RECORD_SEED), chips)

    def misfit(b: float) -> np.ndarray:
        shifted = Conditions(delta_T=0.7, eval_seed=C.MEASURE_SEED,
                             control_shift=C._common_shift(fleet, np.full(len(fleet), b), None))
        return ((fleet.scores(X_ref, shifted, chips) - record) ** 2).mean(axis=(1, 2))

    grid = np.linspace(-comp.window, comp.window, 601)
    costs = np.stack([misfit(b) for b in grid])
    brute = grid[np.argmin(costs, axis=0)]
    assert np.allclose(found, brute, atol=2 * (grid[1] - grid[0]) + 1e-4), (found, brute)
    # and the search's cost is never worse than the brute-force grid's best
    got = np.array([misfit(b)[i] for i, b in enumerate(found)])
    assert np.all(got <= costs.min(axis=0) * (1 + 1e-3) + 1e-9)


def _audit(cli, model: Path, fleet: Path, *extra: str):
    return cli("audit", "--model", model, "--fleet", "--profiles", fleet, "--temperature", "-1:1:0.5",
               "--days", "0:30:30", "--draws", "1", "--require-days", "0", *extra)


def test_audit_verdict_uses_the_chosen_sweep(cli, model_file: Path, tiny_fleet_dir: Path) -> None:
    first = json.loads(_audit(cli, model_file, tiny_fleet_dir, "--threshold", "0.5", "--json").stdout)
    plain, comp = first["sweeps"]["temperature_K"], first["sweeps"]["temperature_K_compensated"]
    assert comp["values"] == plain["values"] and comp["bias_units"] == "nm"
    worst_plain = min(plain["fleet_min"])
    worst_comp = min(comp["fleet_min"])
    assert worst_comp > worst_plain + 0.02, (worst_plain, worst_comp)     # the tiny model does drift
    threshold = f"{(worst_plain + worst_comp) / 2:.4f}"                  # fails as programmed, passes compensated
    programmed = _audit(cli, model_file, tiny_fleet_dir, "--threshold", threshold, "--json")
    compensated = _audit(cli, model_file, tiny_fleet_dir, "--threshold", threshold, "--drift-compensation", "--json")
    assert programmed.exit_code == 1 and compensated.exit_code == 0, (programmed.output, compensated.output)
    a, b = json.loads(programmed.stdout), json.loads(compensated.stdout)
    assert a["sweeps"] == b["sweeps"]                                    # the same measurements either way
    assert not a["drift_compensation"]["used_for_verdict"] and b["drift_compensation"]["used_for_verdict"]
    assert a["failures"] and not b["failures"] and b["passed"]
    text = _audit(cli, model_file, tiny_fleet_dir, "--threshold", threshold, "--drift-compensation")
    assert "compensated" in text.stdout and "verdict on the drift-compensated sweep" in text.stdout


def test_audit_judges_a_model_as_it_was_trained_to_be_deployed(cli, tmp_path: Path, digits,
                                                               tiny_fleet_dir: Path) -> None:
    from pnndeploy.training.pipeline import train_and_export

    path = tmp_path / "spec.onnx"
    train_and_export(digits, TrainConfig(method="spec-sat", epochs=1, hidden=[8], robust_to=str(SHIPPED_PROCESS)),
                     path)
    default = json.loads(_audit(cli, path, tiny_fleet_dir, "--threshold", "0.1", "--json").stdout)
    assert default["drift_compensation"]["used_for_verdict"] is True      # spec-sat's default deployment
    overridden = json.loads(_audit(cli, path, tiny_fleet_dir, "--threshold", "0.1", "--no-drift-compensation",
                                   "--json").stdout)
    assert overridden["drift_compensation"]["used_for_verdict"] is False

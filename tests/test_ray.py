"""Ray (issue 13): the same results as the local path, bit for bit, on a local Ray cluster of this machine.

CI installs the ``ray`` extra; without it these tests are skipped and ``--executor ray`` is one line.
The cluster is started once for the module (two CPUs, no dashboard) and shut down at its end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from pnndeploy.deploy.executors import TaskFailure, fleet_accuracy, ray_session, run_tasks  # noqa: E402
from pnndeploy.simulation.fleet import Conditions  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    import sys

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with ray_session(num_cpus=2) as session:
        yield session
    assert not ray.is_initialized()


def _square_or_fail(x: int) -> int:
    """A task that fails on one input (sent to the workers by value: they cannot import the tests)."""
    if x == 3:
        raise ValueError("three is not allowed")
    return x * x


def test_tasks_come_back_in_order_and_a_failure_does_not_lose_the_others(cluster) -> None:
    seen = []
    out = run_tasks(_square_or_fail, [(i,) for i in range(6)], "ray", on_result=lambda i, r: seen.append(i))
    assert out[:3] == [0, 1, 4] and out[4:] == [16, 25]
    assert isinstance(out[3], TaskFailure) and "three is not allowed" in out[3].error
    assert sorted(seen) == list(range(6))
    assert run_tasks(_square_or_fail, [(i,) for i in range(6)], "local")[:3] == [0, 1, 4]


def test_fleet_on_ray_is_the_local_fleet_bit_for_bit(cluster, tiny_export, tiny_fleet_dir: Path) -> None:
    from pnndeploy.deploy.transfer import prepare_fleet

    prepared = prepare_fleet(tiny_export.path, [], True, tiny_fleet_dir, save_dir=None)
    for conditions in (Conditions(), Conditions(delta_T=0.7, eval_seed=3)):
        local = fleet_accuracy(prepared, conditions)
        for per_task in (1, 2, 3):
            on_ray = fleet_accuracy(prepared, conditions, "ray", chips_per_task=per_task)
            assert on_ray.dtype == local.dtype and np.array_equal(on_ray, local), per_task


def test_transfer_cli_on_ray_matches_local(cli, cluster, model_file: Path, tiny_fleet_dir: Path) -> None:
    args = ("transfer", "--model", model_file, "--fleet", "--profiles", tiny_fleet_dir, "--no-save",
            "--temperature-delta", "0.5", "--json")
    local = json.loads(cli(*args).stdout)
    remote = cli(*args, "--executor", "ray", "--chips-per-task", "2")
    assert remote.exit_code == 0, remote.output
    assert json.loads(remote.stdout)["devices"] == local["devices"]


def test_sweep_on_ray_gives_the_local_table(cluster, tmp_path: Path, tiny_fleet_dir: Path) -> None:
    from pnndeploy.experiments.sweep import load_sweep, run_sweep

    grid = tmp_path / "g.yaml"
    grid.write_text(f"""
epochs: 1
hidden: 8
seeds: [0, 1]
grid:
  method: [noise-aware, sat]
cells:
  - {{method: sat, platform: mzi}}
fleets: ["{tiny_fleet_dir}"]
temperature: "-1:1:1"
days: "0:30:30"
draws: 1
""")
    spec = load_sweep(grid)
    local = run_sweep(spec, tmp_path / "local")
    remote = run_sweep(spec, tmp_path / "ray", executor="ray")
    assert (tmp_path / "local" / "results.csv").read_bytes() == (tmp_path / "ray" / "results.csv").read_bytes()
    assert remote["counts"] == local["counts"] == {"done": 4, "skipped": 0, "failed": 2}
    for a, b in zip(local["cells"], remote["cells"]):
        assert a["key"] == b["key"]
        if a["status"] == "done":
            import onnx

            weights = [[t.SerializeToString() for t in onnx.load(c["model"]).graph.initializer] for c in (a, b)]
            assert weights[0] == weights[1]                          # the same trained model (only timings differ)
            assert a["fleets"] == b["fleets"] and a["ideal"] == b["ideal"]


def _lot_part(process: dict, names: list[str]) -> list:
    """The chips of one task of a lot, made in the task."""
    from pnndeploy.simulation.fabrication import generate_chip

    return [generate_chip(process, name, seed=1) for name in names]


def test_a_lot_is_made_mapped_and_evaluated_in_the_tasks_as_locally(cluster, tiny_export, shipped_process) -> None:
    """lot_accuracy maps each batch in its task (on Ray: on the workers, not the driver) and gives the accuracies of
    the chips mapped and evaluated in one process, bit for bit."""
    import functools

    from pnndeploy.deploy.executors import lot_accuracy
    from pnndeploy.deploy.mapping import map_models
    from pnndeploy.deploy.transfer import load_evaluation_data
    from pnndeploy.formats.onnx_io import load_model
    from pnndeploy.simulation.fleet import SimulatedFleet

    model = load_model(tiny_export.path)
    data = load_evaluation_data(model)
    names = ["lot0", "lot1", "lot2"]
    profiles = _lot_part(shipped_process, names)
    conditions = Conditions(delta_T=0.4, eval_seed=2)
    deployments = map_models(model, profiles)
    local = SimulatedFleet(model, profiles, deployments).accuracy(data.X, data.y, conditions)
    batches = [functools.partial(_lot_part, shipped_process, names[:2]), functools.partial(_lot_part, shipped_process,
                                                                                           names[2:])]
    for executor in ("local", "ray"):
        got = lot_accuracy(model, batches, data.X, data.y, conditions, executor)
        assert np.array_equal(got["accuracy"], local), executor
        assert got["residual"].tolist() == [[layer.residual for layer in d.layers] for d in deployments]

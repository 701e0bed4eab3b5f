"""The compute device (--compute, --threads): the same training and fleet on every device this machine has,
one-line refusals of devices it has not, the thread policy, and a lot streamed through in chunks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pnndeploy.compute import PARALLEL_WORK, Compute, ComputeError, available_cores, resolve_compute
from pnndeploy.deploy.mapping import map_model
from pnndeploy.deploy.transfer import load_evaluation_data
from pnndeploy.formats.onnx_io import load_model
from pnndeploy.simulation.fabrication import generate_chip
from pnndeploy.simulation.fleet import Conditions, SimulatedFleet, stream_accuracy
from pnndeploy.training.config import TrainConfig
from pnndeploy.training.loop import build_model, train

#: Every compute device present: the CPU always, each CUDA device when there is one (never in CI).
DEVICES = ["cpu"] + [f"cuda:{k}" for k in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]


@pytest.mark.parametrize("device", DEVICES)
def test_the_same_training_and_fleet_on_every_device(device, tiny_digits, tiny_export, shipped_process) -> None:
    """A small training and a fleet evaluation run on each device; on the CPU they are the suite's reference,
    on a GPU they agree with it to float32 rounding (not bit for bit: other kernels)."""
    config = TrainConfig(method="sat", epochs=2, hidden=[8], seed=0)
    here = train(tiny_digits, config, compute=Compute(device))
    reference = train(tiny_digits, config, compute=Compute("cpu", 1))
    assert here.compute == {"device": device, "threads": 1}
    assert next(here.model.parameters()).device.type == "cpu"          # the model comes back to the CPU
    losses = [r.loss for r in here.history]
    assert losses == pytest.approx([r.loss for r in reference.history], rel=1e-3)
    if device == "cpu":
        assert losses == [r.loss for r in reference.history]          # the same thread count: the same bits
    model = load_model(tiny_export.path)
    data = load_evaluation_data(model)
    chips = [generate_chip(shipped_process, f"dev{k}", seed=4) for k in range(5)]
    deployments = [map_model(model, c) for c in chips]
    conditions = Conditions(delta_T=0.5, eval_seed=1)
    acc = SimulatedFleet(model, chips, deployments, Compute(device)).accuracy(data.X, data.y, conditions)
    cpu = SimulatedFleet(model, chips, deployments, Compute("cpu", 1)).accuracy(data.X, data.y, conditions)
    assert np.abs(acc - cpu).max() <= 2 / len(data.y)


def test_a_fleet_gives_the_same_bits_on_one_thread_or_all(tiny_export, shipped_process) -> None:
    model = load_model(tiny_export.path)
    data = load_evaluation_data(model)
    chips = [generate_chip(shipped_process, f"thr{k}", seed=5) for k in range(9)]
    deployments = [map_model(model, c) for c in chips]
    one = SimulatedFleet(model, chips, deployments, Compute("cpu", 1)).scores(data.X, Conditions(delta_T=0.3),
                                                                              slice(0, 9))
    every = SimulatedFleet(model, chips, deployments, Compute("cpu", 2)).scores(data.X, Conditions(delta_T=0.3),
                                                                                slice(0, 9))
    np.testing.assert_array_equal(one, every)


@pytest.mark.parametrize("platform, side_by_side", [("mrr", False), ("mrr", True), ("mzi", True)])
def test_chunks_evaluated_side_by_side_are_the_chunks_one_after_another(platform, side_by_side, tiny_export,
                                                                        shipped_process, tmp_path,
                                                                        monkeypatch) -> None:
    """Where the platform asks for it (the mesh: ``chunks_side_by_side``; the ring bank made to), with two threads
    a fleet's chunks of chips run side by side, each on one intra-op thread (torch's own threads stay at one inside
    them): every chip's accuracy is the serial run's, at a new drift and again at the same one (the MZI fleet's
    cache of realised weights, shared by the chunks, hit), and progress sees every chip once, one call at a time.
    The ring bank by default keeps its chunks one after another on torch's threads."""
    import threading

    from pnndeploy.formats.process_spec import load_process
    from pnndeploy.training.pipeline import train_and_export

    if platform == "mzi":
        path = tmp_path / "mzi.onnx"
        train_and_export("digits", TrainConfig(platform="mzi", epochs=1, hidden=[16], seed=0), path)
        model = load_model(path)
        process = load_process(__import__("pathlib").Path(__file__).parents[1] / "device_profiles" / "mzi" /
                               "process.yaml")
    else:
        model, process = load_model(tiny_export.path), shipped_process
    data = load_evaluation_data(model)
    chips = [generate_chip(process, f"side{k}", seed=7) for k in range(7)]
    deployments = [map_model(model, c) for c in chips]
    serial = SimulatedFleet(model, chips, deployments, Compute("cpu", 1))
    side = SimulatedFleet(model, chips, deployments, Compute("cpu", 2))
    monkeypatch.setattr(type(side.platform), "chunks_side_by_side", side_by_side)
    seen, inside = [], set()

    def progress(n: int) -> None:
        seen.append(n)
        inside.add((threading.current_thread() is threading.main_thread(), torch.get_num_threads()))

    for dT in (np.linspace(-0.5, 0.5, 7), np.linspace(-0.5, 0.5, 7), 0.8):
        want = serial.accuracy(data.X, data.y, Conditions(delta_T=dT, eval_seed=2), chunk=2)
        got = side.accuracy(data.X, data.y, Conditions(delta_T=dT, eval_seed=2), chunk=2, progress=progress)
        np.testing.assert_array_equal(got, want)
    assert sorted(seen) == sorted([2, 2, 2, 1] * 3)
    assert inside == ({(False, 1)} if side_by_side else {(True, 2)})


def test_chunks_side_by_side_stay_within_memory_and_split_a_small_fleet_evenly(tiny_export, shipped_process,
                                                                               monkeypatch) -> None:
    """As many chunks run at once as :data:`threads.PIECES_BYTES` holds (one at least), a fleet of fewer chunks
    than threads is cut into even chunks of 16 chips at least, and the intensity read-out stays serial."""
    import pnndeploy.threads as threads
    from pnndeploy.platforms import get_platform

    model = load_model(tiny_export.path)
    chips = [generate_chip(shipped_process, f"mem{k}", seed=8) for k in range(40)]
    fleet = SimulatedFleet(model, chips, [map_model(model, c) for c in chips], Compute("cpu", 2))
    monkeypatch.setattr(type(fleet.platform), "chunks_side_by_side", True)
    assert fleet._side_by_side(128, 360) == 2
    per_chip = sum(fleet.platform.fleet_chip_bytes(s, 360, model.platform_params) for s in fleet.shapes)
    monkeypatch.setattr(threads, "PIECES_BYTES", 128 * per_chip * 2 - 1)
    assert fleet._side_by_side(128, 360) == 1
    monkeypatch.setattr(threads, "PIECES_BYTES", 2 * 2 ** 30)
    seen = []
    fleet.accuracy(load_evaluation_data(model).X, load_evaluation_data(model).y, progress=seen.append)
    assert sorted(seen) == [20, 20]
    intensity = get_platform("mzi").configure({"modes": 8, "detection": "intensity"})
    assert not intensity.chunks_side_by_side and intensity.fleet_chip_bytes((4, 6), 100) == 16 * 100 * 8 + 16 * 64


def test_a_lot_streamed_in_chunks_is_the_fleet_at_once(tiny_export, shipped_process) -> None:
    """stream_accuracy holds one chunk of chips at a time; a chip's accuracy does not depend on its chunk."""
    model = load_model(tiny_export.path)
    data = load_evaluation_data(model)
    chips = [generate_chip(shipped_process, f"lot{k}", seed=6) for k in range(11)]
    deployments = [map_model(model, c) for c in chips]
    temperatures = np.linspace(-1, 1, 11)
    whole = SimulatedFleet(model, chips, deployments).accuracy(data.X, data.y, Conditions(delta_T=temperatures))
    seen = []
    streamed = stream_accuracy(model, iter(zip(chips, deployments)), data.X, data.y,
                               Conditions(delta_T=temperatures), chunk=4, progress=seen.append)
    np.testing.assert_array_equal(streamed, whole)
    assert seen == [4, 4, 3]


def test_threads_follow_the_size_of_the_work(tiny_digits) -> None:
    small = build_model(TrainConfig(method="sat", hidden=[32]), 64, 10)
    assert small.step_macs(32) < PARALLEL_WORK and Compute().cpu_threads(small.step_macs(32)) == 1
    lenet = build_model(TrainConfig(method="spec-sat", conv=[6, 16], hidden=[120, 84], onchip=2), 784, 10,
                        image_shape=(1, 28, 28))
    assert lenet.step_macs(32) > PARALLEL_WORK
    assert Compute().cpu_threads(lenet.step_macs(32)) == available_cores()
    assert Compute(threads=3).cpu_threads(10) == 3                     # an explicit count wins
    before = torch.get_num_threads()
    with Compute(threads=1).running():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_compute_specs_resolve_or_are_refused(monkeypatch) -> None:
    monkeypatch.delenv("PNNDEPLOY_COMPUTE", raising=False)
    monkeypatch.delenv("PNNDEPLOY_THREADS", raising=False)
    assert resolve_compute("cpu") == Compute("cpu", None)
    assert resolve_compute("cpu", "4") == Compute("cpu", 4)
    assert resolve_compute("auto").device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    for spec, fragment in (("gpu", "not a compute device"), ("cpu:1", "takes no index"),
                           ("cuda:99", "cuda:99")):
        with pytest.raises(ComputeError, match=fragment):
            resolve_compute(spec)
    for threads in ("0", "-2", "two", "5000"):
        with pytest.raises(ComputeError, match="thread count"):
            resolve_compute("cpu", threads)
    monkeypatch.setenv("PNNDEPLOY_COMPUTE", "cpu")
    monkeypatch.setenv("PNNDEPLOY_THREADS", "2")
    assert resolve_compute() == Compute("cpu", 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", [["train", "--epochs", "1"], ["transfer", "--device", "chipB"],
                                     ["audit", "--device", "chipB"], ["demo", "--quick"], ["calibrate", "chipB"],
                                     ["sweep", "grid.yaml"]])
def test_cuda_on_a_machine_without_it_is_one_line(cli, one_line_error, command, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    one_line_error(cli(*command, "--compute", "cuda"), "--compute cuda", "no CUDA device", "--compute cpu")
    one_line_error(cli(*command, env={"PNNDEPLOY_COMPUTE": "cuda:1"}), "$PNNDEPLOY_COMPUTE")


def test_device_still_names_a_chip_and_compute_the_machine(cli, one_line_error, model_file,
                                                          shipped_profiles_dir) -> None:
    """--device cpu is a chip called cpu (none here), never the compute device."""
    one_line_error(cli("transfer", "--model", model_file, "--device", "cpu", "--profiles", shipped_profiles_dir,
                       "--no-save"), "'cpu'")
    result = cli("transfer", "--model", model_file, "--device", "chipB", "--profiles", shipped_profiles_dir,
                 "--no-save", "--compute", "cpu", "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["devices"][0]["device"] == "chipB"


def test_train_json_says_where_it_computed(cli, tmp_path) -> None:
    result = cli("train", "--method", "sat", "--epochs", "1", "--hidden", "8", "--out", tmp_path / "m.onnx",
                 "--compute", "cpu", "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["compute"] == {"device": "cpu", "threads": 1}

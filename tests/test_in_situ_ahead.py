"""Issue 26, part 4: an in-situ step maps its next layer while the station measures this one (the http backend's
binary wire), in the same thread.

The look-ahead must change nothing but the time: the same model bit for bit as without it, every layer still
measured once a pass, and a mapping that fails in the look-ahead fails where it did without it (the layer
before it measured, one line from the CLI, no thread started, the connection still usable).
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from chip_server import ChipServer
from pnndeploy.backends.base import LayerProgram
from pnndeploy.backends.http import HttpBackend
from pnndeploy.errors import PnnError
from pnndeploy.training.in_situ import InSituChip

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _train(server: ChipServer, tiny_fleet_dir: Path, digits, out: Path, ahead: bool, monkeypatch) -> tuple:
    """SAT + PAT over the binary wire, with the look-ahead on or off: (the model's initializers, the backend, how
    many mappings the look-ahead made)."""
    import onnx
    from onnx import numpy_helper

    from pnndeploy.formats.profiles import read_profile
    from pnndeploy.training.config import TrainConfig
    from pnndeploy.training.pipeline import train_and_export

    monkeypatch.setenv("PNNDEPLOY_CHIP_TOKEN", server.token_file.read_text().strip())
    monkeypatch.setattr(HttpBackend, "measures_meanwhile", ahead)
    made = [0]
    original = InSituChip._map_ahead

    def counted(self, index, spent):
        made[0] += 1
        return original(self, index, spent)

    monkeypatch.setattr(InSituChip, "_map_ahead", counted)
    backend = HttpBackend(server.url, {"wire": "binary"})
    backend.open()
    chip = InSituChip(backend, read_profile(tiny_fleet_dir / "chipA.h5"))
    train_and_export(digits, TrainConfig(method="sat", epochs=1, seed=0, hidden=[8]), out, chip=chip)
    backend.close()
    return [numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer], backend, made[0]


def test_mapping_the_next_layer_while_the_station_measures_gives_the_same_model_bit_for_bit(
        tmp_path, tiny_fleet_dir, tiny_digits, monkeypatch):
    results = {}
    for ahead in (False, True):                          # a fresh station each: the same detector-noise draws
        with ChipServer(tiny_fleet_dir / "chipA.h5", tmp_path / str(ahead), idle=60, max_requests=500) as server:
            results[ahead] = _train(server, tiny_fleet_dir, tiny_digits, tmp_path / f"{ahead}.onnx", ahead,
                                    monkeypatch)
    (serial, serial_backend, serial_made), (overlapped, backend, made) = results[False], results[True]
    assert len(serial) == len(overlapped)
    for a, b in zip(serial, overlapped):
        assert a.tobytes() == b.tobytes()
    steps = -(-160 // 32)
    assert serial_backend.exchanges == backend.exchanges == 1 + 2 * 2 * steps      # info + SAT's 2 passes x 2
    assert serial_made == 0 and made == 2 * steps                  # the second layer of every pass, ahead


def test_a_mapping_changed_after_the_look_ahead_is_mapped_again(tiny_fleet_dir):
    """The look-ahead is used only for the parameters it was made from: a layer changed since is mapped anew."""
    import torch

    from pnndeploy.formats.profiles import read_profile
    from pnndeploy.training.config import TrainConfig
    from pnndeploy.training.loop import build_model

    profile = read_profile(tiny_fleet_dir / "chipA.h5")
    model = build_model(TrainConfig(method="sat", epochs=1, seed=0, hidden=[8]), 64, 10, None)
    chip = InSituChip(None, profile)
    chip.attach(model)
    layer = model.layers[1]
    chip._map_ahead(1, [0.0])
    ahead = chip._ahead[2]
    with torch.no_grad():
        layer.controls.add_(0.01)
    again = chip._mapped(1, layer)
    fresh = chip._mapping(layer)
    assert again[0].tobytes() == fresh[0].tobytes() and again[0].tobytes() != ahead[0].tobytes()
    chip._map_ahead(1, [0.0])
    assert chip._mapped(1, layer)[0].tobytes() == fresh[0].tobytes() and chip._ahead is None


def _failing_second_layer(monkeypatch, calls: list) -> None:
    """The ring platform's mapping (of settings alone: what in-situ training programs) fails for the second layer
    (8 inputs), as a bad calibration might."""
    from pnndeploy.platforms.mrr import MRRPlatform

    original = MRRPlatform.layer_settings

    def layer_settings(self, weight, controls, *args, **kwargs):
        calls.append(controls.shape)
        if controls.shape[1] == 8:
            raise PnnError("the calibration cannot place layer 2 (a test's fault)")
        return original(self, weight, controls, *args, **kwargs)

    monkeypatch.setattr(MRRPlatform, "layer_settings", layer_settings)


@pytest.mark.parametrize("ahead", [False, True])
def test_a_mapping_that_fails_ahead_fails_where_it_did_as_one_line_and_leaves_no_thread(
        ahead, cli, one_line_error, tmp_path, tiny_fleet_dir, monkeypatch):
    folder = tmp_path / "profiles"
    shutil.copytree(tiny_fleet_dir, folder)
    monkeypatch.setattr(HttpBackend, "measures_meanwhile", ahead)
    calls: list = []
    with ChipServer(tiny_fleet_dir / "chipB.h5", tmp_path / "server", idle=60, max_requests=50) as server:
        result = cli("chip", "connect", "chipB", "--profiles", folder, "--address", server.url, "--token-file",
                     server.token_file, "--name", "chipB-remote")
        assert result.exit_code == 0, result.output
        threads = threading.active_count()
        _failing_second_layer(monkeypatch, calls)
        result = cli("train", "--method", "sat", "--epochs", "1", "--hidden", "8", "--in-situ", "chipB-remote",
                     "--in-situ-profiles", folder, "--out", tmp_path / "m.onnx")
        one_line_error(result, "cannot place layer 2")
        assert threading.active_count() == threads
        assert calls == [(8, 64), (10, 8)]                        # mapped once each, then it stopped
        deadline = time.monotonic() + 5                           # the server logs a request after answering it
        while server.requests_logged("/v1/measure") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.requests_logged("/v1/measure") == 1        # the first layer measured, as without look-ahead
    assert not (tmp_path / "m.onnx").exists()


def test_work_that_raises_during_an_exchange_closes_the_connection_and_the_next_exchange_works(
        tmp_path, tiny_fleet_dir, monkeypatch):
    """What ``meanwhile`` raises (an interrupt: the in-situ look-ahead keeps its own errors) propagates as it is,
    the half-read reply's connection is closed, and the next measurement opens a new one."""
    with ChipServer(tiny_fleet_dir / "chipA.h5", tmp_path / "server", idle=60, max_requests=50) as server:
        monkeypatch.setenv("PNNDEPLOY_CHIP_TOKEN", server.token_file.read_text().strip())
        backend = HttpBackend(server.url, {"wire": "binary"})
        backend.open()
        program, x = LayerProgram(0, (4, 6), np.zeros((4, 6))), np.ones((2, 6))

        def interrupted() -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            backend.measure_layer(program, x, interrupted)
        assert backend._lean._stream is None
        ran = []
        y, _ = backend.measure_layer(program, x, lambda: ran.append(1))
        assert y.shape == (2, 4) and ran == [1]
        y, _ = backend.measure_layer(program, x)
        assert y.shape == (2, 4)
        backend.close()

"""Issue 26 part 4: the binary wire (frames of raw little-endian arrays), one program-and-measure exchange per
layer and step, re-programming only what changed under a server-named version, the station's time apart.

The codec is tried on every dtype and shape and on hostile frames (each refused with one clear WireError,
nothing allocated beyond the limits); the server and the client against real `chip serve` processes on
127.0.0.1 that stop by themselves (tests/chip_server.py).
"""

from __future__ import annotations

import json
import struct
import tracemalloc
from pathlib import Path

import httpx
import numpy as np
import pytest

from chip_server import ChipServer
from pnndeploy.backends import BackendError, LayerProgram
from pnndeploy.backends.frame import BINARY_TYPE, MAX_ARRAYS, MAX_META_BYTES, decode_frame, encode_frame
from pnndeploy.backends.http import HttpBackend
from pnndeploy.backends.wire import MAX_ARRAY_VALUES, WireError, field_array

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# ------------------------------------------------------------------------------------------------ codec

@pytest.mark.parametrize("dtype", ["<f8", "<f4", "u1"])
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3), (0, 4), (1, 2, 3, 4)])
def test_every_dtype_and_shape_round_trips_bit_for_bit(dtype, shape):
    rng = np.random.default_rng(0)
    values = (rng.integers(0, 256, shape) if dtype == "u1" else rng.normal(size=shape)).astype(dtype)
    meta = {"layer": 3, "base": "abc-1", "weight_shape": [2, 3]}
    got_meta, arrays = decode_frame(encode_frame(meta, {"a": values, "b_2": np.arange(3.0)}), "body")
    assert got_meta == meta and list(arrays) == ["a", "b_2"]
    assert arrays["a"].dtype == np.dtype(dtype) and arrays["a"].shape == shape
    assert arrays["a"].tobytes() == values.tobytes()
    assert arrays["a"].flags.writeable and arrays["a"].flags.owndata      # a copy, not a view of the body
    special = np.array([-0.0, 1e-310, np.finfo(float).max, np.nan, np.inf])
    assert decode_frame(encode_frame({}, {"s": special}), "body")[1]["s"].tobytes() == special.tobytes()


def _head(arrays: int = 1, meta: bytes = b"{}", magic: bytes = b"PNNA", version: int = 1, reserved: int = 0) -> bytes:
    return struct.pack("<4sBBHI", magic, version, arrays, reserved, len(meta)) + meta


def _array(name: bytes = b"x", code: int = 1, shape: tuple = (2,), data: bytes | None = None,
           reserved: int = 0, ndim: int | None = None) -> bytes:
    ndim = len(shape) if ndim is None else ndim
    body = data if data is not None else bytes(8 * int(np.prod(shape)))
    return struct.pack("<BBBB", len(name), code, ndim, reserved) + name + struct.pack(f"<{len(shape)}I", *shape) + body


GOOD = _head() + _array()
HOSTILE = {
    "empty": (b"", "truncated"),
    "short header": (b"PNNA\x01", "truncated"),
    "not a frame": (b"{\"x\": 1}" + bytes(8), "not a pnndeploy frame"),
    "another version": (_head(version=2) + _array(), "version 2"),
    "reserved header bits": (_head(reserved=1) + _array(), "reserved 1"),
    "too many arrays": (_head(arrays=MAX_ARRAYS + 1), f"limit {MAX_ARRAYS}"),
    "huge JSON fields": (struct.pack("<4sBBHI", b"PNNA", 1, 0, 0, MAX_META_BYTES + 1), f"limit {MAX_META_BYTES}"),
    "fields not JSON": (_head(0, b"{nope"), "not JSON"),
    "fields not an object": (_head(0, b"[1]"), "not a JSON object"),
    "fields nested deep": (_head(0, b'{"a":' + b"[" * 40 + b"]" * 40 + b"}"), "deeper"),
    "truncated data": (_head() + _array(data=bytes(15)), "truncated"),
    "truncated sizes": (_head() + struct.pack("<BBBB", 1, 1, 3, 0) + b"x" + bytes(4), "truncated"),
    "trailing bytes": (GOOD + b"\0", "trailing"),
    "unknown dtype": (_head() + _array(code=9), "dtype code 9"),
    "big-endian dtype": (_head() + _array(code=0x81), "little-endian only"),
    "object dtype": (_head() + _array(code=0), "dtype code 0"),
    "five dimensions": (_head() + _array(shape=(1, 1, 1, 1, 1)), "5 dimensions"),
    "reserved array bits": (_head() + _array(reserved=7), "reserved 7"),
    "bad name": (_head() + _array(name=b"../x"), "not lower-case"),
    "long name": (_head() + _array(name=b"a" * 40), "40-byte name"),
    "duplicate name": (_head(2) + _array() + _array(), "twice"),
    "name of a field": (_head(1, b'{"x": 1}') + _array(), "twice"),
    "2^40 values": (_head() + _array(shape=(1 << 20, 1 << 20), data=b""), "more than the limit"),
    "overflowing product": (_head() + _array(shape=(0xFFFFFFFF,) * 4, data=b""), "more than the limit"),
    "one value over": (_head() + _array(shape=(MAX_ARRAY_VALUES + 1,), data=b""), "more than the limit"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_frame_is_one_clear_error_and_allocates_nothing_it_claims(case):
    raw, fragment = HOSTILE[case]
    decode_frame(GOOD, "body")                                            # the well-formed neighbour passes
    tracemalloc.start()
    try:
        with pytest.raises(WireError) as err:
            decode_frame(raw, "the request body")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(err.value)
    assert fragment in message and "the request body" in message and "\n" not in message
    assert peak < 64 * 1024 + 2 * len(raw)                                # nothing sized by the claim


def test_nan_and_inf_are_refused_where_finite_values_are_needed():
    _, arrays = decode_frame(encode_frame({}, {"x": np.array([[1.0, np.nan]]), "y": np.array([[np.inf]])}), "b")
    with pytest.raises(WireError, match="'x' holds NaN or inf"):
        field_array({}, arrays, "x", 2, finite=True)
    assert np.isinf(field_array({}, arrays, "y", 2)).all()               # a measured output may be NaN/inf
    with pytest.raises(WireError, match="2 dimensions, expected 1"):
        field_array({}, arrays, "x", 1)
    with pytest.raises(WireError, match="dtype <f8"):
        field_array({}, arrays, "x", mask=True)


def test_a_mask_may_not_set_its_padding_bits():
    from pnndeploy.backends.slots import _unpack, pack_changes

    mask, values = pack_changes(np.zeros(20), np.arange(20.0))
    assert mask.size == 3 and values.size == 19 and _unpack(mask, 20).sum() == 19      # 0.0 == 0.0 stays
    with pytest.raises(BackendError, match="beyond the layer's settings"):
        _unpack(np.array([255, 255, 255], np.uint8), 20)
    assert pack_changes(np.array([0.0]), np.array([-0.0]))[1].size == 1                # bit patterns differ


# ----------------------------------------------------------------------------------------------- server

@pytest.fixture
def station(tmp_path, tiny_fleet_dir, monkeypatch):
    with ChipServer(tiny_fleet_dir / "chipA.h5", tmp_path / "server", "--measurement-noise", "0",
                    idle=60, max_requests=2000) as server:
        monkeypatch.setenv("PNNDEPLOY_CHIP_TOKEN", server.token_file.read_text().strip())
        yield server


def _post(server: ChipServer, path: str, content: bytes, kind: str = BINARY_TYPE, accept: str = BINARY_TYPE,
          token: bool = True) -> httpx.Response:
    headers = {"Content-Type": kind, "Accept": accept}
    if token:
        headers["Authorization"] = f"Bearer {server.token_file.read_text().strip()}"
    return httpx.post(f"{server.url}/v1{path}", content=content, headers=headers, timeout=20)


def _settings(tiny_fleet_dir: Path, seed: int = 0) -> np.ndarray:
    from pnndeploy.formats.profiles import read_profile

    lo, hi = read_profile(tiny_fleet_dir / "chipA.h5").environment.heater_range
    return np.random.default_rng(seed).uniform(lo, hi, (4, 6))


def test_the_server_refuses_hostile_binary_bodies_with_a_json_400_and_keeps_serving(station, tiny_fleet_dir):
    x = np.random.default_rng(1).random((2, 6))
    fields = {"layer": 0, "weight_shape": [4, 6]}
    ok = _post(station, "/measure", encode_frame(fields, {"settings": _settings(tiny_fleet_dir), "x": x}))
    assert ok.status_code == 200 and ok.headers["content-type"] == BINARY_TYPE
    assert "readout;dur=" in ok.headers["server-timing"]
    reply, arrays = decode_frame(ok.content, "reply")
    assert arrays["y"].shape == (2, 4) and reply["programmed"] is True
    cases = {
        "2^40 values": (_head(1, b'{"layer": 0}') + _array(shape=(1 << 20, 1 << 20), data=b""), "more than the limit"),
        "big-endian": (_head(1, b'{"layer": 0}') + _array(code=0x81), "little-endian"),
        "truncated": (encode_frame(fields, {"x": x})[:-3], "truncated"),
        "trailing": (encode_frame(fields, {"x": x}) + b"\0", "trailing"),
        "NaN input": (encode_frame({"layer": 0, "base": reply["version"]}, {"x": x * np.nan}), "NaN"),
        "inf settings": (encode_frame(fields, {"settings": _settings(tiny_fleet_dir) * np.inf, "x": x}), "NaN"),
        "mask bits over": (encode_frame({"layer": 0, "base": reply["version"]},
                                        {"mask": np.full(4, 255, np.uint8), "values": np.zeros(32), "x": x}),
                           "must be 3 bytes"),
        "mask and values disagree": (encode_frame({"layer": 0, "base": reply["version"]},
                                                  {"mask": np.array([1, 0, 0], np.uint8), "values": np.zeros(2),
                                                   "x": x}), "holds 2"),
    }
    for name, (body, fragment) in cases.items():
        refused = _post(station, "/measure", body)
        assert refused.status_code == 400, name
        assert refused.headers["content-type"] == "application/json" and fragment in refused.json()["error"], name
    assert _post(station, "/measure", GOOD, token=False).status_code == 401          # the guard holds
    assert _post(station, "/infer", bytes(17 * 1024 * 1024)).status_code == 413
    again = _post(station, "/measure", encode_frame({"layer": 0, "base": reply["version"]}, {"x": x}))
    assert again.status_code == 200 and decode_frame(again.content, "r")[0]["programmed"] is False


def test_a_client_that_asks_for_json_gets_json(station, tiny_fleet_dir):
    headers = {"Authorization": f"Bearer {station.token_file.read_text().strip()}"}
    info = httpx.get(f"{station.url}/v1/info", headers=headers, timeout=5).json()
    assert info["wire"] == {"binary": BINARY_TYPE, "frame_version": 1, "stream": {
        "path": "/v1/stream", "subprotocol": "pnndeploy.stream.v1",
        "serves": ["/v1/infer", "/v1/measure", "/v1/measure_transfer"]}} and "measure" in info["supports"]
    from pnndeploy.backends.wire import encode_array

    body = {"layer": 0, "weight_shape": [4, 6], "settings": encode_array(_settings(tiny_fleet_dir)),
            "x": encode_array(np.ones((1, 6)))}
    reply = httpx.post(f"{station.url}/v1/measure", headers=headers, json=body, timeout=5)
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    assert reply.json()["y"]["dtype"] == "<f8" and reply.json()["programmed"] is True


# ----------------------------------------------------------------------------------------------- client

def _backend(server: ChipServer, wire: str) -> HttpBackend:
    backend = HttpBackend(server.url, {"wire": wire})
    backend.open()
    return backend


def test_only_changed_settings_are_sent_and_a_restart_or_another_client_is_recovered(station, tiny_fleet_dir,
                                                                                    tmp_path):
    settings, x = _settings(tiny_fleet_dir), np.random.default_rng(2).random((3, 6))
    backend = _backend(station, "binary")
    assert backend.binary
    sent = []
    for change in (settings, settings, settings + np.eye(4, 6) * 1e-3):
        before = backend.bytes_sent
        _, programmed = backend.measure_layer(LayerProgram(0, (4, 6), change), x)
        sent.append((backend.bytes_sent - before, programmed))
    assert [p for _, p in sent] == [True, False, True] and backend.exchanges == 1 + 3        # /info, 3 measures
    assert sent[1][0] < sent[0][0] - 24 * 8 + 16                         # unchanged: no settings at all
    assert sent[2][0] < sent[0][0] - 24 * 8 + 16 + 3 + 4 * 8 + 64        # 4 changed: a 3-byte mask and 4 values
    reference = HttpBackend(station.url, {"wire": "json"})
    reference.open()
    reference.program([LayerProgram(0, (4, 6), settings)])              # another client re-programs slot 0
    ran = []                                                             # work meanwhile: once, 409 or not
    y_other, programmed = backend.measure_layer(LayerProgram(0, (4, 6), settings + 1e-3), x, lambda: ran.append(1))
    assert programmed and station.log.read_text().count(" /v1/measure 409 ") == 1 and ran == [1]
    port = station.port
    station.stop()
    with ChipServer(tiny_fleet_dir / "chipA.h5", tmp_path / "again", "--measurement-noise", "0", "--port", str(port),
                    "--token-file", str(station.token_file), idle=60, max_requests=200) as restarted:
        backend.open()                                                   # the token is the env's, as before
        y_new, programmed = backend.measure_layer(LayerProgram(0, (4, 6), settings + 1e-3), x)
        assert programmed and restarted.log.read_text().count(" /v1/measure 409 ") == 1
        np.testing.assert_allclose(y_new, y_other, atol=0.05)           # the same chip (detector noise apart)
    backend.close()
    reference.close()


def _in_situ(server: ChipServer, wire: str, tiny_fleet_dir: Path, digits, out: Path) -> tuple[list, HttpBackend]:
    import onnx
    from onnx import numpy_helper

    from pnndeploy.formats.profiles import read_profile
    from pnndeploy.training.config import TrainConfig
    from pnndeploy.training.in_situ import InSituChip
    from pnndeploy.training.pipeline import train_and_export

    profile = read_profile(tiny_fleet_dir / "chipA.h5")
    chip = InSituChip(_backend(server, wire), profile)
    train_and_export(digits, TrainConfig(method="sat", epochs=1, seed=0, hidden=[8]), out, chip=chip)
    chip.backend.close()
    return [numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer], chip.backend


def test_an_in_situ_training_gives_the_same_model_bit_for_bit_on_either_wire(tmp_path, tiny_fleet_dir, tiny_digits,
                                                                           monkeypatch):
    results = {}
    for wire in ("json", "binary", "stream"):                            # a fresh station each: same noise draws
        with ChipServer(tiny_fleet_dir / "chipA.h5", tmp_path / wire, idle=60, max_requests=500) as server:
            monkeypatch.setenv("PNNDEPLOY_CHIP_TOKEN", server.token_file.read_text().strip())
            results[wire] = _in_situ(server, wire, tiny_fleet_dir, tiny_digits, tmp_path / f"{wire}.onnx")
            if wire == "stream":                                         # every measurement a message on it
                assert server.requests_logged("/v1/stream") == 1
                assert server.requests_logged("/v1/measure") == results[wire][1].exchanges - 1
                assert " STREAM /v1/measure 200 " in server.log.read_text()
    (json_model, json_backend), (binary_model, binary_backend), (stream_model, stream_backend) = results.values()
    assert len(json_model) == len(binary_model) == len(stream_model)
    for a, b, c in zip(json_model, binary_model, stream_model):
        assert a.tobytes() == b.tobytes() == c.tobytes()
    steps = -(-160 // 32)
    assert json_backend.exchanges == binary_backend.exchanges == stream_backend.exchanges == 1 + 2 * 2 * steps
    assert binary_backend.bytes_sent < 0.8 * json_backend.bytes_sent
    assert stream_backend.bytes_sent == binary_backend.bytes_sent      # the same frames, in messages
    assert binary_backend.station_seconds["chip"] > 0 and stream_backend.station_seconds["chip"] > 0
    assert not binary_backend.streamed and stream_backend.streamed


def test_a_hostile_binary_reply_is_one_line(station, monkeypatch):
    backend = _backend(station, "binary")
    claim = _head(1, b'{"version": "v", "programmed": true}') + _array(name=b"y", shape=(1 << 20, 1 << 20), data=b"")
    monkeypatch.setattr(backend, "_read_limited", lambda headers, chunks, where: claim)
    with pytest.raises(BackendError) as err:
        backend.measure_layer(LayerProgram(0, (4, 6), np.zeros((4, 6))), np.ones((1, 6)))
    assert "malformed reply" in str(err.value) and "more than the limit" in str(err.value)
    assert "\n" not in str(err.value)
    backend.close()


def test_chip_connect_wire_json_trains_in_situ_over_json_and_a_bad_wire_is_one_line(cli, station, tiny_fleet_dir,
                                                                                    tmp_path):
    import shutil

    from pnndeploy.deploy.hardware import open_chip
    from pnndeploy.formats.profiles import read_profile

    folder = tmp_path / "profiles"
    shutil.copytree(tiny_fleet_dir, folder)
    for name, wire, poll in (("chipA-json", "json", []), ("chipA-bin", "auto", ["--busy-poll-ms", "0.5"])):
        result = cli("chip", "connect", "chipA", "--profiles", folder, "--address", station.url, "--token-file",
                     station.token_file, "--name", name, "--wire", wire, *poll)
        assert result.exit_code == 0, result.output
    backend = open_chip(read_profile(folder / "chipA-json.h5"))
    assert backend.wire == "json" and not backend.binary and backend.busy_poll_ms == 2.0      # the default
    backend.close()
    assert open_chip(read_profile(folder / "chipA-bin.h5")).busy_poll_ms == 0.5
    for name, wire in (("chipA-json", "json"), ("chipA-bin", "stream")):     # chip info says which it takes
        shown = cli("chip", "info", name, "--profiles", folder, "--json")
        assert shown.exit_code == 0 and json.loads(shown.stdout)["wire"] == wire, shown.output
    before = station.requests_logged("/v1/measure")
    result = cli("train", "--method", "standard", "--epochs", "1", "--hidden", "8", "--in-situ", "chipA-json",
                 "--in-situ-profiles", folder, "--out", tmp_path / "pat.onnx", "--json", "--seed", "0")
    assert result.exit_code == 0, result.output
    assert station.requests_logged("/v1/measure") - before == 2 * -(-1437 // 32)
    bad = cli("chip", "connect", "chipA", "--profiles", folder, "--address", station.url, "--wire", "pickle")
    assert bad.exit_code == 2 and "pickle" in bad.output
    for value in ("99", "nan"):
        bad = cli("chip", "connect", "chipA", "--profiles", folder, "--address", station.url, "--busy-poll-ms", value)
        assert bad.exit_code == 2 and "--busy-poll-ms" in bad.output and "Traceback" not in bad.output
    with pytest.raises(BackendError, match="wire='pickle': use one of auto, stream, binary, json"):
        HttpBackend(station.url, {"wire": "pickle"})


def test_the_lean_measure_route_answers_as_the_protocol_says_and_is_still_listed(station, tiny_fleet_dir):
    """POST /v1/measure is served past FastAPI's layers: its refusals keep their statuses and JSON bodies (409 with
    stale, 400, 413 with the connection closed), a GET is FastAPI's 405, and /openapi.json still lists it."""
    headers = {"Authorization": f"Bearer {station.token_file.read_text().strip()}"}
    x = np.ones((1, 6))
    stale = _post(station, "/measure", encode_frame({"layer": 0, "base": "nope-1"}, {"x": x}))
    assert stale.status_code == 409 and stale.json()["stale"] is True
    not_object = _post(station, "/measure", b"[1, 2]", kind="application/json")
    assert not_object.status_code == 400 and "not a JSON object" in not_object.json()["error"]
    chunked = httpx.post(f"{station.url}/v1/measure", headers={**headers, "Content-Type": BINARY_TYPE},
                         content=iter([bytes(9 * 1024 * 1024), bytes(9 * 1024 * 1024)]), timeout=20)
    assert chunked.status_code == 413 and chunked.headers["connection"] == "close"      # counted as it arrives
    assert httpx.get(f"{station.url}/v1/measure", headers=headers, timeout=5).status_code == 405
    listed = httpx.get(f"{station.url}/openapi.json", headers=headers, timeout=5).json()
    assert "post" in listed["paths"]["/v1/measure"]

"""Issue 26's faster in-situ step: the lean binary-wire exchange of the http backend, against a real chip server
and against stations that misbehave on purpose, and the mapping's sparse neighbour sums.

The lean path (h11 on one kept-alive socket, :mod:`pnndeploy.backends.exchange`) must measure what the httpx
path measures, and keep every bound of it: one deadline over the exchange, a reply's size and encoding refused
before it is read, a malformed reply one line, a connection the server closed replaced, not reused.
"""

from __future__ import annotations

import gzip
import socket
import time
from typing import Callable

import numpy as np
import pytest

from chip_server import ChipServer
from pnndeploy.backends.base import BackendError, LayerProgram
from pnndeploy.backends.frame import BINARY_TYPE, encode_frame
from pnndeploy.backends.http import HttpBackend
from test_security_network import EvilStation, tls_station  # noqa: F401 - a fixture

INFO = (b'{"device_id": "chipB", "platform": "mrr", "array": [16, 16], "firmware": "evil", "supports": '
        b'["measure"], "wire": {"binary": "' + BINARY_TYPE.encode() + b'", "frame_version": 1}}')


def test_the_lean_binary_exchange_measures_what_the_json_wire_measures(tmp_path, tiny_fleet_dir, monkeypatch):
    from pnndeploy.formats.profiles import read_profile

    lo, hi = read_profile(tiny_fleet_dir / "chipA.h5").environment.heater_range
    rng = np.random.default_rng(3)
    settings, x = rng.uniform(lo, hi, (4, 6)), rng.random((5, 6))
    ys = {}
    for wire in ("json", "binary", "stream"):             # a fresh station each: the same detector-noise draws
        with ChipServer(tiny_fleet_dir / "chipA.h5", tmp_path / wire, "--measurement-noise", "0", idle=60,
                        max_requests=100) as server:
            monkeypatch.setenv("PNNDEPLOY_CHIP_TOKEN", server.token_file.read_text().strip())
            backend = HttpBackend(server.url, {"wire": wire})
            backend.open()
            ys[wire] = [backend.measure_layer(LayerProgram(1, (4, 6), settings + k * 1e-3), x)[0] for k in (0, 0, 1)]
            assert (backend._lean._stream is not None) == (wire == "binary")    # httpx never opened it
            assert (backend._stream._socket is not None) == (wire == "stream")
            backend.close()
    for a, b, c in zip(ys["json"], ys["binary"], ys["stream"]):
        assert a.tobytes() == b.tobytes() == c.tobytes()


@pytest.fixture(autouse=True)
def token(monkeypatch):
    monkeypatch.setenv("PNNDEPLOY_CHIP_TOKEN", "a-token-of-sixteen-characters-or-more")


def _evil_backend(evil_station: EvilStation, timeout: float = 2.0, retries: int = 0) -> HttpBackend:
    backend = HttpBackend(evil_station.url, {"wire": "binary", "retries": retries}, timeout=timeout)
    backend.open()
    assert backend.binary
    return backend


def _info_then(behave: Callable[[socket.socket], None], info: bytes = INFO) -> Callable[[socket.socket], None]:
    """A station that answers /info with ``info`` (its first connection), then ``behave``s on every later one."""
    calls = [0]

    def answer(conn: socket.socket) -> None:
        calls[0] += 1
        if calls[0] == 1:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(info) + info)
        else:
            behave(conn)

    return answer


def _frame_reply(extra: bytes = b"") -> bytes:
    body = encode_frame({"version": "v-1", "programmed": True}, {"y": np.zeros((1, 4))})
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + BINARY_TYPE.encode() + b"\r\nContent-Length: %d\r\n" % len(body)
            + extra + b"\r\n" + body)


def _slow_head(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for _ in range(100):
        conn.sendall(b"X-Slow: 1\r\n")
        time.sleep(0.1)


def _endless(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: " + BINARY_TYPE.encode() + b"\r\nConnection: close\r\n\r\n")
    for _ in range(400):
        conn.sendall(b"\0" * 65536)


def _huge_head(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n")


@pytest.mark.parametrize("behave, fragment", [
    (_slow_head, "no reply within --timeout 1 s after 1 tries"),
    (_endless, "larger than the limit"),
    (lambda c: c.sendall(_frame_reply().replace(b"Content-Length: ", b"Content-Length: 99999999")),
     "larger than the limit"),
    (lambda c: c.sendall(_frame_reply(b"Content-Encoding: gzip\r\n")), "'gzip'-encoded reply"),
    (_huge_head, "malformed reply"),
    (lambda c: c.sendall(b"SPAM 200 OK\r\n\r\n"), "malformed reply"),
    (lambda c: c.sendall(_frame_reply()[:-5]), "closed connection without sending complete message body"),
], ids=["slow-head", "endless", "declared-huge", "gzip", "huge-head", "not-http", "cut-short"])
def test_a_hostile_station_is_one_line_on_the_lean_exchange(behave, fragment):
    evil = EvilStation(_info_then(behave))
    try:
        backend = _evil_backend(evil, timeout=1.0)
        start = time.monotonic()
        with pytest.raises(BackendError) as err:
            backend.measure_layer(LayerProgram(0, (4, 16), np.zeros((4, 16))), np.ones((1, 16)))
        assert fragment in str(err.value) and "\n" not in str(err.value)
        assert time.monotonic() - start < 1.0 + 2.0                     # one deadline, then refused
        assert backend._lean._stream is None                              # never reused
        backend.close()
    finally:
        evil.close()


def test_a_gzip_bomb_is_refused_without_reading_it():
    bomb = gzip.compress(bytes(16 << 20), 9)
    evil = EvilStation(_info_then(lambda c: c.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: " + BINARY_TYPE.encode() + b"\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: %d\r\n\r\n" % len(bomb) + bomb)))
    try:
        with pytest.raises(BackendError, match="never inflated"):
            _evil_backend(evil).measure_layer(LayerProgram(0, (4, 16), np.zeros((4, 16))), np.ones((1, 16)))
        head = evil.requests[-1].lower()
        assert b"accept-encoding: identity" in head and b"authorization: bearer " in head
        assert b"content-type: " + BINARY_TYPE.encode() in head
    finally:
        evil.close()


def test_a_connection_the_station_closed_is_replaced_not_reused():
    """The station answers one request per connection and closes it without saying so: the client sees the
    closed socket before its next request and opens a new connection instead of failing (or retrying)."""
    evil = EvilStation(_info_then(lambda c: c.sendall(_frame_reply())))
    try:
        backend = _evil_backend(evil, retries=0)
        for _ in range(3):
            time.sleep(0.05)                                              # the station's close has arrived
            y, _ = backend.measure_layer(LayerProgram(0, (4, 16), np.zeros((4, 16))), np.ones((1, 16)))
            assert y.shape == (1, 4)
        assert len(evil.requests) == 1 + 3
        backend.close()
    finally:
        evil.close()


def test_the_sparse_neighbour_sums_are_the_masked_sums_bit_for_bit():
    from pnndeploy.platforms.mrr import _neighbour_sum
    from pnndeploy.platforms.tiling import ring_index

    rng = np.random.default_rng(0)
    for shape, layout in (((32, 64), (16, 16)), ((10, 32), (16, 16)), ((7, 5), (3, 4)), ((1, 1), (2, 2))):
        _, ci = ring_index(shape, layout)
        spill = _neighbour_sum(ci, layout)
        has_left = ci[:, 1:] > 0
        has_right = ((ci < layout[1] - 1) & (np.arange(shape[1]) < shape[1] - 1)[None, :])[:, :-1]
        for _ in range(20):
            h = rng.uniform(-3, 3, shape)
            h[rng.random(shape) < 0.2] = -0.0
            h[rng.random(shape) < 0.2] = 0.0
            masked = np.zeros_like(h)                                     # the sums as they were written
            masked[:, 1:] += np.where(has_left, h[:, :-1], 0.0)
            masked[:, :-1] += np.where(has_right, h[:, 1:], 0.0)
            assert spill(h).tobytes() == masked.tobytes()
        stacked = rng.uniform(-3, 3, (2, *shape))                        # stacked layers: the masked sums
        assert np.array_equal(spill(stacked)[1], spill(stacked[1]))


def test_the_sparse_neighbour_sums_of_cpu_tensors_are_the_masked_sums_bit_for_bit():
    """A chip server's program and a fleet's layers (float64 tensors, one chip or stacked) take the sparse product
    too: the same bits as the masked sums they had, signed zeros, NaN and inf included; a tensor that needs a
    gradient, or float32, keeps the masked sums."""
    import torch

    from pnndeploy.platforms.mrr import _neighbour_sum
    from pnndeploy.platforms.tiling import ring_index

    rng = np.random.default_rng(1)
    for shape, layout in (((32, 64), (16, 16)), ((10, 32), (16, 16)), ((7, 5), (3, 4)), ((1, 1), (2, 2))):
        _, ci = ring_index(shape, layout)
        spill = _neighbour_sum(ci, layout)
        left = torch.from_numpy(ci[:, 1:] > 0)
        right = torch.from_numpy(((ci < layout[1] - 1) & (np.arange(shape[1]) < shape[1] - 1)[None, :])[:, :-1])
        for chips in (1, 3):
            h = rng.uniform(-3, 3, (chips, *shape))
            for value, share in ((-0.0, 0.2), (0.0, 0.2), (np.nan, 0.02), (-np.inf, 0.02)):
                h[rng.random(h.shape) < share] = value
            t = torch.from_numpy(h)
            masked = torch.zeros_like(t)                                   # the sums as they were written
            masked[..., 1:] += torch.where(left, t[..., :-1], t.new_zeros(()))
            masked[..., :-1] += torch.where(right, t[..., 1:], t.new_zeros(()))
            with torch.inference_mode():
                got = spill(t.clone())
            assert got.shape == t.shape and got.dtype == torch.float64
            assert got.numpy().tobytes() == masked.numpy().tobytes()
        graded = torch.from_numpy(rng.uniform(-3, 3, (2, *shape))).requires_grad_()
        spill(graded).sum().backward()                                     # the masked sums: a gradient
        assert graded.grad is not None
        single = torch.from_numpy(rng.uniform(-3, 3, (1, *shape))).float()
        assert spill(single).dtype == torch.float32


@pytest.mark.parametrize("wire", ["binary", "stream"])
def test_the_lean_exchange_speaks_tls_and_verifies_the_station(cli, tls_station, tiny_fleet_dir, tmp_path,  # noqa: F811
                                                              wire):
    """Over https the lean exchange and the stream (wss) verify the station against the profile's CA as httpx
    does; a station whose certificate that CA did not sign is one line, not retried."""
    import shutil
    import ssl

    from pnndeploy.deploy.hardware import open_chip
    from pnndeploy.formats.profiles import read_profile

    server, pki, other = tls_station
    folder = tmp_path / "profiles"
    shutil.copytree(tiny_fleet_dir, folder)
    made = cli("chip", "connect", "chipB", "--profiles", folder, "--address", server.url, "--token-file",
               server.token_file, "--ca-file", pki["ca"], "--wire", wire)
    assert made.exit_code == 0, made.output
    backend = open_chip(read_profile(folder / "chipB-remote.h5"))
    assert backend.binary and backend.streamed == (wire == "stream")
    y, programmed = backend.measure_layer(LayerProgram(0, (4, 6), np.zeros((4, 6))), np.ones((2, 6)))
    assert y.shape == (2, 4) and programmed
    exchange = backend._stream if wire == "stream" else backend._lean
    assert (exchange._socket if wire == "stream" else exchange._stream).get_extra_info("ssl_object") is not None
    exchange.close()
    exchange.endpoint.tls = ssl.create_default_context(cafile=str(other["ca"]))
    start = time.monotonic()
    with pytest.raises(BackendError, match="TLS handshake failed.*certificate verify failed"):
        backend.measure_layer(LayerProgram(0, (4, 6), np.zeros((4, 6))), np.ones((2, 6)))
    assert time.monotonic() - start < 2.0
    backend.close()

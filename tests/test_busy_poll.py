"""A measurement's read polls its socket for a while before it sleeps, gives up on a slow station, and never
outlives the exchange's deadline (issue 26: on a virtual machine, sleeping through a millisecond's wait for the
station costs as much as the wait)."""

from __future__ import annotations

import socket
import threading
import time

import httpcore
import numpy as np
import pytest

from chip_server import ChipServer
from pnndeploy.backends.base import BackendError, LayerProgram
from pnndeploy.backends.busy_poll import BusyPoll
from pnndeploy.backends.deadline import Deadline, _Stream
from pnndeploy.backends.http import HttpBackend


def _pair(seconds: float, deadline: Deadline | None = None) -> tuple[_Stream, socket.socket]:
    ours, theirs = socket.socketpair()
    return _Stream(ours, deadline or Deadline(), BusyPoll(seconds)), theirs


def _answer_after(peer: socket.socket, delay: float, *parts: bytes) -> threading.Thread:
    """``peer`` reads a request, then sends ``parts`` (default ``b"reply"``) ``delay`` s apart."""
    def answer() -> None:
        peer.recv(100)
        for part in parts or (b"reply",):
            time.sleep(delay)
            peer.sendall(part)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


def _ask(stream: _Stream) -> None:
    stream.write(b"request", 5.0)


def test_a_reply_within_the_budget_is_read_by_polling():
    stream, peer = _pair(0.5)
    thread = _answer_after(peer, 0.02)
    _ask(stream)
    assert stream.read(100, 5.0) == b"reply"
    thread.join()
    assert (stream.busy_poll.polls, stream.busy_poll.hits) == (1, 1)
    peer.sendall(b"more")                                   # not asked for: read without polling
    assert stream.read(100, 5.0) == b"more" and stream.busy_poll.polls == 1


def test_a_slow_station_is_read_by_sleeping_and_soon_no_longer_polled():
    """Replies that come after the budget are read all the same; after BusyPoll.MISSES misses in a row the read
    polls only every PROBE_EVERY-th time, so a slow station costs little CPU; once a probe finds its reply, every
    read polls again."""
    stream, peer = _pair(0.002)
    poll, asked, cpu = stream.busy_poll, 40, time.process_time()
    for k in range(asked):
        thread = _answer_after(peer, 0.01, b"%d" % k)
        _ask(stream)
        assert stream.read(100, 5.0) == b"%d" % k
        thread.join()
    cpu = time.process_time() - cpu
    assert poll.hits == 0 and poll.polls <= BusyPoll.MISSES + asked // BusyPoll.PROBE_EVERY
    assert cpu < 0.2                        # polling every read would spin 40 x 2 ms; most of it is sleeping here
    for _ in range(BusyPoll.PROBE_EVERY):   # a fast station again: within PROBE_EVERY requests a probe finds it
        peer.sendall(b"f")
        _ask(stream)
        assert stream.read(100, 5.0) == b"f"
        peer.recv(100)
    assert poll.hits >= 1 and poll.misses == 0
    hits = poll.hits
    peer.sendall(b"g")
    _ask(stream)
    assert stream.read(100, 5.0) == b"g" and poll.hits == hits + 1


def test_the_rest_of_a_reply_neither_polls_nor_counts():
    """A reply in two parts (a head, then its body) from a slow station: only the first read polls, so the body
    found waiting never counts as the station being fast, and the give-up still comes."""
    stream, peer = _pair(0.002)
    for k in range(12):
        thread = _answer_after(peer, 0.01, b"head", b"body")
        _ask(stream)
        assert stream.read(100, 5.0) == b"head"
        time.sleep(0.02)                                   # the body is there when it is read
        assert stream.read(100, 5.0) == b"body"
        thread.join()
    assert stream.busy_poll.hits == 0 and stream.busy_poll.polls == BusyPoll.MISSES


def test_polling_never_outlives_the_deadline():
    deadline = Deadline()
    stream, _peer = _pair(5.0, deadline)                   # a budget far beyond the exchange's deadline
    _ask(stream)
    deadline.at = time.monotonic() + 0.15
    start = time.monotonic()
    with pytest.raises(httpcore.ReadTimeout):
        stream.read(100, 5.0)
    assert 0.14 < time.monotonic() - start < 1.0


def test_no_budget_never_polls():
    stream, peer = _pair(0.0)
    peer.sendall(b"x")
    _ask(stream)
    assert stream.read(10, 1.0) == b"x" and stream.busy_poll.polls == 0


@pytest.mark.parametrize("value", ["fast", -1, 51, True, np.True_, float("nan"), None, 10 ** 400])
def test_a_bad_busy_poll_option_is_one_line(value):
    with pytest.raises(BackendError, match=r"busy_poll_ms=.*use a number of milliseconds in 0\.\.50"):
        HttpBackend("http://127.0.0.1:1", {"busy_poll_ms": value})


@pytest.mark.parametrize("wire", ["stream", "binary"])
def test_measurements_poll_for_a_loopback_station_and_are_the_same_without(tmp_path, tiny_fleet_dir, monkeypatch,
                                                                           wire):
    """A real chip server on loopback answers a layer within a poll's budget (the largest, so a loaded machine
    cannot make it miss): its replies are read by polling, on the stream and on the binary wire; with busy_poll_ms
    0 nothing polls, and the station measures the same values (a fresh station each: the same detector-noise
    draws)."""
    from pnndeploy.formats.profiles import read_profile

    lo, hi = read_profile(tiny_fleet_dir / "chipA.h5").environment.heater_range
    rng = np.random.default_rng(3)
    settings, x = rng.uniform(lo, hi, (4, 6)), rng.random((5, 6))
    measured = {}
    for ms in (50.0, 0.0):
        with ChipServer(tiny_fleet_dir / "chipA.h5", tmp_path / str(ms), "--measurement-noise", "0", idle=60,
                        max_requests=100) as server:
            monkeypatch.setenv("PNNDEPLOY_CHIP_TOKEN", server.token_file.read_text().strip())
            backend = HttpBackend(server.url, {"busy_poll_ms": ms, "wire": wire})
            backend.open()
            try:
                measured[ms] = [backend.measure_layer(LayerProgram(1, (4, 6), settings + k * 1e-3), x)[0]
                                for k in (0, 0, 1, 2)]
                assert backend.wire_in_use == wire
                assert (backend.busy_poll.hits >= 3) if ms else (backend.busy_poll.polls == 0)
            finally:
                backend.close()
    for a, b in zip(measured[50.0], measured[0.0]):
        assert a.tobytes() == b.tobytes()

"""Issue 26's stream: the binary wire's exchanges as messages on one WebSocket (``/v1/stream``).

Its envelopes against hostile bytes; a real chip server's end against unauthenticated,
malformed, oversized, trickled and idle streams (each a one-line refusal or a drop by the
connection guard, logged and counted, never a traceback); the client's end against a
station that misbehaves on the stream on purpose (each one line within one deadline,
never retried where retrying cannot help).
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Callable

import numpy as np
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Message, RejectConnection,
                            Request, TextMessage)
from wsproto.extensions import PerMessageDeflate

from chip_server import ChipServer
from pnndeploy.backends.base import BackendError, LayerProgram
from pnndeploy.backends.deadline import Deadline
from pnndeploy.backends.frame import BINARY_TYPE, decode_frame, encode_frame
from pnndeploy.backends.http import HttpBackend
from pnndeploy.backends.stream import (MAX_MESSAGE_BYTES, SUBPROTOCOL, HandshakeRefused, Stream,
                                       decode_reply, decode_request, encode_reply, encode_request)
from pnndeploy.backends.wire import MAX_BODY_BYTES, WireError
from test_lean_exchange import _info_then
from test_security_network import ATTACK_S, EvilStation, _closed, _no_traceback, _token

# ------------------------------------------------------------------------------------------------ envelopes


def test_envelopes_round_trip():
    assert decode_request(encode_request("/v1/measure", b"PNNA...")) == ("/v1/measure", b"PNNA...")
    assert decode_request(encode_request("/v1/x", b"")) == ("/v1/x", b"")
    assert decode_reply(encode_reply(409, "chip;dur=0.120", b'{"error": "stale"}')) == \
        (409, "chip;dur=0.120", b'{"error": "stale"}')
    assert decode_reply(encode_reply(200, "", b"")) == (200, "", b"")
    assert len(encode_reply(200, "x" * 5000, b"")) == 4 + 512                  # the timing cut, never refused


@pytest.mark.parametrize("message, fragment", [
    (b"", "empty"),
    (bytes([200]) + b"/v1/measure", "missing, too long"),                    # a length past the message
    (bytes([65]) + b"/" * 65, "missing, too long"),                          # longer than MAX_PATH_BYTES
    (bytes([3]) + b"/V1", "not lower-case"),
    (bytes([4]) + b"/v\x1b1", "not lower-case"),
    (bytes([2]) + b"v1", "not lower-case"),                                  # not a path
])
def test_a_hostile_request_envelope_is_one_clear_error(message, fragment):
    with pytest.raises(WireError, match=fragment):
        decode_request(message)


@pytest.mark.parametrize("message, fragment", [
    (b"\x01", "fewer than its 4-byte head"),
    (struct.pack("<HH", 42, 0), "status 42"),
    (struct.pack("<HH", 200, 600) + b"x" * 700, "600 bytes of timing"),
    (struct.pack("<HH", 200, 10) + b"short", "10 bytes of timing"),
])
def test_a_hostile_reply_envelope_is_one_clear_error(message, fragment):
    with pytest.raises(WireError, match=fragment):
        decode_reply(message)


def test_a_path_that_cannot_travel_is_refused_before_sending():
    for path in ("v1/measure", "/v1/" + "a" * 70, "/v1/mé", "/v1/a b"):
        with pytest.raises((WireError, UnicodeEncodeError)):
            encode_request(path, b"")


# ------------------------------------------------------------------------------------- a raw stream client

class RawStream:
    """A WebSocket client on a plain socket that says exactly what the test wants (wsproto, the same library)."""

    def __init__(self, port: int, token: str | None, target: str = "/v1/stream",
                 subprotocols: tuple[str, ...] = (SUBPROTOCOL,), extensions: list | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.ws = WSConnection(ConnectionType.CLIENT)
        headers = [(b"authorization", f"Bearer {token}".encode())] if token is not None else []
        self.sock.sendall(self.ws.send(Request(host="x", target=target, subprotocols=list(subprotocols),
                                               extensions=extensions or [], extra_headers=headers)))
        self.handshake = self.event()
        self.refusal = b""
        if isinstance(self.handshake, RejectConnection) and self.handshake.has_body:
            while True:
                data = self.event()
                self.refusal += data.data
                if data.body_finished:
                    break

    def event(self) -> object:
        while True:
            for event in self.ws.events():
                return event
            data = self.sock.recv(65536)
            if not data:
                return None
            self.ws.receive_data(data)

    def ask(self, message: bytes | str) -> tuple[int, str, bytes]:
        self.sock.sendall(self.ws.send(Message(data=message)))
        parts = b""
        while True:
            event = self.event()
            assert isinstance(event, BytesMessage), event
            parts += event.data
            if event.message_finished:
                return decode_reply(parts)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def station(tmp_path_factory, tiny_fleet_dir):
    """A chip server for the attacks on its stream: 4 s for a message to begin, 1 s to end, 6 connections a client."""
    folder = tmp_path_factory.mktemp("stream-station")
    with ChipServer(tiny_fleet_dir / "chipB.h5", folder, "--header-timeout", "4", "--body-timeout", "1",
                    "--max-connections", "24", "--max-client-connections", "6", idle=60) as server:
        yield server


def _measure_body(**extra: object) -> bytes:
    fields = {"layer": 0, "weight_shape": [4, 6], **extra}
    return encode_frame(fields, {"settings": np.zeros((4, 6)), "x": np.ones((2, 6))})


# ------------------------------------------------------------------------------------ the server's end

@pytest.mark.parametrize("token, target, subprotocols, status, fragment", [
    (None, "/v1/stream", (SUBPROTOCOL,), 401, "missing or wrong token"),
    ("wrong-token-of-sixteen-chars", "/v1/stream", (SUBPROTOCOL,), 401, "missing or wrong token"),
    ("TOKEN", "/v1/stream", (), 400, "offer the WebSocket subprotocol"),
    ("TOKEN", "/v1/stream", ("pnndeploy.stream.v2",), 400, "offer the WebSocket subprotocol"),
    ("TOKEN", "/v1/other", (SUBPROTOCOL,), 404, "no stream at"),
], ids=["no-token", "wrong-token", "no-subprotocol", "other-version", "other-path"])
def test_a_refused_handshake_is_an_http_error_of_one_line(station, token, target, subprotocols, status, fragment):
    raw = RawStream(station.port, _token(station) if token == "TOKEN" else token, target, subprotocols)
    try:
        assert isinstance(raw.handshake, RejectConnection) and raw.handshake.status_code == status
        assert fragment in json.loads(raw.refusal)["error"]
        assert raw.event() is None                                        # and the connection closed
    finally:
        raw.close()
    _no_traceback(station, f" GET {target} {status} ")


def test_the_stream_serves_measurements_and_answers_refusals_without_closing(station):
    raw = RawStream(station.port, _token(station))
    try:
        assert isinstance(raw.handshake, AcceptConnection) and raw.handshake.subprotocol == SUBPROTOCOL
        status, timing, body = raw.ask(encode_request("/v1/measure", _measure_body()))
        fields, arrays = decode_frame(body, "reply")
        assert status == 200 and fields["programmed"] is True and arrays["y"].shape == (2, 4)
        assert "chip;dur=" in timing and "readout;dur=" in timing
        refusals = [
            ("text", 400, "binary messages only"),
            (encode_request("/v1/measure", b"PNNA\x09garbage"), 400, "a frame of version 9"),
            (encode_request("/v1/measure", b"JSON{}" + b" " * 20), 400, "not a pnndeploy frame"),
            (encode_request("/v1/program", _measure_body()), 404, "the stream serves /v1/infer, /v1/measure"),
            (encode_request("/v1/measure", encode_frame({"layer": 0, "base": "someone-else"}, {"x": np.ones((2, 6))})),
             409, "someone-else"),
            (b"\x03/V1", 400, "not lower-case"),
        ]
        for message, expected, fragment in refusals:
            status, timing, body = raw.ask(message)
            error = json.loads(body)
            assert status == expected and fragment in error["error"] and timing == "", (status, error)
            assert error.get("stale") is (True if expected == 409 else None)
        status, _, body = raw.ask(encode_request("/v1/measure", _measure_body()))      # still served
        assert status == 200
    finally:
        raw.close()
    log = _no_traceback(station, " STREAM /v1/measure 409 ")
    assert " STREAM - 400 " in log and " STREAM /v1/program 404 " in log


def test_compression_is_never_negotiated(station):
    raw = RawStream(station.port, _token(station), extensions=[PerMessageDeflate()])
    try:
        assert isinstance(raw.handshake, AcceptConnection) and raw.handshake.extensions == []
        compressed = bytes([0xC2, 0x80 | 4]) + b"\0\0\0\0" + b"abcd"    # RSV1 set: a compressed frame
        raw.sock.sendall(compressed)
        event = raw.event()                                               # closed, the frame never read
        assert event is None or isinstance(event, CloseConnection) and event.code == 1002
    finally:
        raw.close()


def test_a_message_larger_than_a_body_is_refused_without_being_kept(station):
    raw = RawStream(station.port, _token(station))
    try:
        header = bytes([0x82, 0x80 | 127]) + struct.pack(">Q", MAX_BODY_BYTES + 10_000) + b"\0\0\0\0"
        raw.sock.sendall(header)
        sent, block = 0, b"\0" * 65536
        try:
            while sent < MAX_BODY_BYTES + 10_000:
                raw.sock.sendall(block)
                sent += len(block)
            event = raw.event()
        except OSError:                                                   # closed mid-message, reset
            event = None
        assert event is None or isinstance(event, CloseConnection) and event.code == 1009
    finally:
        raw.close()
    again = RawStream(station.port, _token(station))                     # and the server serves on
    try:
        assert again.ask(encode_request("/v1/measure", _measure_body()))[0] == 200
    finally:
        again.close()
    _no_traceback(station)


def test_a_trickled_message_is_cut_at_the_body_deadline_and_an_idle_stream_at_the_header_deadline(station):
    trickled, idle = RawStream(station.port, _token(station)), RawStream(station.port, _token(station))
    try:
        start = time.monotonic()
        trickled.sock.sendall(bytes([0x82, 0x80 | 126]) + struct.pack(">H", 1000) + b"\0\0\0\0" + b"x" * 10)
        for _ in range(int(ATTACK_S / 0.2)):
            if _closed(trickled.sock):
                break
            time.sleep(0.2)
            try:
                trickled.sock.sendall(b"x")
            except OSError:
                break
        cut = time.monotonic() - start
        assert 1.5 < cut < 3.5                                           # --body-timeout 1 (+ a grace second), not 4
        while not _closed(idle.sock) and time.monotonic() - start < ATTACK_S:
            time.sleep(0.1)
        assert 3.5 < time.monotonic() - start < 6.5                      # --header-timeout 4 after its accept
    finally:
        trickled.close()
        idle.close()
    log = _no_traceback(station, "no complete request within 4 s (--header-timeout)")
    assert "request body not complete within 1 s (--body-timeout)" in log


def test_waiting_streams_count_toward_the_connection_limits(station):
    streams = [RawStream(station.port, _token(station)) for _ in range(6)]
    try:
        assert all(isinstance(s.handshake, AcceptConnection) for s in streams)
        newcomer = RawStream(station.port, _token(station))                # the 7th from this client
        assert isinstance(newcomer.handshake, AcceptConnection)
        time.sleep(0.2)
        assert [_closed(s.sock) for s in streams] == [True] + [False] * 5  # the one that waited longest
        status, _, _ = newcomer.ask(encode_request("/v1/measure", _measure_body()))
        assert status == 200
        newcomer.close()
    finally:
        for s in streams:
            s.close()
    _no_traceback(station, "(--max-client-connections)")


def _never_reading_stream(port: int, token: str) -> tuple[socket.socket, WSConnection]:
    """A stream whose peer reads its handshake and then nothing (a 4 KiB receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host="x", target="/v1/stream", subprotocols=[SUBPROTOCOL],
                                 extra_headers=[(b"authorization", f"Bearer {token}".encode())])))
    while not any(isinstance(e, AcceptConnection) for e in ws.events()):
        ws.receive_data(sock.recv(4096))
    return sock, ws


def _flood(sock: socket.socket, ws: WSConnection, until: Callable[[], bool]) -> None:
    """Send large measurements without reading a reply until ``until()`` (or the attack's time is up)."""
    big = encode_request("/v1/measure", encode_frame({"layer": 0, "weight_shape": [4, 6]},
                                                     {"settings": np.zeros((4, 6)), "x": np.ones((256, 6))}))
    sock.settimeout(0.2)
    start = time.monotonic()
    while time.monotonic() - start < ATTACK_S and not until():
        try:
            sock.sendall(ws.send(Message(data=big)))
        except socket.timeout:
            pass
        except OSError:
            return


def test_a_peer_that_does_not_read_its_replies_is_dropped_at_the_body_deadline(tmp_path, tiny_fleet_dir):
    """Requests sent, replies never read: the server's writes back up; the guard aborts the stream once writing has
    been paused for --body-timeout (+1 s), serves others meanwhile, and nothing is left waiting on the peer: the
    server stops at once (a stream only closed, not aborted, would hold its task until the shutdown's timeout)."""
    with ChipServer(tiny_fleet_dir / "chipB.h5", tmp_path, "--header-timeout", "3", "--body-timeout", "1",
                    idle=30) as server:
        sock, ws = _never_reading_stream(server.port, _token(server))
        start = time.monotonic()
        try:
            _flood(sock, ws, lambda: "reply not read within 1 s (--body-timeout)" in server.log.read_text())
            assert time.monotonic() - start < 8.0
            other = RawStream(server.port, _token(server))                # the server still serves
            assert other.ask(encode_request("/v1/measure", _measure_body()))[0] == 200
            other.close()
            stopping = time.monotonic()
            server.stop()
            assert time.monotonic() - stopping < 1.5
        finally:
            sock.close()
    log = _no_traceback(server, "reply not read within 1 s (--body-timeout)")
    assert "Cancel" not in log                                            # no task left hanging on the peer


def test_streams_whose_peers_do_not_read_are_dropped_first_to_make_room(tmp_path, tiny_fleet_dir):
    with ChipServer(tiny_fleet_dir / "chipB.h5", tmp_path, "--max-client-connections", "2", "--body-timeout", "60",
                    idle=30) as server:
        stuck = [_never_reading_stream(server.port, _token(server)) for _ in range(2)]
        try:
            for sock, ws in stuck:                                         # both stuck writing their replies
                until = time.monotonic() + 2.5
                _flood(sock, ws, lambda: time.monotonic() > until)
            newcomer = RawStream(server.port, _token(server))              # the third from this address
            assert isinstance(newcomer.handshake, AcceptConnection)
            assert newcomer.ask(encode_request("/v1/measure", _measure_body()))[0] == 200
            newcomer.close()
        finally:
            for sock, _ in stuck:
                sock.close()
        assert "waited longest" in _no_traceback(server, "not reading its reply")


def test_a_stream_whose_measurement_takes_long_is_not_dropped_while_it_is_answered(tmp_path, tiny_fleet_dir):
    with ChipServer(tiny_fleet_dir / "chipB.h5", tmp_path, "--latency-ms", "2500", "--header-timeout", "1",
                    "--body-timeout", "0.5", idle=30) as server:
        raw = RawStream(server.port, _token(server))
        try:
            start = time.monotonic()
            status, timing, _ = raw.ask(encode_request("/v1/measure", _measure_body()))
            assert status == 200 and 2.4 < time.monotonic() - start < 4.0 and "readout;dur=25" in timing
        finally:
            raw.close()
        assert "dropped" not in _no_traceback(server, " STREAM /v1/measure 200 ")


def test_every_message_counts_toward_max_requests(tmp_path, tiny_fleet_dir):
    with ChipServer(tiny_fleet_dir / "chipB.h5", tmp_path, max_requests=4) as server:
        raw = RawStream(server.port, _token(server))                     # 1: the handshake
        try:
            for _ in range(3):                                            # 2-4: three measurements
                assert raw.ask(encode_request("/v1/measure", _measure_body()))[0] == 200
            assert server.process.wait(ATTACK_S) == 0
        finally:
            raw.close()
    _no_traceback(server, "served 4 requests (--max-requests)")


# ------------------------------------------------------------------------------------- the client's end

INFO = json.dumps({"device_id": "chipB", "platform": "mrr", "array": [16, 16], "firmware": "evil",
                   "supports": ["measure"], "wire": {"binary": BINARY_TYPE, "frame_version": 1, "stream": {
                       "path": "/v1/stream", "subprotocol": SUBPROTOCOL, "serves": ["/v1/measure"]}}}).encode()


@pytest.fixture(autouse=True)
def token(monkeypatch):
    monkeypatch.setenv("PNNDEPLOY_CHIP_TOKEN", "a-token-of-sixteen-characters-or-more")


def _evil_stream(misbehave: Callable[[socket.socket, WSConnection], None],
                 subprotocol: str = SUBPROTOCOL) -> EvilStation:
    """A station that answers /info (its first connection), accepts the stream on later ones, reads the client's
    message, then ``misbehave``s."""
    evil = EvilStation(lambda conn: None)

    def stream(conn: socket.socket) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(evil.requests[-1])
        assert isinstance(next(ws.events()), Request)
        if subprotocol == SUBPROTOCOL:
            conn.sendall(ws.send(AcceptConnection(subprotocol=subprotocol)))
        else:                                                              # wsproto would not send it
            conn.sendall(_accept_head(evil.requests[-1], subprotocol))
            return
        while not any(isinstance(e, BytesMessage) and e.message_finished for e in ws.events()):
            data = conn.recv(65536)
            if not data:
                return
            ws.receive_data(data)
        misbehave(conn, ws)

    evil.behave = _info_then(stream, INFO)
    return evil


def _accept_head(request: bytes, subprotocol: str) -> bytes:
    """A 101 reply to ``request`` that names ``subprotocol`` (RFC 6455's accept key)."""
    import base64
    import hashlib

    key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: " + subprotocol.encode() + b"\r\n\r\n")


def _frame(payload: bytes, opcode: int = 0x2, rsv1: bool = False) -> bytes:
    """One unmasked WebSocket frame as a server sends it."""
    head = bytes([0x80 | (0x40 if rsv1 else 0) | opcode])
    size = len(payload)
    head += bytes([size]) if size < 126 else bytes([126]) + struct.pack(">H", size) if size < 65536 \
        else bytes([127]) + struct.pack(">Q", size)
    return head + payload


def _endless(conn: socket.socket, ws: WSConnection) -> None:
    conn.sendall(bytes([0x82, 127]) + struct.pack(">Q", 1 << 40))
    for _ in range(400):
        conn.sendall(b"\0" * 65536)


def _stall(conn: socket.socket, ws: WSConnection) -> None:
    for _ in range(30):
        conn.sendall(ws.send(__import__("wsproto.events", fromlist=["Ping"]).Ping(b"?")))   # alive, never replying
        time.sleep(0.1)


@pytest.mark.parametrize("misbehave, fragment, closed", [
    (lambda c, ws: c.sendall(ws.send(TextMessage(data="{}"))), "TextMessage on the stream where a binary reply",
     True),
    (_endless, f"larger than the limit {MAX_MESSAGE_BYTES} bytes", True),
    (lambda c, ws: c.sendall(_frame(b"\x01")), "malformed stream reply", True),
    (lambda c, ws: c.sendall(_frame(encode_reply(200, "", b"PNNA garbage"))), "malformed reply", False),
    (lambda c, ws: c.sendall(_frame(b"abcd", rsv1=True)), "broke the WebSocket protocol (1002", True),
    (_stall, "no reply within --timeout 1 s after 1 tries", True),
], ids=["text", "endless", "short-envelope", "bad-frame", "compressed", "stall"])
def test_a_hostile_stream_is_one_line_within_one_deadline(misbehave, fragment, closed):
    """(A reply whose envelope and message are whole but whose frame is not leaves the stream in step: kept.)"""
    evil = _evil_stream(misbehave)
    try:
        backend = HttpBackend(evil.url, {"wire": "stream", "retries": 0}, timeout=1.0)
        backend.open()
        start = time.monotonic()
        with pytest.raises(BackendError) as err:
            backend.measure_layer(LayerProgram(0, (4, 16), np.zeros((4, 16))), np.ones((1, 16)))
        assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)
        assert time.monotonic() - start < 1.0 + 2.0
        assert (backend._stream._socket is None) == closed                 # a stream out of step: never reused
        head = evil.requests[-1].lower()
        assert b"upgrade: websocket" in head and b"authorization: bearer " in head
        assert b"sec-websocket-protocol: " + SUBPROTOCOL.encode() in head and b"sec-websocket-extensions" not in head
        backend.close()
    finally:
        evil.close()


def _reply_of(y: float) -> bytes:
    return _frame(encode_reply(200, "chip;dur=0.1", encode_frame({"version": "v-1", "programmed": True},
                                                                 {"y": np.full((1, 4), y)})))


def test_a_ping_is_answered_while_the_reply_waits():
    def ping_first(conn: socket.socket, ws: WSConnection) -> None:
        from wsproto.events import Ping, Pong

        conn.sendall(ws.send(Ping(b"are-you-there")))
        while True:                                                      # no reply before the pong
            ws.receive_data(conn.recv(65536))
            if any(isinstance(e, Pong) and e.payload == b"are-you-there" for e in ws.events()):
                break
        conn.sendall(_reply_of(7.0))

    evil = _evil_stream(ping_first)
    try:
        backend = HttpBackend(evil.url, {"wire": "stream", "retries": 0}, timeout=2.0)
        backend.open()
        y, _ = backend.measure_layer(LayerProgram(0, (4, 16), np.zeros((4, 16))), np.ones((1, 16)))
        assert (y == 7.0).all()
        backend.close()
    finally:
        evil.close()


@pytest.mark.parametrize("after", ["extra-reply", "close", "ping-flood"])
def test_what_comes_with_a_reply_closes_the_stream_so_it_is_never_out_of_step(after):
    """A station that sends more than the reply in the same packet (another reply, a close frame, a flood of
    pings): the client takes the reply it asked for and opens a new stream for the next exchange, without a
    retry."""
    def more(conn: socket.socket, ws: WSConnection) -> None:
        tail = {"extra-reply": _reply_of(99.0), "close": _frame(struct.pack(">H", 1000), opcode=0x8),
                "ping-flood": _frame(b"p", opcode=0x9) * 50}[after]
        conn.sendall(_reply_of(float(calls[0])) + tail)
        calls[0] += 1

    calls = [1]
    evil = _evil_stream(more)
    try:
        backend = HttpBackend(evil.url, {"wire": "stream", "retries": 0}, timeout=2.0)
        backend.open()
        for k in (1, 2, 3):
            y, _ = backend.measure_layer(LayerProgram(0, (4, 16), np.zeros((4, 16))), np.full((1, 16), k))
            assert (y == k).all()                                         # each the reply to its own request
            assert backend._stream._socket is None
        assert len(evil.requests) == 1 + 3                                # /info, then one stream each
        backend.close()
    finally:
        evil.close()


def test_a_foreign_subprotocol_is_refused_and_misbehaviour_is_not_retried():
    evil = _evil_stream(lambda c, ws: None, subprotocol="pnndeploy.stream.v9")
    try:
        backend = HttpBackend(evil.url, {"wire": "stream", "retries": 3}, timeout=1.0)
        backend.open()
        with pytest.raises(BackendError, match="subprotocol pnndeploy.stream.v9.*misbehaving"):
            backend.measure_layer(LayerProgram(0, (4, 16), np.zeros((4, 16))), np.ones((1, 16)))
        assert len(evil.requests) == 1 + 1                                 # /info, one stream: no retry
        backend.close()
    finally:
        evil.close()


def test_a_station_without_the_stream_is_reached_over_http_and_wire_stream_says_why(tmp_path, tiny_fleet_dir):
    old = json.dumps({**json.loads(INFO), "wire": {"binary": BINARY_TYPE, "frame_version": 1}}).encode()
    evil = EvilStation(lambda c: c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: "
                                           b"close\r\nContent-Length: %d\r\n\r\n" % len(old) + old))
    try:
        auto = HttpBackend(evil.url, {"wire": "auto"})
        auto.open()
        assert auto.binary and not auto.streamed
        auto.close()
        with pytest.raises(BackendError, match="wire=stream, but the server offers no stream"):
            HttpBackend(evil.url, {"wire": "stream"}).open()
    finally:
        evil.close()


@pytest.mark.parametrize("status, reason", [(404, "Not Found"), (401, "Unauthorized"), (500, "Oops")])
def test_behind_a_proxy_that_refuses_websockets_auto_goes_over_http_and_stream_says_why(status, reason):
    """/v1/info offers the stream, but the upgrade comes back as a plain 404 (a reverse proxy that does not pass
    WebSockets on): wire=auto measures over HTTP from then on; wire=stream is one line naming the refusal.  A 401
    (the token) or a 500 (the station failed) is an error with either: nothing to fall back from."""
    frame = encode_frame({"version": "v-1", "programmed": True}, {"y": np.full((1, 4), 5.0)})

    def proxy(conn: socket.socket) -> None:
        head = evil.requests[-1]
        if head.startswith(b"GET /v1/info"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(INFO) + INFO)
        elif head.startswith(b"GET /v1/stream"):
            refusal = json.dumps({"detail": reason}).encode()
            conn.sendall(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n" % (status, reason.encode(), len(refusal)) + refusal)
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: " + BINARY_TYPE.encode() + b"\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(frame) + frame)

    evil = EvilStation(proxy)
    try:
        auto = HttpBackend(evil.url, {"wire": "auto", "retries": 0}, timeout=2.0)
        auto.open()
        assert auto.streamed
        if status != 404:
            with pytest.raises(BackendError, match="refused the token" if status == 401 else "HTTP 500: Oops"):
                auto.measure_layer(LayerProgram(0, (4, 16), np.zeros((4, 16))), np.ones((1, 16)))
            assert auto.streamed and auto.stream_refused is None
            return
        for _ in range(2):
            y, _ = auto.measure_layer(LayerProgram(0, (4, 16), np.zeros((4, 16))), np.ones((1, 16)))
            assert (y == 5.0).all()
        assert not auto.streamed and auto.stream_refused == 404
        assert [r.split(b" ")[1] for r in evil.requests] == [b"/v1/info", b"/v1/stream", b"/v1/measure",
                                                               b"/v1/measure"]    # the stream tried once
        auto.close()
        insist = HttpBackend(evil.url, {"wire": "stream", "retries": 0}, timeout=2.0)
        insist.open()
        with pytest.raises(BackendError, match="HTTP 404: Not Found"):
            insist.measure_layer(LayerProgram(0, (4, 16), np.zeros((4, 16))), np.ones((1, 16)))
        insist.close()
    finally:
        evil.close()


def test_a_refused_handshake_reads_as_the_http_refusal(tmp_path, tiny_fleet_dir):
    with ChipServer(tiny_fleet_dir / "chipB.h5", tmp_path, idle=30) as server:
        url = f"{server.url}/v1"
        wrong = Stream(url, {"Authorization": "Bearer not-the-token-at-all"}, None, Deadline(), 2.0)
        with pytest.raises(HandshakeRefused) as refused:
            wrong.exchange("/v1/measure", _measure_body())
        assert refused.value.status == 401 and "missing or wrong token" in json.loads(refused.value.body)["error"]
        assert wrong._socket is None
        right = Stream(url, {"Authorization": f"Bearer {_token(server)}"}, None, Deadline(), 2.0)
        status, _, body = right.exchange("/v1/measure", _measure_body())
        assert status == 200 and decode_frame(body, "reply")[1]["y"].shape == (2, 4)
        first = right._socket
        assert right.exchange("/v1/measure", _measure_body())[0] == 200 and right._socket is first   # kept
        right.close()

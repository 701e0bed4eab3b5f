"""The stream: the binary wire's exchanges as messages on one WebSocket, not one HTTP/1.1 request each.

Why: in-situ training makes one exchange per layer and pass, in sequence; on loopback an HTTP
request through uvicorn's and h11's layers on both sides cost more than the station's
answer (issue 26: ~1.2 ms an exchange, 0.4 of it with an application that answers at once).
A WebSocket (RFC 6455) keeps the token check, TLS and one connection of HTTP, is spoken by
every language a station is scripted in, and frames each message in a few bytes.  The
client drives wsproto (sans-IO, from the authors of h11) on the same deadline-bounded
socket as the lean HTTP exchange (:mod:`pnndeploy.backends.exchange`); the server is
uvicorn's wsproto protocol under the connection guard (:mod:`pnndeploy.backends.guard`).

The connection: ``GET /v1/stream`` with ``Upgrade: websocket``, the bearer token and the
subprotocol :data:`SUBPROTOCOL` (the version of what follows); never compressed
(permessage-deflate is neither offered nor accepted: a compressed message could expand
without bound).  Then, in turn, one binary message each way per exchange (integers
little-endian; README, "The stream")::

    request = path_bytes u8 | path (ASCII, e.g. "/v1/measure") | body (a binary frame, :mod:`frame`)
    reply   = status u16 | timing_bytes u16 | timing (ASCII, Server-Timing's syntax) | body

A reply's body is a binary frame when its status is below 400, else a JSON object ``{"error": ...}``, as
the same request over HTTP would have it.  Both sides check every length before they use it.
"""

from __future__ import annotations

import re
import ssl
import struct
import time
from typing import Callable

import httpcore

from pnndeploy.backends.busy_poll import BusyPoll
from pnndeploy.backends.deadline import Deadline
from pnndeploy.backends.exchange import READ_BYTES, Endpoint, stale
from pnndeploy.backends.wire import MAX_BODY_BYTES, WireError

#: The WebSocket subprotocol both sides name: the stream's version.
SUBPROTOCOL = "pnndeploy.stream.v1"
#: Longest path and Server-Timing text a message carries, bytes.
MAX_PATH_BYTES, MAX_TIMING_BYTES = 64, 512
_PATH = re.compile(r"/[a-z0-9_/]*")
_STATUS = struct.Struct("<HH")
#: The most bytes a message's envelope (a request's path, a reply's status and timing) adds to its body.
ENVELOPE_BYTES = max(1 + MAX_PATH_BYTES, _STATUS.size + MAX_TIMING_BYTES)
#: Largest message either side accepts, bytes: a body and its envelope.
MAX_MESSAGE_BYTES = MAX_BODY_BYTES + ENVELOPE_BYTES
#: Pings answered after a reply before the stream is given up on as flooded.
MAX_DRAINED_PINGS = 8
#: Close codes (RFC 6455) that mean a broken protocol, not a server that went away: never retried.
BROKEN_CODES = frozenset({1002, 1003, 1007, 1009})


class HandshakeRefused(Exception):
    """The server answered the stream's handshake with an HTTP reply instead of accepting it (``status``, its
    ``body`` up to the limit): a wrong token, or something between client and station that does not pass
    WebSockets on (a proxy: 400, 404, 426...)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.body = status, body


class Misbehaving(Exception):
    """The server broke the stream's protocol (a reply too large or malformed, text where bytes belong, a
    foreign subprotocol): never retried, reported as the server misbehaving."""


def encode_request(path: str, body: bytes) -> bytes:
    """A request message: ``path`` (lower-case ASCII, at most :data:`MAX_PATH_BYTES`) and its body."""
    raw = path.encode("ascii")
    if not _PATH.fullmatch(path) or len(raw) > MAX_PATH_BYTES:
        raise WireError(f"path {path[:80]!r} cannot go in a stream message")
    return bytes([len(raw)]) + raw + body


def decode_request(message: bytes) -> tuple[str, bytes]:
    """(path, body) of a request message; WireError naming what is wrong."""
    if not message:
        raise WireError("the stream message is empty; it starts with its path's length")
    size = message[0]
    path = message[1:1 + size].decode("ascii", "replace")
    if len(message) < 1 + size or size > MAX_PATH_BYTES or not _PATH.fullmatch(path):
        raise WireError(f"the stream message's path ({size} bytes) is missing, too long or not lower-case "
                        "ASCII letters, digits, _ and /")
    return path, message[1 + size:]


def encode_reply(status: int, timing: str, body: bytes) -> bytes:
    """A reply message: ``status`` (as HTTP's), the station's time (Server-Timing's syntax) and the body."""
    raw = timing.encode("ascii")[:MAX_TIMING_BYTES]
    return _STATUS.pack(status, len(raw)) + raw + body


def server_timing(seconds: dict[str, float]) -> str:
    """The station's time by name (s) in Server-Timing's syntax (ms), as an HTTP reply's header has it."""
    return ", ".join(f"{name};dur={1000 * value:.3f}" for name, value in seconds.items())


def decode_reply(message: bytes) -> tuple[int, str, bytes]:
    """(status, timing, body) of a reply message; WireError naming what is wrong."""
    if len(message) < _STATUS.size:
        raise WireError(f"the stream reply holds {len(message)} bytes, fewer than its {_STATUS.size}-byte head")
    status, size = _STATUS.unpack_from(message)
    if not 100 <= status <= 599 or size > MAX_TIMING_BYTES or len(message) < _STATUS.size + size:
        raise WireError(f"the stream reply's head (status {status}, {size} bytes of timing) is impossible")
    timing = message[_STATUS.size:_STATUS.size + size].decode("ascii", "replace")
    return status, timing, message[_STATUS.size + size:]


class Stream:
    """Exchanges with one server on one WebSocket (``base_url``: scheme, host, port, path prefix such as /v1).

    Every connect, handshake, write and read waits at most until ``deadline``; the socket is closed after
    :data:`~pnndeploy.backends.deadline.KEEPALIVE_S` idle, when the server closed it, when more than the reply
    came with it (:meth:`_drain`), and after anything that went wrong mid-exchange, so the next exchange starts
    in step.  Errors are httpcore's, as the lean HTTP exchange raises them (:class:`Misbehaving` where retrying
    cannot help)."""

    def __init__(self, base_url: str, headers: dict[str, str], ssl_context: ssl.SSLContext | None,
                 deadline: Deadline, timeout: float, busy_poll: BusyPoll | None = None) -> None:
        self.endpoint = Endpoint(base_url, ssl_context, deadline, busy_poll)
        self.headers, self.timeout = headers, timeout
        self._socket: httpcore.NetworkStream | None = None
        self._ws = None
        self._idle_since = 0.0

    def close(self) -> None:
        """Close the connection (the next exchange opens a new one); no closing handshake is waited for."""
        if self._socket is not None:
            self._socket.close()
        self._socket = self._ws = None

    def exchange(self, path: str, body: bytes,
                 meanwhile: Callable[[], None] | None = None) -> tuple[int, str, bytes]:
        """Send ``body`` for ``path`` and read the reply: (status, Server-Timing text, body).  A refused
        handshake raises :class:`HandshakeRefused` (nothing was sent).  ``meanwhile`` runs once the request is
        sent, before the reply is read."""
        from wsproto.events import BytesMessage

        try:
            self._connect()
            self._socket.write(self._ws.send(BytesMessage(data=encode_request(path, body))), self.timeout)
            if meanwhile is not None:
                meanwhile()
            reply = self._message()
            self._drain()
        except BaseException:
            self.close()
            raise
        self._idle_since = time.monotonic()
        try:
            return decode_reply(reply)
        except WireError as exc:
            self.close()
            raise Misbehaving(f"malformed stream reply ({exc})") from None

    # ------------------------------------------------------------------ helpers
    def _connect(self) -> None:
        """Keep the open stream unless :func:`~pnndeploy.backends.exchange.stale`, else open one
        (:class:`HandshakeRefused` when the server will not)."""
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import Request

        if self._socket is not None and stale(self._socket, self._idle_since):
            self.close()
        if self._socket is not None:
            return
        self._socket = self.endpoint.connect(self.timeout)
        self._ws = WSConnection(ConnectionType.CLIENT)
        request = Request(host=self.endpoint.host_header, target=f"{self.endpoint.prefix}/stream",
                          subprotocols=[SUBPROTOCOL],
                          extra_headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()])
        self._socket.write(self._ws.send(request), self.timeout)
        self._handshake()

    def _handshake(self) -> None:
        """Return when the server accepted the stream with our subprotocol; :class:`HandshakeRefused` with its reply."""
        from wsproto.events import AcceptConnection, RejectConnection, RejectData

        event = self._event()
        if isinstance(event, AcceptConnection):
            if event.subprotocol != SUBPROTOCOL:
                raise Misbehaving(f"the server accepted the stream with subprotocol "
                                  f"{str(event.subprotocol)[:40]!r}, not {SUBPROTOCOL!r}")
            return
        if not isinstance(event, RejectConnection):
            raise httpcore.RemoteProtocolError(f"the server answered the stream's handshake with "
                                               f"{type(event).__name__}")
        status, body, more = event.status_code, b"", event.has_body
        while more:
            data = self._event()
            if not isinstance(data, RejectData):
                raise httpcore.RemoteProtocolError("the server's refusal of the stream ended early")
            body += data.data
            if len(body) > MAX_BODY_BYTES:
                raise httpcore.RemoteProtocolError("the server's refusal of the stream is larger than the limit")
            more = not data.body_finished
        raise HandshakeRefused(status, body)

    def _drain(self) -> None:
        """After a reply: answer the pings already read (a few); anything else already read (a close, a message
        nobody asked for, a flood of pings, a pong that cannot be sent) closes the stream, which would otherwise be
        out of step with its requests, and never costs the reply in hand.  (An incomplete frame left in wsproto's
        buffer is not visible here, nor, over TLS, a record the SSL object holds: :func:`stale` sees the socket
        readable before the next exchange.  An honest station sends neither; a dishonest one can lie in its
        replies anyway.)"""
        from wsproto.events import Ping, Pong

        for answered, event in enumerate(self._ws.events()):
            try:
                if isinstance(event, Ping) and answered < MAX_DRAINED_PINGS:
                    self._socket.write(self._ws.send(event.response()), self.timeout)
                    continue
            except (httpcore.WriteError, httpcore.WriteTimeout):
                pass                              # the reply in hand stands; the stream does not
            if not isinstance(event, Pong) or answered >= MAX_DRAINED_PINGS:
                self.close()
                return

    def _message(self) -> bytes:
        """The next whole binary message (pings answered on the way), at most :data:`MAX_MESSAGE_BYTES`."""
        from wsproto.events import BytesMessage

        parts, size = [], 0
        while True:
            event = self._event()
            if not isinstance(event, BytesMessage):
                raise Misbehaving(f"the server sent {type(event).__name__} on the stream where a binary reply "
                                  "belongs")
            size += len(event.data)
            if size > MAX_MESSAGE_BYTES:
                raise Misbehaving(f"stream reply larger than the limit {MAX_MESSAGE_BYTES} bytes")
            parts.append(bytes(event.data))
            if event.message_finished:
                return b"".join(parts)

    def _event(self) -> object:
        """wsproto's next event that is not a ping or pong, reading (within the deadline) while it has none;
        a close from the server, or bytes wsproto cannot parse, end the exchange as a dropped connection would."""
        from wsproto.events import CloseConnection, Ping, Pong
        from wsproto.utilities import LocalProtocolError, RemoteProtocolError

        try:
            while True:
                for event in self._ws.events():
                    if isinstance(event, Ping):
                        self._socket.write(self._ws.send(event.response()), self.timeout)
                    elif isinstance(event, CloseConnection):
                        why = f"({event.code} {str(event.reason)[:120]})".replace(" )", ")")
                        if event.code in BROKEN_CODES:
                            raise Misbehaving(f"the stream broke the WebSocket protocol {why}")
                        raise httpcore.RemoteProtocolError(f"the server closed the stream {why}")
                    elif not isinstance(event, Pong):
                        return event
                data = self._socket.read(READ_BYTES, self.timeout)
                if not data:
                    raise httpcore.RemoteProtocolError("the server closed the connection without a complete reply")
                self._ws.receive_data(data)
        except (LocalProtocolError, RemoteProtocolError) as exc:
            raise Misbehaving(f"malformed stream from the server ({str(exc)[:160]})") from None

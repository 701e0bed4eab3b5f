"""The http backend's binary-wire exchanges: h11 straight on one kept-alive, deadline-bounded socket.

Why not httpx here: in-situ training makes one exchange per layer and pass, in sequence, and
on loopback httpx's layers (request and URL models, the connection pool, the request's
headers and body sent in two writes, so the server wakes twice) cost more than the
server's answer (issue 26).  This path keeps what bounds an exchange: the same
:class:`~pnndeploy.backends.deadline.Deadline` over connect, TLS handshake, request and
reply (the sockets of :mod:`pnndeploy.backends.deadline`), HTTP/1.1 parsed by h11 (the
parser httpcore uses; request and reply heads at most :data:`MAX_HEAD_BYTES`), a
connection reused at most :data:`~pnndeploy.backends.deadline.KEEPALIVE_S` after its last
reply and never once the server has closed it.  What the reply may be (its encoding, size,
content) is checked by the caller as for httpx's replies.  Errors are httpcore's (timeouts,
connect, read, write, protocol), as httpx's transport raises them.
"""

from __future__ import annotations

import ssl
import time
from typing import Callable, Iterator
from urllib.parse import urlsplit

import h11
import httpcore

from pnndeploy.backends.busy_poll import BusyPoll
from pnndeploy.backends.deadline import KEEPALIVE_S, Deadline, DeadlineBackend

#: Largest reply head (status line and headers) read, bytes: as h11's default.
MAX_HEAD_BYTES = 16 * 1024
#: Bytes asked of the socket per read.
READ_BYTES = 65536


class Endpoint:
    """Where a server is (``base_url``: scheme, host, port, path prefix) and how to reach it: a TCP connection
    within a deadline, TLS (verified by ``ssl_context``) for https, reads that poll as ``busy_poll`` says before
    they sleep (none without it)."""

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext | None, deadline: Deadline,
                 busy_poll: BusyPoll | None = None) -> None:
        parts = urlsplit(base_url)
        self.host, self.tls = parts.hostname or "", ssl_context if parts.scheme == "https" else None
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == (443 if parts.scheme == "https" else 80) else f"{host}:{self.port}"
        self.network = DeadlineBackend(deadline, busy_poll)

    def connect(self, timeout: float) -> httpcore.NetworkStream:
        """A new connection (TLS handshake done), every step within the deadline."""
        stream = self.network.connect_tcp(self.host, self.port, timeout=timeout)
        if self.tls is not None:
            stream = stream.start_tls(self.tls, server_hostname=self.host, timeout=timeout)
        return stream


class Exchange:
    """HTTP/1.1 requests to one server (``base_url``: scheme, host, port, path prefix) on one connection."""

    def __init__(self, base_url: str, headers: dict[str, str], ssl_context: ssl.SSLContext | None,
                 deadline: Deadline, timeout: float, busy_poll: BusyPoll | None = None) -> None:
        self.endpoint = Endpoint(base_url, ssl_context, deadline, busy_poll)
        self.headers = [("Host", self.endpoint.host_header), *headers.items()]
        self.timeout = timeout
        self._stream: httpcore.NetworkStream | None = None
        self._conn: h11.Connection | None = None
        self._idle_since = 0.0

    def close(self) -> None:
        """Close the connection (the next request opens a new one)."""
        if self._stream is not None:
            self._stream.close()
        self._stream = self._conn = None

    def _connection(self) -> tuple[httpcore.NetworkStream, h11.Connection]:
        """The open connection, or a new one when there is none, the last reply was not read to its end, or it
        is :func:`stale`."""
        if self._stream is not None and (self._conn is None or self._conn.our_state is not h11.IDLE
                                         or stale(self._stream, self._idle_since)):
            self.close()
        if self._stream is None:
            self._stream = self.endpoint.connect(self.timeout)
            self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        return self._stream, self._conn

    def start(self, method: str, path: str, content: bytes, headers: dict[str, str],
              meanwhile: Callable[[], None] | None = None) -> tuple[int, dict[str, str]]:
        """Send a request (its head and body in one write) and read the reply's head: (status, headers with
        lower-case names; a repeated header's values joined by ", ").  Read its body with :meth:`body`.

        ``meanwhile``: work run once the request is sent, before the reply is read: the station answers while it
        runs (an in-situ step maps its next layer there).  What it raises closes the connection and propagates."""
        stream, conn = self._connection()
        try:
            head = h11.Request(method=method, target=self.endpoint.prefix + path,
                               headers=[*self.headers, *headers.items(), ("Content-Length", str(len(content)))])
            stream.write(conn.send(head) + conn.send(h11.Data(data=content)) + conn.send(h11.EndOfMessage()),
                         self.timeout)
            if meanwhile is not None:
                meanwhile()
            while True:
                event = self._next(stream, conn)
                if isinstance(event, h11.Response):
                    break
            fields: dict[str, str] = {}
            for name, value in event.headers:
                key = name.decode("latin-1")
                fields[key] = f"{fields[key]}, {value.decode('latin-1')}" if key in fields \
                    else value.decode("latin-1")
            return event.status_code, fields
        except BaseException:
            self.close()
            raise

    def body(self) -> Iterator[bytes]:
        """The reply's body as it arrives; the connection is kept for the next request when both sides allow it.
        A caller that stops early (a reply refused) must :meth:`close`."""
        stream, conn = self._stream, self._conn
        assert stream is not None and conn is not None, "body() after start()"
        try:
            while True:
                event = self._next(stream, conn)
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
        except BaseException:
            self.close()
            raise
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._idle_since = time.monotonic()
        else:
            self.close()

    def _next(self, stream: httpcore.NetworkStream, conn: h11.Connection) -> object:
        """h11's next event of the reply, reading from the socket (within the deadline) while it needs data."""
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpcore.RemoteProtocolError(f"malformed reply ({exc})") from None
            if event is h11.NEED_DATA:
                conn.receive_data(stream.read(READ_BYTES, self.timeout))
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                raise httpcore.RemoteProtocolError("the server closed the connection without a complete reply")
            elif not isinstance(event, h11.InformationalResponse):
                return event


def stale(stream: httpcore.NetworkStream, idle_since: float) -> bool:
    """Whether a kept-alive connection must not be reused: idle past the keep-alive, or closed by the server
    (readable while idle: its end of file, or bytes nobody asked for)."""
    return time.monotonic() - idle_since > KEEPALIVE_S or bool(stream.get_extra_info("is_readable"))

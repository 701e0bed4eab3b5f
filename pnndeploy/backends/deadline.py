"""One deadline for a whole HTTP exchange: connect, TLS handshake, request, reply headers and body.

Why: httpx's timeouts bound each socket operation, not the exchange, so a station
that sends its reply one byte a second keeps a client with ``--timeout 1`` waiting
for ever.  httpx sends its bytes through httpcore's pluggable network backend; the
one here gives every connect, read, write and handshake at most what is left of
the current :class:`Deadline`, and fails (as a timeout httpx knows) once none is
left.  CPython's TLS operations keep one deadline over their whole call, so a
slow handshake is bounded too.

A read may busy-poll (:class:`~pnndeploy.backends.busy_poll.BusyPoll`) before it sleeps.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import httpcore

from pnndeploy.backends.base import BackendError
from pnndeploy.backends.busy_poll import BusyPoll

#: The client's keep-alive, s: below the chip server's 5 s, so the client never reuses a connection being closed.
KEEPALIVE_S = 4.0


class Deadline:
    """When the current exchange must be over (``at``, time.monotonic(); None: no exchange running)."""

    def __init__(self) -> None:
        self.at: float | None = None

    def left(self, timeout: float | None) -> float:
        """Seconds the next socket operation may wait: ``timeout`` or what is left, whichever is less."""
        left = float("inf") if self.at is None else self.at - time.monotonic()
        if left <= 0:
            raise socket.timeout("the exchange's deadline has passed")
        wait = min(left, timeout if timeout is not None else float("inf"))
        return wait if wait != float("inf") else None  # type: ignore[return-value]


class TlsFailure(Exception):
    """The TLS handshake failed (an unverifiable certificate, no TLS on the other side): never retried."""


@contextmanager
def _mapped(timeout_error: type[Exception], other_error: type[Exception]) -> Iterator[None]:
    try:
        yield
    except (socket.timeout, TimeoutError) as exc:
        raise timeout_error(str(exc) or "timed out") from exc
    except OSError as exc:
        raise other_error(str(exc) or type(exc).__name__) from exc


class _Stream(httpcore.NetworkStream):
    """A socket whose every operation waits at most until the deadline."""

    def __init__(self, sock: socket.socket, deadline: Deadline, busy_poll: BusyPoll | None = None) -> None:
        self._sock, self._deadline, self.busy_poll = sock, deadline, busy_poll or BusyPoll()
        #: Whether the next read waits for the answer to what was written (the reads after it take the rest of a
        #: reply that is on its way: they never poll, and are not counted as the station's speed).
        self._awaiting = False

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _mapped(httpcore.ReadTimeout, httpcore.ReadError):
            awaiting, self._awaiting = self._awaiting, False
            if awaiting and self.busy_poll.due():
                left = self._deadline.left(timeout)
                data = self._poll(max_bytes, self.busy_poll.seconds if left is None else min(self.busy_poll.seconds,
                                                                                             left))
                self.busy_poll.outcome(data is not None)
                if data is not None:
                    return data
            self._sock.settimeout(self._deadline.left(timeout))
            return self._sock.recv(max_bytes)

    def _poll(self, max_bytes: int, seconds: float) -> bytes | None:
        """What a non-blocking read gets within ``seconds`` of trying again at once; None when nothing came."""
        self._sock.settimeout(0.0)
        end = time.perf_counter() + seconds
        while True:
            try:
                return self._sock.recv(max_bytes)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                if time.perf_counter() >= end:
                    return None

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        with _mapped(httpcore.WriteTimeout, httpcore.WriteError):
            while view:
                self._sock.settimeout(self._deadline.left(timeout))
                view = view[self._sock.send(view[:65536]):]
        self._awaiting = True

    def close(self) -> None:
        self._sock.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        try:
            with _mapped(httpcore.ConnectTimeout, httpcore.ConnectError):
                self._sock.settimeout(self._deadline.left(timeout))
                try:
                    sock = ssl_context.wrap_socket(self._sock, server_hostname=server_hostname)
                except ssl.SSLCertVerificationError as exc:
                    raise TlsFailure(f"certificate verify failed: {exc.verify_message}") from None
                except ssl.SSLError as exc:
                    raise TlsFailure(" ".join(str(exc).split())) from None
        except BaseException:
            self._sock.close()
            raise
        return _Stream(sock, self._deadline, self.busy_poll)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return getattr(self._sock, "_sslobj", None)
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "socket":
            return self._sock
        if info == "is_readable":              # an idle kept-alive connection the server has closed (or wrote to)
            if self._sock.fileno() < 0 or (isinstance(self._sock, ssl.SSLSocket) and self._sock.pending() > 0):
                return True                    # (bytes the TLS layer decrypted and holds: select cannot see them)
            return bool(select.select([self._sock], [], [], 0)[0])
        return None


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend with :class:`Deadline` bounded sockets (TCP only)."""

    def __init__(self, deadline: Deadline, busy_poll: BusyPoll | None = None) -> None:
        self.deadline, self.busy_poll = deadline, busy_poll or BusyPoll()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        with _mapped(httpcore.ConnectTimeout, httpcore.ConnectError):
            sock = socket.create_connection((host, port), self.deadline.left(timeout),
                                            source_address=None if local_address is None else (local_address, 0))
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Stream(sock, self.deadline, self.busy_poll)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def deadline_transport(ssl_context: ssl.SSLContext | None, deadline: Deadline) -> Any:
    """An httpx transport whose exchanges end by ``deadline.at`` (set it before each request)."""
    import httpx

    transport = httpx.HTTPTransport(verify=ssl_context or ssl.create_default_context(), trust_env=False)
    if not isinstance(getattr(transport, "_pool", None), httpcore.ConnectionPool):
        # the one private name relied on: refuse rather than run with unbounded exchanges
        raise BackendError(f"httpx {httpx.__version__} no longer keeps its connection pool in HTTPTransport._pool; "
                           "pnndeploy cannot bound its exchanges with it; install an httpx it was tested with "
                           "(0.27-0.29)")
    transport._pool.close()
    transport._pool = httpcore.ConnectionPool(ssl_context=ssl_context, network_backend=DeadlineBackend(deadline),
                                              max_connections=4, keepalive_expiry=KEEPALIVE_S)
    return transport

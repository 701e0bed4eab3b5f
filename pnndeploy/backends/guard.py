"""What a connection to the chip server may hold, whoever opened it: deadlines and connection limits.

Why a layer under the application: uvicorn bounds neither how long a peer may take
to send its request headers (a connection that sends half a request and waits is
kept for ever) nor which connections go when many are open (``limit_concurrency``
answers 503 to the *next* request, so a few dozen such connections lock the token's
holder out).  Nothing above the HTTP parser sees a request before its headers are
complete, so this is done where the bytes arrive: a subclass of uvicorn's h11
protocol, which reads the peer's state from h11's own state machine.

* headers: a connection waiting for a request (new, or idle between requests) is
  dropped after ``header_timeout`` seconds, however slowly bytes trickle in;
* body: a request's body must be complete within ``body_timeout`` (+ a grace
  second, the application answers 408 first) after its headers;
* reply: a reply the peer does not read (the transport's buffer full, writing
  paused) must drain within ``body_timeout`` (+ the grace second);
* limits: at most ``max_connections`` open connections and ``max_client_connections``
  per client address; a new connection beyond either limit drops the one of that
  scope that has waited longest without sending a complete request (connections that
  never sent one go first; one whose peer does not read its reply goes before either),
  so a connection that sends its request at once is served.
  When none is waiting, the new one is refused (closed).

The same holds for a connection upgraded to the stream (a WebSocket,
:mod:`pnndeploy.backends.stream`): it keeps its place under the limits, waits at most
``header_timeout`` for its next message, ``body_timeout`` for the rest of one begun and
for its peer to read a reply.  A dropped connection is aborted, not closed: a close
waits for the transport's buffer to drain, which a peer that does not read never lets happen.

Drops are logged as one escaped line each; they are not requests and do not count
toward ``--max-requests``.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import h11

#: Extra seconds the protocol gives a body over ``body_timeout`` (the application's 408 comes first).
BODY_GRACE_S = 1.0


class ConnectionGuard:
    """The open connections of one server and their deadlines (used on the event loop's thread only)."""

    def __init__(self, settings: Any, log: Callable[[str], None],
                 on_malformed: Callable[[], None] | None = None) -> None:
        self.settings, self.log, self.on_malformed = settings, log, on_malformed
        self.live: dict[Any, None] = {}            # open connections, oldest first

    # ------------------------------------------------------------------ events from the protocol
    def opened(self, conn: Any) -> None:
        """A new connection: admit it (dropping a waiting one if a limit is reached) and start its clock."""
        conn.guard = {"host": conn.client[0] if conn.client else "-", "phase": "", "since": 0.0, "served": 0,
                      "timer": None}
        host = conn.guard["host"]
        same = [c for c in self.live if c.guard["host"] == host]
        limits = ((same, self.settings.max_client_connections, f"{len(same)} connections from {host} "
                   "(--max-client-connections)"),
                  (list(self.live), self.settings.max_connections, f"{len(self.live)} open connections "
                   "(--max-connections)"))
        for scope, limit, why in limits:
            if len(scope) >= limit and not self._drop_longest_waiting(scope, why):
                self.log(f"{_peer(conn)} refused: {why}, every one busy with a request")
                conn.transport.close()
                return
        self.live[conn] = None
        self.update(conn)

    def update(self, conn: Any, served: bool = False) -> None:
        """After bytes arrived or a response went out: restart the clock when the peer's phase changed."""
        if conn not in self.live:
            return
        state = conn.guard
        state["served"] += served
        phase = "write" if conn.write_blocked else conn.guard_phase()
        if phase == state["phase"]:
            return
        state["phase"], state["since"] = phase, time.monotonic()
        if state["timer"] is not None:
            state["timer"].cancel()
            state["timer"] = None
        if phase == "wait":
            state["timer"] = conn.loop.call_later(self.settings.header_timeout, self._expire, conn,
                                                  f"no complete request within {self.settings.header_timeout:g} s "
                                                  "(--header-timeout)")
        elif phase == "body":
            state["timer"] = conn.loop.call_later(self.settings.body_timeout + BODY_GRACE_S, self._expire, conn,
                                                  f"request body not complete within "
                                                  f"{self.settings.body_timeout:g} s (--body-timeout)")
        elif phase == "write":
            state["timer"] = conn.loop.call_later(self.settings.body_timeout + BODY_GRACE_S, self._expire, conn,
                                                  f"reply not read within {self.settings.body_timeout:g} s "
                                                  "(--body-timeout)")

    def closed(self, conn: Any) -> None:
        self._forget(conn)

    def malformed(self, conn: Any) -> None:
        """h11 could not parse the request (uvicorn answers 400 and closes): one line, counted as a request."""
        self.log(f"{_peer(conn)} malformed request: 400")
        self._forget(conn)
        if self.on_malformed is not None:
            self.on_malformed()

    def drop_unfinished(self) -> None:
        """At shutdown: close every connection still waiting for (the rest of) a request or for its peer to read."""
        for conn in [c for c in self.live if c.guard["phase"] in ("wait", "body", "write")]:
            self._forget(conn)
            conn.transport.abort()

    # ------------------------------------------------------------------ helpers
    def _drop_longest_waiting(self, scope: list[Any], why: str) -> bool:
        """Make room: drop a connection whose peer does not read its reply (the longest stuck first), else the one
        that waited longest without a complete request (those never served first)."""
        waiting = [c for c in scope if c.guard["phase"] in ("wait", "write")]
        if not waiting:
            return False
        victim = min(waiting, key=lambda c: (c.guard["phase"] != "write", c.guard["served"] > 0, c.guard["since"]))
        idle = time.monotonic() - victim.guard["since"]
        what = "not reading its reply" if victim.guard["phase"] == "write" else "without a complete request"
        self.log(f"{_peer(victim)} dropped: {why}; it waited longest ({idle:.1f} s) {what}")
        self._forget(victim)
        victim.transport.abort()
        return True

    def _expire(self, conn: Any, why: str) -> None:
        if conn in self.live:
            self.log(f"{_peer(conn)} dropped: {why}")
            self._forget(conn)
            conn.transport.abort()            # close() would wait for a reply the peer does not read

    def _forget(self, conn: Any) -> None:
        self.live.pop(conn, None)
        timer = getattr(conn, "guard", {}).get("timer")
        if timer is not None:
            timer.cancel()
            conn.guard["timer"] = None


def printable(text: str, limit: int = 200) -> str:
    """``text`` safe for a terminal: control, format and other non-printable characters (and backslashes)
    escaped as \\x1b, \\u202e..., cut at ``limit`` characters.  Everything a peer sends is logged through it."""
    out = "".join(c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii")
                  for c in text[:limit])
    return out + "..." if len(text) > limit else out


def _peer(conn: Any) -> str:
    host, port = conn.client if conn.client else ("-", 0)
    return f"{printable(str(host), 64)}:{port}"


def _reporting(guard: ConnectionGuard) -> type:
    """What every guarded protocol reports to ``guard``: opened, bytes arrived, writing paused and resumed,
    closed (a mixin before the protocol class; each protocol says its own phase in ``guard_phase``)."""

    class Reporting:
        write_blocked = False                 # the transport's buffer is full: the peer does not read

        def pause_writing(self) -> None:
            self.write_blocked = True
            super().pause_writing()  # type: ignore[misc]
            guard.update(self)

        def resume_writing(self) -> None:
            self.write_blocked = False
            super().resume_writing()  # type: ignore[misc]
            guard.update(self)

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)  # type: ignore[misc]
            guard.opened(self)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)  # type: ignore[misc]
            guard.update(self)

        def connection_lost(self, exc: Exception | None) -> None:
            guard.closed(self)
            super().connection_lost(exc)  # type: ignore[misc]

    return Reporting


def guarded_protocol(guard: ConnectionGuard) -> type:
    """uvicorn's h11 protocol class reporting to ``guard`` (pass it as ``uvicorn.Config(http=...)``)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(_reporting(guard), H11Protocol):  # type: ignore[misc]
        def guard_phase(self) -> str:
            their = self.conn.their_state
            return "wait" if their is h11.IDLE else "body" if their is h11.SEND_BODY else "busy"

        def handle_websocket_upgrade(self, event: h11.Request) -> None:
            guard.closed(self)               # the WebSocket protocol that takes the connection over opens anew
            super().handle_websocket_upgrade(event)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            guard.update(self, served=True)

        def send_400_response(self, msg: str) -> None:
            guard.malformed(self)
            super().send_400_response(msg)

    return GuardedH11Protocol


def guarded_ws_protocol(guard: ConnectionGuard) -> type:
    """uvicorn's wsproto WebSocket protocol reporting to ``guard`` (``uvicorn.Config(ws=...)``): a connection
    upgraded to the stream.  Its phase: busy from its handshake until the application accepted it, and while
    the application answers a message; body while a message has begun but not ended; wait otherwise."""
    from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

    class GuardedWSProtocol(_reporting(guard), WSProtocol):  # type: ignore[misc]
        unanswered, partial = 0, False          # messages the application has not answered; one begun, not ended

        def guard_phase(self) -> str:
            if not self.handshake_complete or self.unanswered:
                return "busy"
            return "body" if self.partial else "wait"

        def handle_message(self, event: Any) -> None:
            super().handle_message(event)
            self.partial = not event.message_finished
            self.unanswered += bool(event.message_finished and not self.close_sent)

        async def send(self, message: Any) -> None:
            await super().send(message)
            if message["type"] == "websocket.send":
                self.unanswered = max(0, self.unanswered - 1)
                guard.update(self, served=True)
            else:
                guard.update(self)

    return GuardedWSProtocol

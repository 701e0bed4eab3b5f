"""The chip server's end of the stream: ``/v1/stream``, a WebSocket carrying binary exchanges (ASGI).

Why a plain ASGI endpoint and not a FastAPI route: each message is an exchange on the in-situ
hot path, and the stream exists to leave HTTP's per-request layers out (issue 26).  What
every HTTP request gets, every message gets too: the token (checked once, at the handshake,
before anything is accepted), size limits (uvicorn closes a connection whose message is
larger than the limit, 1009), one escaped log line, a count toward ``--max-requests``,
the same refusals as the same request over HTTP (400, 404, 409 as a reply message, the
stream kept), and never a traceback (an unexpected error is a 500 reply, then the stream
is closed).  Deadlines and connection limits are the connection guard's
(:func:`pnndeploy.backends.guard.guarded_ws_protocol`).  Wire layout: :mod:`pnndeploy.backends.stream`.
"""

from __future__ import annotations

import json
import time
from typing import Any, Awaitable, Callable

import numpy as np

from pnndeploy.backends.frame import decode_frame
from pnndeploy.backends.guard import printable
from pnndeploy.backends.stream import SUBPROTOCOL, decode_request, encode_reply, server_timing
from pnndeploy.backends.wire import PROTOCOL, WireError

#: A stream handler: (request fields, arrays) -> (reply body, the station's time by name, s).
Handler = Callable[[dict, dict[str, np.ndarray]], Awaitable[tuple[bytes, dict[str, float]]]]
#: What a refused request gets: (status, JSON object, whether the connection closes); None: not a refusal.
Refusal = Callable[[Exception], "tuple[int, dict, bool] | None"]
#: One log line: (scope, method, path, status, request bytes, seconds, failure text).
LogLine = Callable[[dict, str, str, int, int, float, str], None]


class StreamEndpoint:
    """The ASGI application of ``/v1/stream`` (a websocket scope): ``handlers`` by path (e.g. ``/v1/measure``)."""

    def __init__(self, handlers: dict[str, Handler], authorized: Callable[[dict], bool], refusal: Refusal,
                 log: LogLine, on_request: Callable[[], None] | None) -> None:
        self.handlers, self.authorized, self.refusal = handlers, authorized, refusal
        self.log, self.on_request = log, on_request or (lambda: None)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        start = time.perf_counter()
        await receive()                                  # websocket.connect: the handshake, headers complete
        status, reason = self._admission(scope)
        if status != 101:
            await _refuse(scope, send, status, reason)
        else:
            await send({"type": "websocket.accept", "subprotocol": SUBPROTOCOL})
        self.log(scope, "GET", scope["path"], status, 0, time.perf_counter() - start, "")
        self.on_request()
        if status != 101:
            return
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return                                   # websocket.disconnect
            if not await self._answer(scope, message, send):
                await send({"type": "websocket.close", "code": 1008})
                return

    def _admission(self, scope: dict) -> tuple[int, str]:
        """101 (accept), or the status and reason of a refused handshake."""
        if scope["path"] != f"/{PROTOCOL}/stream":
            return 404, f"no stream at {scope['path'][:80]!r}; the stream is /{PROTOCOL}/stream"
        if not self.authorized(scope):
            return 401, "missing or wrong token; send 'Authorization: Bearer TOKEN'"
        if SUBPROTOCOL not in scope.get("subprotocols", []):
            return 400, f"offer the WebSocket subprotocol {SUBPROTOCOL!r} (Sec-WebSocket-Protocol)"
        return 101, ""

    async def _answer(self, scope: dict, message: dict, send: Callable) -> bool:
        """Answer one message; False when the stream must close after it (a refusal that closes, or a bug)."""
        start, data, path, failure, timing = time.perf_counter(), message.get("bytes"), "-", "", ""
        try:
            if data is None:
                raise WireError("the stream carries binary messages only; send the request as bytes")
            path, body = decode_request(data)
            handler = self.handlers.get(path)
            if handler is None:
                status, keep = 404, True
                content = _json({"error": f"the stream serves {', '.join(sorted(self.handlers))}, not {path}"})
            else:
                content, seconds = await handler(*decode_frame(body, "the request body"))
                status, keep, timing = 200, True, server_timing(seconds)
        except Exception as exc:                   # noqa: BLE001 - a refusal is answered, anything else a 500
            refused = self.refusal(exc)
            if refused is None:
                failure = f" ({type(exc).__name__}: {printable(str(exc), 120)})"
                refused = (500, {"error": "the server failed on this request; see its log"}, True)
            status, doc, close = refused
            content, keep = _json(doc), not close
        await send({"type": "websocket.send", "bytes": encode_reply(status, timing, content)})
        self.log(scope, "STREAM", path, status, len(data or message.get("text") or ""),
                 time.perf_counter() - start, failure)
        self.on_request()
        return keep


async def _refuse(scope: dict, send: Callable, status: int, reason: str) -> None:
    """A refused handshake as an HTTP reply with a JSON error where uvicorn lets the application send one
    (the ``websocket.http.response`` extension), else uvicorn's own 403."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    body = _json({"error": reason})
    await send({"type": "websocket.http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "websocket.http.response.body", "body": body})


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, allow_nan=False).encode()

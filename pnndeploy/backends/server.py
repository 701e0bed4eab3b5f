"""`pnndeploy chip serve`: one simulated chip behind a real HTTP server, reached only over the network.

Why HTTP with FastAPI/uvicorn (server) and httpx (client): a lab's station is
usually scripted in whatever language its instruments speak, and HTTP + JSON is the
one wire every one of them has; FastAPI and uvicorn are well kept, small enough,
and make the protocol visible (``/docs`` lists it); httpx gives the client strict
timeouts and streamed reads.  gRPC would need generated stubs on the lab's side.

What a real station would do is here: a bearer token on every request (401
otherwise, compared in constant time), request size limits (413), measurement
noise and a latency per batch, and a log line per request on stderr.  For tests
and demos it stops by itself after ``max_requests`` requests or ``idle_timeout``
seconds without one.  Hidden fault modes (``fault``) make it misbehave on
``/infer`` the way broken stations do, so the client's handling can be tested
against a real process.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
# at module level: FastAPI reads the handlers' (string) annotations in this module's namespace
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from pnndeploy.backends.base import BackendError, LayerProgram
from pnndeploy.backends.frame import BINARY_TYPE, VERSION as FRAME_VERSION, decode_frame, encode_frame, is_binary, \
    json_message
from pnndeploy.backends.guard import ConnectionGuard, guarded_protocol, guarded_ws_protocol, printable
from pnndeploy.backends.simulated import SimulatedChip
from pnndeploy.backends.slots import Slots, Stale
from pnndeploy.backends.stream import ENVELOPE_BYTES, SUBPROTOCOL, server_timing
from pnndeploy.backends.stream_server import Handler, StreamEndpoint
from pnndeploy.backends.wire import MAX_BODY_BYTES, PROTOCOL, field_array, loads_object

#: Misbehaviours the server can be told to show on /infer (tests of the client's fault handling).
FAULTS = ("malformed", "oversized", "stall", "nan")
#: How long a stalled reply waits, s (longer than any sane client timeout; bounded so the process still ends).
STALL_S = 30.0
#: Largest request line plus headers, bytes (h11 answers 400 beyond it).
MAX_HEADER_BYTES = 16 * 1024


@dataclass
class ServerSettings:
    """How the chip server runs."""

    host: str = "127.0.0.1"
    port: int = 0                          # 0: any free port (logged and written to port_file)
    token: str = ""
    latency_s: float = 0.002               # added to every measurement request, as a station's readout takes
    max_requests: int | None = None        # stop after this many requests, refused ones included (None: never)
    idle_timeout: float | None = None      # stop after this many seconds without a request (None: never)
    fault: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    header_timeout: float = 10.0           # a connection's request headers must be complete within this, s
    body_timeout: float = 30.0             # a request's body must be complete within this after its headers, s
    max_connections: int = 64              # open connections at most; beyond, the one waiting longest is dropped
    max_client_connections: int = 16       # the same, per client address
    tls_cert: str | None = None            # PEM certificate chain and key: serve https
    tls_key: str | None = None


class Refused(Exception):
    """A request refused while its body was read: answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _log(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _error(status: int, message: str) -> JSONResponse:
    """An error reply that also closes the connection (a refused peer gets no second try on it)."""
    return JSONResponse({"error": message}, status_code=status, headers={"Connection": "close"})


def create_app(chip: SimulatedChip, settings: ServerSettings, on_request: Callable[[], None] | None = None) -> Any:
    """The chip server as an ASGI application: the FastAPI routes (protocol v1) inside :func:`_guard`."""
    app = FastAPI(title="pnndeploy chip server", version=PROTOCOL,
                  description=f"One {chip.profile.platform} chip ({chip.profile.device_id}); protocol {PROTOCOL}.")
    if len(settings.token) < 16:
        raise BackendError("the chip server needs a token of at least 16 characters")
    lean, streamed = _routes(app, chip, settings)
    return _guard(app, settings, printable(chip.profile.device_id, 64), on_request, lean, streamed)


def _guard(app: Any, settings: ServerSettings, name: str, on_request: Callable[[], None] | None,
           lean: dict[tuple[str, str], Callable] | None = None, streamed: dict[str, Handler] | None = None) -> Any:
    """Every request: the token (401) and declared size (413) checked before the app sees it, one escaped log
    line, counted (refused and failed ones too), and never a traceback: an unexpected error is a one-line 500.

    ``lean``: (method, path) -> a plain ASGI handler that serves that route past the token and size checks
    without FastAPI's layers (the in-situ hot path, ``POST /v1/measure``); every other request goes to ``app``.
    ``streamed``: path -> the handler of that path's messages on the stream (a WebSocket at ``/v1/stream``,
    :class:`~pnndeploy.backends.stream_server.StreamEndpoint`: the same token, logging and counting)."""
    token = settings.token.encode()
    lean = lean or {}

    def authorized(scope: dict) -> bool:
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        return given.startswith(b"Bearer ") and hmac.compare_digest(given[7:], token)

    def log(scope: dict, method: str, path: str, status: int, size: Any, seconds: float, failure: str) -> None:
        client = scope.get("client") or ("-", 0)
        _log(f"chip {name}: {printable(str(client[0]), 64)} {printable(method, 16)} {printable(path)} "
             f"{status or '-'} {printable(str(size), 24) or 0} B {1000 * seconds:.1f} ms{failure}")

    stream = StreamEndpoint(streamed or {}, authorized, _refusal_of, log, on_request)

    async def guarded(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "websocket":
            return await stream(scope, receive, send)
        if scope["type"] != "http":
            return await app(scope, receive, send)
        start, status = time.perf_counter(), [0]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        headers = {k.decode("latin-1"): v for k, v in scope["headers"]}
        size = headers.get("content-length", b"").decode("latin-1")
        failure = ""
        try:
            if not authorized(scope):
                await _error(401, "missing or wrong token; send 'Authorization: Bearer TOKEN'")(scope, receive,
                                                                                              send_status)
            elif size and (not size.isdigit() or int(size) > settings.max_body_bytes):
                await _error(413, f"request larger than {settings.max_body_bytes} bytes; send smaller batches")(
                    scope, receive, send_status)
            else:
                await lean.get((scope["method"], scope["path"]), app)(scope, receive, send_status)
        except Exception as exc:                      # noqa: BLE001 - the one place that turns any bug into a 500
            failure = f" ({type(exc).__name__}: {printable(str(exc), 120)})"
            if not status[0]:
                await _error(500, "the server failed on this request; see its log")(scope, receive, send_status)
        finally:
            log(scope, scope["method"], scope["path"], status[0], size, time.perf_counter() - start, failure)
            if on_request is not None:
                on_request()

    return guarded


async def _read_body(request: Request, settings: ServerSettings) -> bytes:
    """The request's body, counted as it arrives (a chunked body has no length) and complete within
    ``body_timeout``: :class:`Refused` (413, 408, 400) otherwise."""
    from starlette.requests import ClientDisconnect

    chunks, size = [], 0
    try:
        async with asyncio.timeout(settings.body_timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > settings.max_body_bytes:
                    raise Refused(413, f"request larger than {settings.max_body_bytes} bytes; send smaller batches")
                chunks.append(chunk)
    except TimeoutError:
        raise Refused(408, f"the request body was not complete within {settings.body_timeout:g} s "
                           "(the server's --body-timeout); send it at once") from None
    except ClientDisconnect:
        raise Refused(400, "the connection closed before the request body was complete") from None
    return b"".join(chunks)


async def _read_message(request: Request, settings: ServerSettings) -> tuple[dict, dict[str, np.ndarray]]:
    """(fields, arrays) of the request: a binary frame when its Content-Type says so, else a JSON object
    (whose arrays stay JSON array objects, decoded by :func:`field_array`); WireError (400) if malformed."""
    raw = await _read_body(request, settings)
    if is_binary(request.headers.get("content-type", "")):
        return decode_frame(raw, "the request body")
    return loads_object(raw, "the request body"), {}


def _reply(request: Request, fields: dict, arrays: dict[str, np.ndarray], timing: dict[str, float]) -> Response:
    """A measurement's reply in the wire the client accepts (a frame if its Accept names it, else JSON), with
    the server's own time in a Server-Timing header (ms): ``readout`` (the station's latency), ``chip``."""
    headers = {"Server-Timing": server_timing(timing)}
    if BINARY_TYPE in request.headers.get("accept", ""):
        return Response(encode_frame(fields, arrays), media_type=BINARY_TYPE, headers=headers)
    return JSONResponse(json_message(fields, arrays), headers=headers)


def _refusal_of(exc: Exception) -> tuple[int, dict, bool] | None:
    """What a refused request gets: (status, JSON error object, whether the connection closes); None: not a
    refusal, a bug.  409 for a :class:`Stale` version, 400 for what the chip or the decoder refuses and for
    out-of-range numbers, the status of a :class:`Refused` (connection closed).  One mapping for the FastAPI
    routes, the lean one and the stream."""
    if isinstance(exc, Stale):
        return 409, {"error": str(exc), "stale": True}, False
    if isinstance(exc, BackendError):
        return 400, {"error": str(exc)}, False
    if isinstance(exc, Refused):
        return exc.status, {"error": str(exc)}, True
    if isinstance(exc, (OverflowError, ValueError)):
        return 400, {"error": f"a number in the request is out of range ({exc})"}, False
    return None


def _refusal(exc: Exception) -> Response | None:
    """The JSON error reply of a refused request (:func:`_refusal_of`; None: a bug)."""
    refused = _refusal_of(exc)
    if refused is None:
        return None
    status, doc, close = refused
    return _error(status, doc["error"]) if close else JSONResponse(doc, status_code=status)


def _error_handlers(app: FastAPI) -> None:
    """Refusals as JSON errors (:func:`_refusal`)."""

    async def refused(request: Request, exc: Exception) -> Any:
        return _refusal(exc)

    for kind in (Stale, BackendError, Refused, OverflowError, ValueError):
        app.add_exception_handler(kind, refused)


def _routes(app: FastAPI, chip: SimulatedChip,
            settings: ServerSettings) -> tuple[dict[tuple[str, str], Callable], dict[str, Handler]]:
    """The protocol's routes on ``app``; returns the lean handlers :func:`_guard` serves past FastAPI and the
    stream's handlers."""
    lock = threading.Lock()
    slots = Slots(chip)
    streamed: dict[str, Handler] = {}         # the stream's handlers by path, filled below
    _error_handlers(app)

    async def body(request: Request) -> tuple[dict, dict[str, np.ndarray]]:
        return await _read_message(request, settings)

    def run(fn: Callable[[], Any]) -> Any:
        with lock:
            return fn()

    async def readout() -> float:
        """The station's readout latency (slept, not computed): reported apart from transport.  None configured
        (``--latency-ms 0``), none slept: even a sleep of 0 costs the request a turn of the event loop."""
        if settings.latency_s <= 0:
            return 0.0
        start = time.perf_counter()
        await asyncio.sleep(settings.latency_s)
        return time.perf_counter() - start

    _control_routes(app, chip, slots, body, run, streamed)

    async def infer_message(doc: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, dict, dict]:
        layer = doc.get("layer")
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise BackendError("'layer' must be an integer slot")
        x = _inputs(doc, arrays, chip, finite=False)
        y, seconds = run(lambda: _timed(chip.infer, layer, x))
        return {}, {"y": y}, {"readout": await readout(), "chip": seconds}

    async def transfer_message(doc: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, dict, dict]:
        rows, cols, controls = _sweep(doc, arrays, chip)
        W, seconds = run(lambda: _timed(chip.measure_transfer, np.asarray(rows), np.asarray(cols), controls))
        return {}, {"weights": W}, {"readout": await readout(), "chip": seconds}

    @app.post(f"/{PROTOCOL}/infer")
    async def infer(request: Request) -> Any:
        fields, arrays, timing = await infer_message(*await body(request))
        return await _measured(request, fields, arrays["y"], timing, settings)

    @app.post(f"/{PROTOCOL}/measure_transfer")
    async def measure_transfer(request: Request) -> Any:
        return _reply(request, *await transfer_message(*await body(request)))

    lean, measure_message = _measure_route(app, chip, settings, slots, body, run, readout)
    streamed.update({f"/{PROTOCOL}/infer": _streamed(infer_message, settings),
                     f"/{PROTOCOL}/measure": _streamed(measure_message, settings),
                     f"/{PROTOCOL}/measure_transfer": _streamed(transfer_message, None)})
    return {("POST", f"/{PROTOCOL}/measure"): lean}, streamed


def _control_routes(app: FastAPI, chip: SimulatedChip, slots: Slots, body: Callable, run: Callable,
                    streamed: dict[str, Handler]) -> None:
    """The JSON routes that describe and set up the chip: /info (the wires offered, the paths the stream serves:
    ``streamed``, filled by the time a request comes), /program and /temperature."""

    @app.get(f"/{PROTOCOL}/info")
    async def info() -> Any:
        reply = run(chip.info).to_dict()
        return {**reply, "supports": sorted({*reply["supports"], "measure"}), "protocol": PROTOCOL,
                "wire": {"binary": BINARY_TYPE, "frame_version": FRAME_VERSION,
                         "stream": {"path": f"/{PROTOCOL}/stream", "subprotocol": SUBPROTOCOL,
                                    "serves": sorted(streamed)}}}

    @app.post(f"/{PROTOCOL}/program")
    async def program(request: Request) -> Any:
        doc, _ = await body(request)
        layers = doc.get("layers")
        if not isinstance(layers, list) or not layers:
            raise BackendError("'layers' must be a non-empty list of {index, weight_shape, settings}")
        programs = []
        for k, layer in enumerate(layers):
            index, shape = _slot(layer, f"layers[{k}]", True)
            programs.append(LayerProgram(index, shape, field_array(layer, {}, "settings")))
        versions = run(lambda: slots.program(programs))
        return {"programmed": [p.index for p in programs], "versions": versions}

    @app.post(f"/{PROTOCOL}/temperature")
    async def temperature(request: Request) -> Any:
        doc, _ = await body(request)
        celsius = doc.get("celsius")
        if not isinstance(celsius, (int, float)) or isinstance(celsius, bool):
            raise BackendError("'celsius' must be a number")
        run(lambda: chip.set_temperature(float(celsius)))
        return {"temperature_C": chip.temperature_C}


def _streamed(message: Callable, settings: ServerSettings | None) -> Handler:
    """A route's (fields, arrays) -> (fields, arrays, time) as the stream's handler: its reply as a binary frame,
    misbehaving as ``settings.fault`` says where ``settings`` is given (the routes that measure)."""

    async def handler(doc: dict, arrays: dict[str, np.ndarray]) -> tuple[bytes, dict[str, float]]:
        fields, out, timing = await message(doc, arrays)
        if settings is not None:
            y, raw = await _misbehave(out["y"], settings)
            if raw is not None:
                return raw, timing
            out = {"y": y}
        return encode_frame(fields, out), timing

    return handler


def _measure_route(app: FastAPI, chip: SimulatedChip, settings: ServerSettings, slots: Slots, body: Callable,
                   run: Callable, readout: Callable) -> tuple[Callable, Callable]:
    """``POST /v1/measure`` on ``app`` (so that /docs lists it) and as the lean ASGI handler that serves it:
    (the lean handler, the measurement from a request's (fields, arrays) for the stream)."""

    async def measure_message(doc: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, dict, dict]:
        """Program one layer (fully, by its changes since version ``base``, or not at all) and measure it:
        (reply fields, arrays, the station's time)."""
        layer, shape = _slot(doc, "the request", "settings" in doc or "settings" in arrays)
        change = [field_array(doc, arrays, name, finite=True, mask=name == "mask")
                  if name in doc or name in arrays else None for name in ("settings", "mask", "values")]
        x = _inputs(doc, arrays, chip, finite=True)

        def work() -> tuple[str, bool, np.ndarray, float]:
            start = time.perf_counter()
            version, programmed = slots.ensure(layer, shape, doc.get("base"), *change)
            return version, programmed, chip.infer(layer, x), time.perf_counter() - start

        version, programmed, y, seconds = run(work)
        return ({"version": version, "programmed": programmed}, {"y": y},
                {"readout": await readout(), "chip": seconds})

    async def measured(request: Request) -> Response:
        fields, arrays, timing = await measure_message(*await body(request))
        return await _measured(request, fields, arrays["y"], timing, settings)

    @app.post(f"/{PROTOCOL}/measure")
    async def measure(request: Request) -> Any:
        """Program one layer (fully, by its changes since version ``base``, or not at all) and measure it.
        (Served by the lean handler below.)"""
        return await measured(request)

    async def lean_measure(scope: dict, receive: Callable, send: Callable) -> None:
        """``POST /v1/measure`` without FastAPI's routing, middleware and dependency layers (about a ninth of the
        server's CPU time per exchange, issue 26): the same handler, the same refusals (:func:`_refusal`)."""
        request = Request(scope, receive)
        try:
            response = await measured(request)
        except Exception as exc:                 # noqa: BLE001 - a refusal is answered, anything else re-raised
            response = _refusal(exc)
            if response is None:
                raise
        await response(scope, receive, send)

    return lean_measure, measure_message


def _sweep(doc: dict, arrays: dict[str, np.ndarray], chip: SimulatedChip) -> tuple[list, list, np.ndarray]:
    """(rows, cols, controls) of a /v1/measure_transfer request, within the chip's sweep limit."""
    rows, cols = doc.get("rows"), doc.get("cols")
    if not (isinstance(rows, list) and isinstance(cols, list) and len(rows) == len(cols) and rows
            and all(isinstance(v, int) and not isinstance(v, bool) for v in rows + cols)):
        raise BackendError("'rows' and 'cols' must be equally long non-empty lists of integers")
    controls = field_array(doc, arrays, "controls", 1)
    if len(rows) * len(controls) > chip.info().max_sweep_values:
        raise BackendError(f"sweep of {len(rows)} devices x {len(controls)} points is more than "
                           f"{chip.info().max_sweep_values} values; sweep fewer devices per request")
    return rows, cols, controls


def _slot(doc: Any, where: str, with_shape: bool) -> tuple[int, tuple[int, int] | None]:
    """(slot index, weight shape [out, in] or None when not ``with_shape`` and absent) of a request field."""
    try:
        index = doc.get("index", doc.get("layer"))
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError
        given = doc.get("weight_shape")
        shape = None if given is None and not with_shape else tuple(int(n) for n in given)
    except (AttributeError, TypeError, ValueError):
        raise BackendError(f"{where} needs an integer slot ('index' or 'layer') and 'weight_shape' [out, in]") \
            from None
    if shape is not None and len(shape) != 2:
        raise BackendError(f"{where}: weight_shape must be [out, in]")
    return index, shape


def _inputs(doc: dict, arrays: dict[str, np.ndarray], chip: SimulatedChip, finite: bool) -> np.ndarray:
    """The request's input batch ``x`` (batch, in), at most the chip's ``max_batch`` rows; ``finite`` where NaN
    cannot be meant (/v1/infer lets a NaN an earlier layer measured through, to be reported as invalid)."""
    x = field_array(doc, arrays, "x", 2, finite=finite)
    if len(x) > chip.info().max_batch:
        raise BackendError(f"batch of {len(x)} inputs; this chip takes at most {chip.info().max_batch}")
    return x


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    return fn(*args), time.perf_counter() - start


async def _misbehave(y: np.ndarray, settings: ServerSettings) -> tuple[np.ndarray, bytes | None]:
    """A measurement's ``y`` as ``settings.fault`` has it, or the body the fault sends in place of a reply
    (tests of the client's fault handling)."""
    if settings.fault == "stall":
        await asyncio.sleep(STALL_S)
    if settings.fault == "malformed":
        return y, b'{"y": [1, 2'
    if settings.fault == "oversized":
        return y, b" " * (MAX_BODY_BYTES + 1024)
    if settings.fault == "nan":
        y = y.copy()
        y[0] = np.nan
    return y, None


async def _measured(request: Request, fields: dict, y: np.ndarray, timing: dict[str, float],
                    settings: ServerSettings) -> Response:
    """The reply of a measurement, misbehaving as ``settings.fault`` says."""
    y, raw = await _misbehave(y, settings)
    if raw is not None:
        return Response(raw, media_type="application/json")
    return _reply(request, fields, {"y": y}, timing)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # replies are small and written in pieces: without TCP_NODELAY (inherited by accepted sockets on Linux)
    # Nagle's algorithm meets the client's delayed ACK and every exchange waits ~40 ms
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BackendError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                           "or stop what uses it") from None
    sock.listen(64)
    return sock


def serve(chip: SimulatedChip, settings: ServerSettings, sock: socket.socket) -> None:
    """Serve until stopped (Ctrl-C, SIGTERM, ``max_requests`` or ``idle_timeout``), within a second or two of it:
    a connection still sending a request is dropped, not waited for."""
    import uvicorn

    name = printable(chip.profile.device_id, 64)
    served, last = [0], [time.monotonic()]
    server: Any = None
    guard: ConnectionGuard

    def stop(why: str) -> None:
        if not server.should_exit:
            _log(f"chip {name}: {why}; stopping")
            server.should_exit = True
            guard.drop_unfinished()

    def on_request() -> None:
        served[0] += 1
        last[0] = time.monotonic()
        if settings.max_requests is not None and served[0] >= settings.max_requests:
            stop(f"served {served[0]} requests (--max-requests)")

    guard = ConnectionGuard(settings, lambda line: _log(f"chip {name}: {line}"), on_request)
    _quiet_uvicorn_log(name)
    # the stream (a WebSocket): wsproto under the guard, a message at most a body and its envelope, never
    # compressed (an inflated message could exceed any limit), no pings of the server's own (the guard's
    # deadlines bound an idle stream)
    config = uvicorn.Config(create_app(chip, settings, on_request), http=guarded_protocol(guard),
                            ws=guarded_ws_protocol(guard), ws_max_size=settings.max_body_bytes + ENVELOPE_BYTES,
                            ws_per_message_deflate=False, ws_ping_interval=None, ws_ping_timeout=None,
                            log_config=None, access_log=False, lifespan="off", timeout_keep_alive=5,
                            timeout_graceful_shutdown=2, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                            ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key,
                            server_header=False)
    server = uvicorn.Server(config)

    async def watch() -> None:
        while settings.idle_timeout is not None and not server.should_exit:
            await asyncio.sleep(0.2)
            if time.monotonic() - last[0] > settings.idle_timeout:
                stop(f"idle for {settings.idle_timeout:g} s (--idle-timeout)")

    async def main() -> None:
        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await server.serve(sockets=[sock])
        finally:
            watcher.cancel()

    asyncio.run(main())


class _OneLine(logging.Formatter):
    """uvicorn's own messages as one escaped line, an exception as its type and message: never a traceback."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def format(self, record: logging.LogRecord) -> str:
        exc = record.exc_info[1] if record.exc_info else None
        detail = f" ({type(exc).__name__}: {printable(str(exc), 120)})" if exc is not None else ""
        return f"chip {self.name}: server: {printable(record.getMessage())}{detail}"


def _quiet_uvicorn_log(name: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine(name))
    for logger_name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logger = logging.getLogger(logger_name)
        logger.handlers, logger.propagate = [], False
        logger.setLevel(logging.ERROR)
    logging.getLogger("uvicorn").addHandler(handler)
    logging.getLogger("uvicorn.error").propagate = True

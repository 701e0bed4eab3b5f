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
from pnndeploy.backends.guard import ConnectionGuard, guarded_protocol, printable
from pnndeploy.backends.simulated import SimulatedChip
from pnndeploy.backends.slots import Slots, Stale
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
    lean = _routes(app, chip, settings)
    return _guard(app, settings, printable(chip.profile.device_id, 64), on_request, lean)


def _guard(app: Any, settings: ServerSettings, name: str, on_request: Callable[[], None] | None,
           lean: dict[tuple[str, str], Callable] | None = None) -> Any:
    """Every request: the token (401) and declared size (413) checked before the app sees it, one escaped log
    line, counted (refused and failed ones too), and never a traceback: an unexpected error is a one-line 500.

    ``lean``: (method, path) -> a plain ASGI handler that serves that route past the token and size checks
    without FastAPI's layers (the in-situ hot path, ``POST /v1/measure``); every other request goes to ``app``."""
    token = settings.token.encode()
    lean = lean or {}

    async def guarded(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        start, status = time.perf_counter(), [0]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        headers = {k.decode("latin-1"): v for k, v in scope["headers"]}
        given, size = headers.get("authorization", b""), headers.get("content-length", b"").decode("latin-1")
        failure = ""
        try:
            if not (given.startswith(b"Bearer ") and hmac.compare_digest(given[7:], token)):
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
            client = scope.get("client") or ("-", 0)
            _log(f"chip {name}: {printable(str(client[0]), 64)} {printable(scope['method'], 16)} "
                 f"{printable(scope['path'])} {status[0] or '-'} {printable(size, 24) or 0} B "
                 f"{1000 * (time.perf_counter() - start):.1f} ms{failure}")
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
    headers = {"Server-Timing": ", ".join(f"{name};dur={1000 * seconds:.3f}" for name, seconds in timing.items())}
    if BINARY_TYPE in request.headers.get("accept", ""):
        return Response(encode_frame(fields, arrays), media_type=BINARY_TYPE, headers=headers)
    return JSONResponse(json_message(fields, arrays), headers=headers)


def _refusal(exc: Exception) -> Response | None:
    """The JSON error reply of a refused request (None: not a refusal, a bug): 409 for a :class:`Stale` version,
    400 for what the chip or the decoder refuses and for out-of-range numbers, the status of a :class:`Refused`
    (connection closed).  One mapping for the FastAPI routes and the lean one."""
    if isinstance(exc, Stale):
        return JSONResponse({"error": str(exc), "stale": True}, status_code=409)
    if isinstance(exc, BackendError):
        return JSONResponse({"error": str(exc)}, status_code=400)
    if isinstance(exc, Refused):
        return _error(exc.status, str(exc))
    if isinstance(exc, (OverflowError, ValueError)):
        return JSONResponse({"error": f"a number in the request is out of range ({exc})"}, status_code=400)
    return None


def _error_handlers(app: FastAPI) -> None:
    """Refusals as JSON errors (:func:`_refusal`)."""

    async def refused(request: Request, exc: Exception) -> Any:
        return _refusal(exc)

    for kind in (Stale, BackendError, Refused, OverflowError, ValueError):
        app.add_exception_handler(kind, refused)


def _routes(app: FastAPI, chip: SimulatedChip, settings: ServerSettings) -> dict[tuple[str, str], Callable]:
    """The protocol's routes on ``app``; returns the lean handlers :func:`_guard` serves past FastAPI."""
    lock = threading.Lock()
    slots = Slots(chip)
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

    @app.get(f"/{PROTOCOL}/info")
    async def info() -> Any:
        reply = run(chip.info).to_dict()
        return {**reply, "supports": sorted({*reply["supports"], "measure"}), "protocol": PROTOCOL,
                "wire": {"binary": BINARY_TYPE, "frame_version": FRAME_VERSION}}

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

    @app.post(f"/{PROTOCOL}/infer")
    async def infer(request: Request) -> Any:
        doc, arrays = await body(request)
        layer = doc.get("layer")
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise BackendError("'layer' must be an integer slot")
        x = _inputs(doc, arrays, chip, finite=False)
        y, seconds = run(lambda: _timed(chip.infer, layer, x))
        return await _measured(request, {}, y, {"readout": await readout(), "chip": seconds}, settings)

    @app.post(f"/{PROTOCOL}/measure_transfer")
    async def measure_transfer(request: Request) -> Any:
        rows, cols, controls = _sweep(*await body(request), chip)
        W, seconds = run(lambda: _timed(chip.measure_transfer, np.asarray(rows), np.asarray(cols), controls))
        return _reply(request, {}, {"weights": W}, {"readout": await readout(), "chip": seconds})

    return {("POST", f"/{PROTOCOL}/measure"): _measure_route(app, chip, settings, slots, body, run, readout)}


def _measure_route(app: FastAPI, chip: SimulatedChip, settings: ServerSettings, slots: Slots, body: Callable,
                   run: Callable, readout: Callable) -> Callable:
    """``POST /v1/measure`` on ``app`` (so that /docs lists it) and as the lean ASGI handler that serves it."""

    async def measured(request: Request) -> Response:
        """Program one layer (fully, by its changes since version ``base``, or not at all) and measure it."""
        doc, arrays = await body(request)
        layer, shape = _slot(doc, "the request", "settings" in doc or "settings" in arrays)
        change = [field_array(doc, arrays, name, finite=True, mask=name == "mask")
                  if name in doc or name in arrays else None for name in ("settings", "mask", "values")]
        x = _inputs(doc, arrays, chip, finite=True)

        def work() -> tuple[str, bool, np.ndarray, float]:
            start = time.perf_counter()
            version, programmed = slots.ensure(layer, shape, doc.get("base"), *change)
            return version, programmed, chip.infer(layer, x), time.perf_counter() - start

        version, programmed, y, seconds = run(work)
        return await _measured(request, {"version": version, "programmed": programmed}, y,
                               {"readout": await readout(), "chip": seconds}, settings)

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

    return lean_measure


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


async def _measured(request: Request, fields: dict, y: np.ndarray, timing: dict[str, float],
                    settings: ServerSettings) -> Response:
    """The reply of a measurement, misbehaving as ``settings.fault`` says (tests of the client)."""
    if settings.fault == "stall":
        await asyncio.sleep(STALL_S)
    if settings.fault == "malformed":
        return Response(b'{"y": [1, 2', media_type="application/json")
    if settings.fault == "oversized":
        return Response(b" " * (MAX_BODY_BYTES + 1024), media_type="application/json")
    if settings.fault == "nan":
        y = y.copy()
        y[0] = np.nan
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
    config = uvicorn.Config(create_app(chip, settings, on_request), http=guarded_protocol(guard),
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

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
import json
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
from pnndeploy.backends.simulated import SimulatedChip
from pnndeploy.backends.wire import MAX_BODY_BYTES, PROTOCOL, decode_array, encode_array

#: Misbehaviours the server can be told to show on /infer (tests of the client's fault handling).
FAULTS = ("malformed", "oversized", "stall", "nan")
#: How long a stalled reply waits, s (longer than any sane client timeout; bounded so the process still ends).
STALL_S = 30.0


@dataclass
class ServerSettings:
    """How the chip server runs."""

    host: str = "127.0.0.1"
    port: int = 0                          # 0: any free port (logged and written to port_file)
    token: str = ""
    latency_s: float = 0.002               # added to every measurement request, as a station's readout takes
    max_requests: int | None = None        # stop after this many requests (None: never)
    idle_timeout: float | None = None      # stop after this many seconds without a request (None: never)
    fault: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES


class TooLarge(Exception):
    """A request body beyond the size limit."""


def _log(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def create_app(chip: SimulatedChip, settings: ServerSettings, on_request: Callable[[], None] | None = None) -> Any:
    """The FastAPI application serving ``chip`` (protocol v1)."""
    app = FastAPI(title="pnndeploy chip server", version=PROTOCOL,
                  description=f"One {chip.profile.platform} chip ({chip.profile.device_id}); protocol {PROTOCOL}.")
    lock = threading.Lock()
    if len(settings.token) < 16:
        raise BackendError("the chip server needs a token of at least 16 characters")
    token = settings.token.encode()
    name = chip.profile.device_id

    def error(status: int, message: str) -> Any:
        return JSONResponse({"error": message}, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        given = request.headers.get("authorization", "")
        size = request.headers.get("content-length")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token)):
            response = error(401, "missing or wrong token; send 'Authorization: Bearer TOKEN'")
        elif size is not None and (not size.isdigit() or int(size) > settings.max_body_bytes):
            response = error(413, f"request larger than {settings.max_body_bytes} bytes; send smaller batches")
        else:
            response = await call_next(request)
        _log(f"chip {name}: {request.client.host if request.client else '-'} {request.method} {request.url.path} "
             f"{response.status_code} {size or 0} B {1000 * (time.perf_counter() - start):.1f} ms")
        if on_request is not None:
            on_request()
        return response

    async def body(request: Request) -> dict:
        chunks, size = [], 0
        async for chunk in request.stream():          # counted as it arrives: a chunked body has no length
            size += len(chunk)
            if size > settings.max_body_bytes:
                raise TooLarge()
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BackendError("the request body is not JSON") from None
        if not isinstance(doc, dict):
            raise BackendError("the request body is not a JSON object")
        return doc

    def run(fn: Callable[[], Any]) -> Any:
        with lock:
            return fn()

    @app.exception_handler(BackendError)
    async def refused(request: Request, exc: BackendError) -> Any:
        return error(400, str(exc))

    @app.exception_handler(TooLarge)
    async def too_large(request: Request, exc: TooLarge) -> Any:
        return error(413, f"request larger than {settings.max_body_bytes} bytes; send smaller batches")

    @app.exception_handler(OverflowError)
    @app.exception_handler(ValueError)
    async def out_of_range(request: Request, exc: Exception) -> Any:
        return error(400, f"a number in the request is out of range ({exc})")

    @app.get(f"/{PROTOCOL}/info")
    async def info() -> Any:
        return {**run(chip.info).to_dict(), "protocol": PROTOCOL}

    @app.post(f"/{PROTOCOL}/program")
    async def program(request: Request) -> Any:
        doc = await body(request)
        layers = doc.get("layers")
        if not isinstance(layers, list) or not layers:
            raise BackendError("'layers' must be a non-empty list of {index, weight_shape, settings}")
        programs = []
        for k, layer in enumerate(layers):
            try:
                index, shape = int(layer["index"]), tuple(int(n) for n in layer["weight_shape"])
            except (KeyError, TypeError, ValueError):
                raise BackendError(f"layers[{k}] needs an integer 'index' and 'weight_shape' [out, in]") from None
            if len(shape) != 2:
                raise BackendError(f"layers[{k}].weight_shape must be [out, in]")
            programs.append(LayerProgram(index, shape, decode_array(layer.get("settings"), f"layers[{k}].settings")))
        run(lambda: chip.program(programs))
        return {"programmed": [p.index for p in programs]}

    @app.post(f"/{PROTOCOL}/temperature")
    async def temperature(request: Request) -> Any:
        doc = await body(request)
        celsius = doc.get("celsius")
        if not isinstance(celsius, (int, float)) or isinstance(celsius, bool):
            raise BackendError("'celsius' must be a number")
        run(lambda: chip.set_temperature(float(celsius)))
        return {"temperature_C": chip.temperature_C}

    @app.post(f"/{PROTOCOL}/infer")
    async def infer(request: Request) -> Any:
        doc = await body(request)
        layer = doc.get("layer")
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise BackendError("'layer' must be an integer slot")
        x = decode_array(doc.get("x"), "x", 2)
        if len(x) > chip.info().max_batch:
            raise BackendError(f"batch of {len(x)} inputs; this chip takes at most {chip.info().max_batch}")
        y = run(lambda: chip.infer(layer, x))
        await asyncio.sleep(settings.latency_s)
        if settings.fault == "stall":
            await asyncio.sleep(STALL_S)
        if settings.fault == "malformed":
            return Response(b'{"y": [1, 2', media_type="application/json")
        if settings.fault == "oversized":
            return Response(b" " * (MAX_BODY_BYTES + 1024), media_type="application/json")
        if settings.fault == "nan":
            y = y.copy()
            y[0] = np.nan
        return {"y": encode_array(y)}

    @app.post(f"/{PROTOCOL}/measure_transfer")
    async def measure_transfer(request: Request) -> Any:
        doc = await body(request)
        rows, cols = doc.get("rows"), doc.get("cols")
        if not (isinstance(rows, list) and isinstance(cols, list) and len(rows) == len(cols) and rows
                and all(isinstance(v, int) and not isinstance(v, bool) for v in rows + cols)):
            raise BackendError("'rows' and 'cols' must be equally long non-empty lists of integers")
        controls = decode_array(doc.get("controls"), "controls", 1)
        if len(rows) * len(controls) > chip.info().max_sweep_values:
            raise BackendError(f"sweep of {len(rows)} devices x {len(controls)} points is more than "
                               f"{chip.info().max_sweep_values} values; sweep fewer devices per request")
        W = run(lambda: chip.measure_transfer(np.asarray(rows), np.asarray(cols), controls))
        await asyncio.sleep(settings.latency_s)
        return {"weights": encode_array(W)}

    return app


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
    """Serve until stopped (Ctrl-C, SIGTERM, ``max_requests`` or ``idle_timeout``)."""
    import uvicorn

    served = [0]
    last = [time.monotonic()]
    server: Any = None

    def on_request() -> None:
        served[0] += 1
        last[0] = time.monotonic()
        if settings.max_requests is not None and served[0] >= settings.max_requests:
            _log(f"chip {chip.profile.device_id}: served {served[0]} requests (--max-requests); stopping")
            server.should_exit = True

    app = create_app(chip, settings, on_request)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_keep_alive=5, limit_concurrency=32)
    server = uvicorn.Server(config)
    if settings.idle_timeout is not None:
        def watch() -> None:
            while not server.should_exit:
                time.sleep(0.2)
                if time.monotonic() - last[0] > settings.idle_timeout:
                    _log(f"chip {chip.profile.device_id}: idle for {settings.idle_timeout:g} s (--idle-timeout); "
                         "stopping")
                    server.should_exit = True
        threading.Thread(target=watch, daemon=True).start()
    server.run(sockets=[sock])

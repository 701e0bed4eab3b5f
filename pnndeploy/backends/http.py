"""The ``http`` backend: a chip behind a chip server (`pnndeploy chip serve`, or a lab's own) on the network.

Every exchange is bounded: one deadline (``--timeout``) over the whole exchange,
connect and TLS handshake to the last byte of the reply (:mod:`pnndeploy.backends.deadline`),
at most :data:`RETRIES` retries with exponential backoff for transient failures
(refused or dropped connections, timeouts, 502/503/504), replies in identity
encoding only (a compressed reply is refused, never inflated), a reply size limit,
and a strict decoder (JSON nested at most 32 deep).  Whatever goes wrong ends as one
:class:`BackendError` line naming the server and what to do.  The token comes from
the profile's ``token_file`` (a name in its ``tokens/`` folder, owner-only) or
``$PNNDEPLOY_CHIP_TOKEN`` (:mod:`pnndeploy.backends.credentials`) and is sent as
``Authorization: Bearer``; over ``https://`` the station's certificate is verified
against the profile's ``ca_file`` or the system's store; plain ``http://`` to a
non-loopback host needs ``--insecure``.  Protocol: README, section "Connecting a lab's station".
"""

from __future__ import annotations

import dataclasses
import json
import math
import ssl
import time
from urllib.parse import urlsplit
from functools import partial
from typing import Any, Callable, Iterable, Mapping, Sequence

import h11
import numpy as np

from pnndeploy.backends.base import BackendError, ChipBackend, ChipInfo, LayerProgram
from pnndeploy.backends.credentials import TOKEN_ENV, credential_path, plain_http_problem, read_secret, token_from
from pnndeploy.backends.frame import BINARY_TYPE, decode_frame, encode_frame, is_binary, json_message
from pnndeploy.backends.slots import Stale, pack_changes
from pnndeploy.backends.wire import MAX_BODY_BYTES, PROTOCOL, WireError, encode_array, field_array, loads_object

#: Retries after the first try of a request that failed transiently, and the first backoff (doubles each time).
RETRIES, BACKOFF_S = 3, 0.2
#: How long a wait for a reply polls before it sleeps on the binary wire and the stream, ms (backend option
#: ``busy_poll_ms``; 0: never; :class:`~pnndeploy.backends.busy_poll.BusyPoll`): a station on loopback or a LAN
#: answers a layer within about a millisecond, and on a virtual machine sleeping through that wait costs as much.
BUSY_POLL_MS, MAX_BUSY_POLL_MS = 2.0, 50.0
_TRANSIENT_STATUS = {502, 503, 504}
#: The wires a client may ask for (backend option ``wire``): auto (the stream, else binary, as the server offers),
#: stream (binary frames on a WebSocket), binary (a binary frame per HTTP request), json.
WIRES = ("auto", "stream", "binary", "json")


class HttpBackend(ChipBackend):
    """A chip server reached over HTTP (httpx: timeouts, connection reuse, streamed replies)."""

    kind = "http"
    measures_meanwhile = True

    def __init__(self, address: str = "", options: Mapping[str, Any] | None = None, timeout: float = 10.0) -> None:
        super().__init__(address.rstrip("/"), options, timeout)
        check_url(self.address)
        try:
            self.retries = int(self.options.get("retries", RETRIES))
        except (TypeError, ValueError):
            raise BackendError(f"backend option retries={self.options.get('retries')!r} is not an integer") from None
        if not 0 <= self.retries <= 10:
            raise BackendError(f"backend option retries={self.retries}: use 0..10")
        self.wire = str(self.options.get("wire", "auto"))
        if self.wire not in WIRES:
            raise BackendError(f"backend option wire={self.wire!r}: use one of {', '.join(WIRES)}")
        self.busy_poll_ms = _busy_poll_ms(self.options.get("busy_poll_ms", BUSY_POLL_MS))
        self.busy_poll: Any = None      # the measurements' BusyPoll (polls and hits), made by open()
        self._client: Any = None
        self._lean: Any = None          # binary-wire exchanges (:mod:`pnndeploy.backends.exchange`)
        self._stream: Any = None        # the same on the stream (:mod:`pnndeploy.backends.stream`)
        self._deadline: Any = None
        self._info: ChipInfo | None = None
        self.binary = self.streamed = False
        self.stream_paths: frozenset[str] = frozenset()     # the paths the server serves on its stream
        self.stream_refused: int | None = None              # the status of an upgrade refused on the way (auto)
        #: Per slot, the program version the server named and the settings it holds under it.
        self._held: dict[int, tuple[str, np.ndarray]] = {}
        #: The station's own time reported in Server-Timing (readout latency, chip), s; request bodies sent
        #: and reply bodies received, bytes; exchanges made.
        self.station_seconds = {"readout": 0.0, "chip": 0.0}
        self.bytes_sent = self.bytes_received = self.exchanges = 0

    # ------------------------------------------------------------------------------------------ session
    def open(self) -> ChipInfo:
        import httpx

        from pnndeploy.backends.busy_poll import BusyPoll
        from pnndeploy.backends.deadline import Deadline, deadline_transport
        from pnndeploy.backends.exchange import Exchange
        from pnndeploy.backends.stream import Stream

        where = f"chip server {self.address}"
        problem = plain_http_problem(self.kind, self.address, self.options)
        if problem and not self.trust.insecure:
            raise BackendError(f"{where}: {problem}")
        token = token_from(self.trust, self.options, where)
        context = self._tls_context(where) if urlsplit(self.address).scheme == "https" else None
        self.close()
        self._deadline = Deadline()
        common = {"Authorization": f"Bearer {token}", "Accept-Encoding": "identity"}
        self._client = httpx.Client(base_url=f"{self.address}/{PROTOCOL}", timeout=httpx.Timeout(self.timeout),
                                    transport=deadline_transport(context, self._deadline), trust_env=False,
                                    headers=common, follow_redirects=False)
        self.busy_poll = BusyPoll(self.busy_poll_ms / 1000)
        self._lean = Exchange(f"{self.address}/{PROTOCOL}", common, context or ssl.create_default_context(),
                              self._deadline, self.timeout, self.busy_poll)
        self._stream = Stream(f"{self.address}/{PROTOCOL}", common, context or ssl.create_default_context(),
                              self._deadline, self.timeout, self.busy_poll)
        try:
            reply, _ = self._request("GET", "/info")
            self._info = self._parse_info(reply)
            self.binary, self.streamed = self._wires(reply.get("wire"), where)
        except BaseException:
            self.close()
            raise
        return self._info

    def _wires(self, offered: Any, where: str) -> tuple[bool, bool]:
        """(binary, stream): which of the server's offered wires (its /info ``wire``) this client uses, as the
        backend option ``wire`` asks; the stream only at the path and subprotocol this client speaks."""
        from pnndeploy.backends.stream import SUBPROTOCOL

        offered = offered if isinstance(offered, dict) else {}
        binary = offered.get("binary") == BINARY_TYPE
        stream = offered.get("stream") if isinstance(offered.get("stream"), dict) else {}
        serves = stream.get("serves") if isinstance(stream.get("serves"), list) else []
        self.stream_paths = frozenset(p for p in serves[:64] if isinstance(p, str))
        stream = binary and bool(self.stream_paths) and stream.get("path") == f"/{PROTOCOL}/stream" \
            and stream.get("subprotocol") == SUBPROTOCOL
        if self.wire == "binary" and not binary:
            raise BackendError(f"{where}: backend option wire=binary, but the server offers no {BINARY_TYPE} wire; "
                               "use wire=json or wire=auto")
        if self.wire == "stream" and not stream:
            raise BackendError(f"{where}: backend option wire=stream, but the server offers no stream of "
                               f"subprotocol {SUBPROTOCOL}; use wire=binary, wire=json or wire=auto")
        return self.wire in ("auto", "stream", "binary") and binary, self.wire in ("auto", "stream") and stream

    def _tls_context(self, where: str) -> ssl.SSLContext:
        """Verification against the profile's ca_file (a name in its tokens folder), else the system's store."""
        name = self.options.get("ca_file")
        if not name:
            return ssl.create_default_context()
        path = credential_path(self.trust, "ca_file", str(name), where)
        try:
            return ssl.create_default_context(cadata=read_secret(path, f"{where}: CA file", secret=False))
        except (ssl.SSLError, ValueError) as exc:
            raise BackendError(f"{where}: CA file {path} holds no usable PEM certificate ({exc}); give the "
                               "station's CA certificate (`chip connect --ca-file`)") from None

    def _parse_info(self, reply: dict) -> ChipInfo:
        try:
            temperature = reply.get("temperature_C")
            info = ChipInfo(device_id=str(reply["device_id"]), platform=str(reply["platform"]),
                            array=(int(reply["array"][0]), int(reply["array"][1])),
                            firmware=str(reply["firmware"]), supports=frozenset(map(str, reply["supports"])),
                            temperature_C=None if temperature is None else float(temperature),
                            max_batch=int(reply.get("max_batch", 256)),
                            max_sweep_values=int(reply.get("max_sweep_values", 65536)))
        except (KeyError, TypeError, ValueError, IndexError, OverflowError):
            info = None
        if info is None or info.max_batch < 1 or info.max_sweep_values < 1 or min(info.array) < 1 \
                or (info.temperature_C is not None and not math.isfinite(info.temperature_C)):
            raise BackendError(f"chip server {self.address}: malformed /info reply (missing or impossible "
                               "fields); is this a pnndeploy chip server of protocol v1?")
        return info

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        for exchange in (self._lean, self._stream):
            if exchange is not None:
                exchange.close()
        self._lean = self._stream = None

    @property
    def wire_in_use(self) -> str:
        """How measurements travel to this station now: ``stream``, ``binary`` (a frame per HTTP request) or
        ``json`` (what /v1/info offered and the backend option ``wire`` allowed; ``binary`` once a proxy refused
        the stream, see ``stream_refused``)."""
        return "stream" if self.streamed else "binary" if self.binary else "json"

    def info(self) -> ChipInfo:
        if self._info is None:
            raise BackendError(f"chip server {self.address}: not open")
        return self._info

    # --------------------------------------------------------------------------------------- operations
    def program(self, layers: Sequence[LayerProgram]) -> None:
        reply, _ = self._request("POST", "/program", {"layers": [
            {"index": int(layer.index), "weight_shape": [int(n) for n in layer.weight_shape],
             "settings": encode_array(layer.settings)} for layer in layers]})
        versions = reply.get("versions")
        for k, layer in enumerate(layers):
            self._held.pop(int(layer.index), None)
            if isinstance(versions, list) and len(versions) == len(layers) and isinstance(versions[k], str):
                self._held[int(layer.index)] = (versions[k], np.array(layer.settings, np.float64))

    def set_temperature(self, celsius: float) -> None:
        if "temperature" not in self.info().supports:
            super().set_temperature(celsius)
        if not math.isfinite(celsius):
            raise BackendError(f"temperature {celsius} degC is not a finite number")
        reply, _ = self._request("POST", "/temperature", {"celsius": float(celsius)})
        reached = reply.get("temperature_C")
        if isinstance(reached, (int, float)) and math.isfinite(reached):
            self._info = dataclasses.replace(self.info(), temperature_C=float(reached))

    def infer(self, layer: int, x: np.ndarray) -> np.ndarray:
        y = self._array(self._request("POST", "/infer", {"layer": int(layer)}, {"x": x}), "y", 2)
        if y.shape[0] != len(x):
            raise BackendError(f"chip server {self.address}: /infer returned {y.shape[0]} outputs for {len(x)} inputs")
        return y

    def measure_layer(self, program: LayerProgram, x: np.ndarray,
                      meanwhile: Callable[[], None] | None = None) -> tuple[np.ndarray, bool]:
        """One exchange per batch (``/v1/measure``): the layer's settings ride with its first batch, only those
        that changed since the version the server named (none when none changed); a 409 (the server restarted,
        or another client programmed the slot) re-sends them in full, once.  ``meanwhile`` runs at most once,
        while the station answers a binary-wire exchange (not at all on the JSON wire)."""
        if "measure" not in self.info().supports:
            return super().measure_layer(program, x)
        once = _once(meanwhile)
        try:
            return self._measure_layer(program, x, once)
        except Stale:
            self._held.pop(int(program.index), None)
        try:
            return self._measure_layer(program, x, once)
        except Stale as exc:
            raise BackendError(f"chip server {self.address}: layer {program.index} was re-programmed by someone "
                               f"else while it was measured ({exc}); one client per chip, please") from None

    def _measure_layer(self, program: LayerProgram, x: np.ndarray,
                       meanwhile: Callable[[], None] | None) -> tuple[np.ndarray, bool]:
        index, settings = int(program.index), np.array(program.settings, np.float64)     # held below: a copy
        fields: dict[str, Any] = {"layer": index, "weight_shape": [int(n) for n in program.weight_shape]}
        arrays: dict[str, np.ndarray] = {}
        held = self._held.get(index)
        if held is None or held[1].shape != settings.shape:
            arrays["settings"] = settings
        else:
            fields["base"] = held[0]
            mask, values = pack_changes(held[1], settings)
            if values.size and mask.nbytes + values.nbytes < settings.nbytes:
                arrays.update(mask=mask, values=values)
            elif values.size:
                arrays["settings"] = settings
        step, ys, programmed = max(1, self.info().max_batch), [], False
        for start in range(0, max(len(x), 1), step):
            reply = self._request("POST", "/measure", fields, {**arrays, "x": x[start:start + step]}, meanwhile)
            version = reply[0].get("version")
            if not isinstance(version, str) or len(version) > 64:
                raise BackendError(f"chip server {self.address}: malformed /measure reply (no program version)")
            self._held[index] = (version, settings)
            programmed |= reply[0].get("programmed") is True
            ys.append(self._array(reply, "y", 2))
            fields, arrays = {"layer": index, "base": version}, {}
        y = np.concatenate(ys)
        if y.shape[0] != len(x):
            raise BackendError(f"chip server {self.address}: /measure returned {y.shape[0]} outputs for {len(x)} "
                               "inputs")
        return y, programmed

    def measure_transfer(self, rows: np.ndarray, cols: np.ndarray, controls: np.ndarray) -> np.ndarray:
        if "measure_transfer" not in self.info().supports:
            return super().measure_transfer(rows, cols, controls)
        reply = self._request("POST", "/measure_transfer", {"rows": [int(r) for r in rows],
                                                            "cols": [int(c) for c in cols]}, {"controls": controls})
        W = self._array(reply, "weights", 2)
        if W.shape != (len(rows), len(controls)):
            raise BackendError(f"chip server {self.address}: /measure_transfer returned shape {W.shape}, "
                               f"expected {(len(rows), len(controls))}")
        return W

    def _array(self, reply: tuple[dict, dict[str, np.ndarray]], name: str, ndim: int) -> np.ndarray:
        try:
            return field_array(reply[0], reply[1], name, ndim)
        except WireError as exc:
            raise BackendError(f"chip server {self.address}: malformed reply: {exc}") from None

    # ------------------------------------------------------------------------------------------ transport
    def _request(self, method: str, path: str, body: dict | None = None,
                 arrays: dict[str, np.ndarray] | None = None,
                 meanwhile: Callable[[], None] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
        """One request with bounded retries, each try within one ``timeout`` deadline: (the reply's fields, its
        arrays) - arrays come as JSON array objects among the fields unless the reply was a binary frame.

        A binary-wire request with arrays (a measurement) goes through the stream where it is used (a WebSocket:
        :mod:`pnndeploy.backends.stream`), else the lean exchange (h11 on one kept-alive socket:
        :mod:`pnndeploy.backends.exchange`), everything else through httpx; all under the same deadline, retries,
        reply checks and errors.  ``meanwhile``: run by the stream or lean exchange between request and reply."""
        import httpcore
        import httpx

        from pnndeploy.backends.deadline import TlsFailure

        if self._client is None:
            raise BackendError(f"chip server {self.address}: not open")
        where = f"chip server {self.address}{'/' + PROTOCOL + path}"
        last = ""
        content, headers = self._encode(body, arrays, where)
        lean = self.binary and arrays and content is not None
        streamed = self.streamed and f"/{PROTOCOL}{path}" in self.stream_paths
        exchange = partial(self._stream_exchange if streamed else self._lean_exchange,
                           meanwhile=meanwhile) if lean else self._httpx_exchange
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            self._deadline.at = time.monotonic() + self.timeout
            try:
                status, kind, raw = exchange(method, path, content, headers, where)
                if status in _TRANSIENT_STATUS:
                    last = f"HTTP {status}"
                    continue
            except (httpx.TimeoutException, httpcore.TimeoutException):
                last = f"no reply within --timeout {self.timeout:g} s"
                continue
            except TlsFailure as exc:
                raise BackendError(f"{where}: TLS handshake failed ({exc}); check that the station serves https "
                                   "(`chip serve --tls-cert`) and that the profile's backend ca_file names its CA "
                                   "certificate") from None
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError,
                    httpcore.ConnectError, httpcore.RemoteProtocolError, httpcore.ReadError,
                    httpcore.WriteError) as exc:
                last = _connection_problem(exc)
                continue
            except (httpx.HTTPError, httpx.InvalidURL, httpcore.ProtocolError, h11.ProtocolError) as exc:
                raise BackendError(f"{where}: {type(exc).__name__}: {exc}") from None
            finally:
                self._deadline.at = None
            return self._decode(status, raw, kind, where)
        hint = ("start it with `pnndeploy chip serve PROFILE` or check the profile's backend address"
                if "refused" in last else "check the server and the network, or raise --timeout")
        raise BackendError(f"{where}: {last} after {self.retries + 1} tries; {hint}")

    def _httpx_exchange(self, method: str, path: str, content: bytes | None, headers: dict[str, str],
                        where: str) -> tuple[int, str, bytes]:
        """One try through httpx: (status, content type, body; no body read for a transient status)."""
        with self._client.stream(method, path, content=content, headers=headers) as response:
            if response.status_code in _TRANSIENT_STATUS:
                return response.status_code, "", b""
            raw = self._read_limited(response.headers, response.iter_raw(), where)
            self._count(response.headers.get("server-timing", ""), content, raw)
            return response.status_code, response.headers.get("content-type", ""), raw

    def _lean_exchange(self, method: str, path: str, content: bytes | None, headers: dict[str, str],
                       where: str, meanwhile: Callable[[], None] | None = None) -> tuple[int, str, bytes]:
        """One try through the lean exchange, checked as :meth:`_httpx_exchange` checks httpx's replies."""
        status, reply = self._lean.start(method, path, content or b"", headers, meanwhile)
        try:
            if status in _TRANSIENT_STATUS:
                self._lean.close()
                return status, "", b""
            raw = self._read_limited(reply, self._lean.body(), where)
        except BaseException:
            self._lean.close()              # a reply refused half-read leaves the connection unusable
            raise
        self._count(reply.get("server-timing", ""), content, raw)
        return status, reply.get("content-type", ""), raw

    def _stream_exchange(self, method: str, path: str, content: bytes | None, headers: dict[str, str],
                         where: str, meanwhile: Callable[[], None] | None = None) -> tuple[int, str, bytes]:
        """One try on the stream (a POST's body as a message), checked as the other exchanges' replies are.

        A refused handshake is that HTTP reply (a wrong token: 401; a server's failure: 5xx), except that with
        ``wire=auto`` a refusal that says something on the way does not pass WebSockets on (:func:`_proxy_refusal`)
        sends this and every later exchange over HTTP (:meth:`_lean_exchange`), as to a station without the stream,
        and is kept in ``stream_refused``."""
        from pnndeploy.backends.stream import HandshakeRefused, Misbehaving

        if not self.streamed:                 # given up on a try before this one: the stream is not passed on
            return self._lean_exchange(method, path, content, headers, where, meanwhile)
        try:
            status, timing, raw = self._stream.exchange(f"/{PROTOCOL}{path}", content or b"", meanwhile)
        except Misbehaving as exc:
            raise BackendError(f"{where}: {exc}; the server is misbehaving") from None
        except HandshakeRefused as exc:
            if self.wire == "auto" and _proxy_refusal(exc.status):
                self.streamed, self.stream_refused = False, exc.status
                return self._lean_exchange(method, path, content, headers, where, meanwhile)
            return exc.status, "application/json", exc.body[:MAX_BODY_BYTES]
        if status in _TRANSIENT_STATUS:
            return status, "", b""
        if len(raw) > MAX_BODY_BYTES:
            raise BackendError(f"{where}: reply larger than the limit {MAX_BODY_BYTES} bytes; the server is "
                               "misbehaving")
        self._count(timing, content, raw)
        return status, BINARY_TYPE if status < 400 else "application/json", raw

    @staticmethod
    def _read_limited(headers: Mapping[str, str], chunks: Iterable[bytes], where: str) -> bytes:
        """The reply's body, refused (one line) when encoded (never inflated) or larger than the limit, declared
        or as it arrives."""
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise BackendError(f"{where}: the server sent a {encoding[:40]!r}-encoded reply though the client asked "
                               "for identity; a compressed reply is never inflated (it could expand without bound): "
                               "the server is misbehaving")
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise BackendError(f"{where}: reply of {int(declared)} bytes is larger than the limit "
                               f"{MAX_BODY_BYTES}; the server is misbehaving")
        received, size = [], 0
        for chunk in chunks:
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise BackendError(f"{where}: reply larger than the limit {MAX_BODY_BYTES} bytes; "
                                   "the server is misbehaving")
            received.append(chunk)
        return b"".join(received)

    def _encode(self, body: dict | None, arrays: dict[str, np.ndarray] | None,
                where: str) -> tuple[bytes | None, dict[str, str]]:
        """The request's body and headers: a binary frame on the binary wire, else JSON with base64 arrays."""
        accept = {"Accept": BINARY_TYPE if self.binary else "application/json"}
        if body is None and not arrays:
            return None, accept
        try:
            if self.binary and arrays:
                return encode_frame(body or {}, arrays), {**accept, "Content-Type": BINARY_TYPE}
            doc = json_message(body or {}, arrays or {})
            return json.dumps(doc, allow_nan=False).encode(), {**accept, "Content-Type": "application/json"}
        except (TypeError, ValueError) as exc:
            raise BackendError(f"{where}: cannot send the request ({exc}); a value is not finite") from None

    def _count(self, timing: str, content: bytes | None, raw: bytes) -> None:
        """Bytes both ways, and the station's own time from its Server-Timing header (``name;dur=MS, ...``;
        anything malformed there is ignored: it is a report, not a value the training uses)."""
        self.exchanges += 1
        self.bytes_sent += len(content or b"")
        self.bytes_received += len(raw)
        for entry in timing[:512].split(","):
            name, _, duration = entry.strip().partition(";dur=")
            try:
                ms = float(duration)
            except ValueError:
                continue
            if name in self.station_seconds and math.isfinite(ms) and 0 <= ms < 1e7:
                self.station_seconds[name] += ms / 1000

    def _decode(self, status: int, raw: bytes, kind: str, where: str) -> tuple[dict, dict[str, np.ndarray]]:
        if status < 400 and is_binary(kind):
            if not self.binary:
                raise BackendError(f"{where}: the server sent a binary reply though the client asked for JSON; "
                                   "the server is misbehaving")
            try:
                return decode_frame(raw, "the reply")
            except WireError as exc:
                raise BackendError(f"{where}: malformed reply ({exc}); is this a pnndeploy chip server?") from None
        try:
            doc: Any = loads_object(raw, "the reply")
            problem = ""
        except WireError as exc:
            doc, problem = None, str(exc)
        if status == 401:
            raise BackendError(f"{where}: the server refused the token (401); use the token the server was started "
                               f"with (the profile's backend token_file in its tokens/ folder, or ${TOKEN_ENV})")
        if status == 409 and isinstance(doc, dict) and doc.get("stale") is True:
            raise Stale(f"{where}: {str(doc.get('error'))[:300]}")
        if status >= 400:
            message = (doc.get("error") or doc.get("detail")) if isinstance(doc, dict) else None
            reason = str(message)[:300] if message else "the server gave no reason"
            raise BackendError(f"{where}: HTTP {status}: {reason}")
        if doc is None:
            raise BackendError(f"{where}: malformed reply ({problem}); is this a pnndeploy chip server?")
        return doc, {}


def _busy_poll_ms(value: Any) -> float:
    """The backend option ``busy_poll_ms`` as a number of milliseconds in 0..:data:`MAX_BUSY_POLL_MS`."""
    try:
        ms = float(value)
    except (TypeError, ValueError, OverflowError):
        ms = math.nan
    if isinstance(value, (bool, np.bool_)) or not 0.0 <= ms <= MAX_BUSY_POLL_MS:
        raise BackendError(f"backend option busy_poll_ms={str(value)[:40]!r}: use a number of milliseconds in "
                           f"0..{MAX_BUSY_POLL_MS:g} (0: never poll)")
    return ms


def _proxy_refusal(status: int) -> bool:
    """Whether a refused upgrade says the WebSocket did not get through (a proxy's 400, 404, 405, 426, 501...) rather
    than that the station refused us (401, 403) or failed (500, 502-504: an error, or retried)."""
    return (400 <= status < 500 and status not in (401, 403)) or status == 501


def _once(work: Callable[[], None] | None) -> Callable[[], None] | None:
    """``work`` run on the first call only (None stays None): a retried or re-sent exchange does not repeat it."""
    if work is None:
        return None
    pending = [work]

    def run() -> None:
        if pending:
            pending.pop()()

    return run


def check_url(address: str) -> None:
    """Refuse an address that is not an http(s) URL with a host and a valid port."""
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError as exc:
        raise BackendError(f"backend address {address!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BackendError(f"backend address {address!r} is not an http:// or https:// URL with a host, "
                           "e.g. http://127.0.0.1:8470")
    if port is not None and port < 1:
        raise BackendError(f"backend address {address!r}: port {port} is not a TCP port")


def _connection_problem(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "refused" in text.lower() or "errno 111" in text.lower():
        return "connection refused (is the server running?)"
    return f"connection failed ({text[:120]})"

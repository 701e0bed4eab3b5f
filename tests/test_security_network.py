"""The network half of issue 25, tried as an attacker would: the chip server, its client, tokens and TLS.

Every server here binds 127.0.0.1, stops by itself (--idle-timeout / --max-requests) and is killed when its test
ends; the evil stations are threads of this process on loopback.  Each case is bounded (under ATTACK_S seconds)
and ends in the documented status, or one line `pnndeploy: error: ...` and exit 2, never a traceback.
"""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import json
import shutil
import socket
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Callable

import h5py
import httpx
import pytest

from chip_server import ChipServer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: Every attack must be over within this many seconds.
ATTACK_S = 10.0


def _token(server: ChipServer) -> str:
    return server.token_file.read_text().strip()


def _auth(server: ChipServer) -> dict:
    return {"Authorization": f"Bearer {_token(server)}"}


def _no_traceback(server: ChipServer, expect: str = "") -> str:
    """The server's log once it holds ``expect`` (a line is written just after its reply), checked to hold no
    traceback."""
    deadline = time.monotonic() + 3
    text = server.log.read_text(errors="replace")
    while expect not in text and time.monotonic() < deadline:
        time.sleep(0.05)
        text = server.log.read_text(errors="replace")
    assert "Traceback" not in text and "Exception in ASGI" not in text, text[-3000:]
    assert expect in text, text[-3000:]
    return text


def _closed(sock: socket.socket) -> bool:
    """True when the server has closed ``sock`` (a read returns end of file at once)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _closed_by_server(sock: socket.socket, trickle: bytes, every: float, limit: float) -> tuple[float, bytes]:
    """Send ``trickle`` every ``every`` s until the server closes the connection; (seconds it took, bytes read)."""
    start, got = time.monotonic(), b""
    sock.settimeout(every)
    while time.monotonic() - start < limit:
        try:
            sock.sendall(trickle)
            data = sock.recv(65536)
            if not data:
                break
            got += data
        except socket.timeout:
            continue
        except OSError:
            break
    return time.monotonic() - start, got


@pytest.fixture(scope="module")
def station(tmp_path_factory, tiny_fleet_dir):
    """One chip server for the server-side attacks: 2 s for headers, 1 s for a body, 24 connections (12 a client)."""
    folder = tmp_path_factory.mktemp("station")
    with ChipServer(tiny_fleet_dir / "chipB.h5", folder, "--header-timeout", "2", "--body-timeout", "1",
                    "--max-connections", "24", "--max-client-connections", "12", idle=60) as server:
        yield server


# ------------------------------------------------------------------------------ server, unauthenticated

def test_half_requests_cannot_lock_out_the_token_holder(station):
    socks = []
    try:
        for _ in range(40):                               # a few dozen connections sending half a request
            sock = socket.create_connection(("127.0.0.1", station.port), timeout=2)
            sock.sendall(b"GET /v1/info HTTP/1.1\r\nHost: x\r\n")
            socks.append(sock)
        start = time.monotonic()
        reply = httpx.get(f"{station.url}/v1/info", headers=_auth(station), timeout=3)
        assert reply.status_code == 200 and reply.json()["device_id"] == "chipB"
        assert time.monotonic() - start < 1.0
        assert 40 - 12 <= sum(map(_closed, socks)) <= 40 - 12 + 1       # 12 a client (+ the holder's own)
    finally:
        for sock in socks:
            sock.close()
    _no_traceback(station, "waited longest")


def test_a_request_header_trickled_in_is_dropped_at_the_header_timeout(station):
    with socket.create_connection(("127.0.0.1", station.port), timeout=2) as sock:
        sock.sendall(b"GET /v1/info HTTP/1.1\r\n")
        took, got = _closed_by_server(sock, b"X-Slow: 1\r\n", 0.25, ATTACK_S)
    assert 1.5 < took < 4.0 and got == b""                # --header-timeout 2, not a byte of reply
    _no_traceback(station, "(--header-timeout)")


def test_oversized_request_headers_are_a_400(station):
    with socket.create_connection(("127.0.0.1", station.port), timeout=2) as sock:
        sock.sendall(b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)     # and more to come
        took, got = _closed_by_server(sock, b"a", 0.1, ATTACK_S)
    assert took < 2.0 and got.startswith(b"HTTP/1.1 400 ")
    _no_traceback(station, "malformed request: 400")


def test_control_characters_in_a_request_are_escaped_in_the_log(station):
    path = "/v1/%1b]0;owned%07%1b[2J%e2%80%aeevil%0a%0dchip%20chipB:%20fake"
    reply = httpx.get(f"{station.url}{path}", headers=_auth(station), timeout=3)
    assert reply.status_code == 404
    _no_traceback(station, "fake 404")
    text = station.log.read_bytes()
    assert b"\x1b" not in text and b"\x07" not in text and "\u202e".encode() not in text
    assert rb"/v1/\x1b]0;owned\x07\x1b[2J\u202eevil\n\rchip chipB: fake 404" in text


# -------------------------------------------------------------------------------- server, authenticated

def test_a_trickled_body_is_cut_at_the_body_deadline(station):
    with socket.create_connection(("127.0.0.1", station.port), timeout=2) as sock:
        sock.sendall(f"POST /v1/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {_token(station)}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{".encode())
        took, got = _closed_by_server(sock, b" ", 0.1, ATTACK_S)
    assert took < 3.0 and got.startswith(b"HTTP/1.1 408 ") and b"--body-timeout" in got
    assert b"connection: close" in got.lower()
    _no_traceback(station, " POST /v1/infer 408 100000 B")


def test_a_client_that_does_not_read_its_reply_is_dropped_at_the_body_deadline(tmp_path, tiny_fleet_dir):
    """Requests for large replies, never read: the server's writes back up (past what the kernel's buffers hold),
    and the connection is aborted once writing has been paused for --body-timeout (+1 s), not held for ever: the
    server then stops at once (a connection only closed would hold its task until the shutdown's timeout)."""
    import base64

    import numpy as np

    controls = np.linspace(-1.0, 1.0, 1024)
    body = json.dumps({"rows": [0] * 64, "cols": [0] * 64, "controls": {
        "dtype": "<f8", "shape": [1024], "data": base64.b64encode(controls.tobytes()).decode()}}).encode()
    with ChipServer(tiny_fleet_dir / "chipB.h5", tmp_path, "--body-timeout", "1", idle=30) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(2)
        sock.connect(("127.0.0.1", server.port))
        try:
            request = (f"POST /v1/measure_transfer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {_token(server)}"
                       f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
            sock.sendall(request * 8)                                    # pipelined: 8 replies of 0.7 MB
            start = time.monotonic()
            log = ""
            while "reply not read within 1 s" not in log and time.monotonic() - start < ATTACK_S:
                time.sleep(0.1)
                log = server.log.read_text(errors="replace")
            assert 1.5 < time.monotonic() - start < 4.0                  # --body-timeout 1 (+ a grace second)
            stopping = time.monotonic()
            server.stop()
            assert time.monotonic() - stopping < 1.5
        finally:
            sock.close()
    assert "Cancel" not in _no_traceback(server, "reply not read within 1 s (--body-timeout)")


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"layer": 0, "x": ' + b"[" * 40 + b"]" * 40 + b"}",
                                  b'{"a": ' * 50_000])
def test_deeply_nested_json_is_a_400_of_one_line(station, body):
    start = time.monotonic()
    reply = httpx.post(f"{station.url}/v1/infer", headers={**_auth(station), "Content-Type": "application/json"},
                       content=body, timeout=5)
    assert reply.status_code == 400 and "nests lists or objects deeper than 32" in reply.json()["error"]
    assert time.monotonic() - start < 2.0
    assert " 500 " not in _no_traceback(station, " POST /v1/infer 400 ")


def test_refused_requests_count_toward_max_requests(tmp_path, tiny_fleet_dir):
    with ChipServer(tiny_fleet_dir / "chipB.h5", tmp_path, "--body-timeout", "0.5", max_requests=4) as server:
        url, auth = server.url, _auth(server)
        assert httpx.get(f"{url}/v1/info", timeout=3).status_code == 401                         # no token
        assert httpx.post(f"{url}/v1/infer", headers=auth, content=b"[" * 50_000, timeout=3).status_code == 400
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:            # 413
            sock.sendall(f"POST /v1/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {_token(server)}\r\n"
                         "Content-Length: 99999999999\r\n\r\n".encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 413 ")
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:            # 408
            sock.sendall(f"POST /v1/program HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {_token(server)}\r\n"
                         "Content-Length: 10\r\n\r\n{".encode())
            assert _closed_by_server(sock, b" ", 0.1, ATTACK_S)[1].startswith(b"HTTP/1.1 408 ")
        assert server.process.wait(ATTACK_S) == 0                  # four refusals: the budget is spent
    _no_traceback(server, "served 4 requests (--max-requests)")


def test_a_trickled_body_does_not_hold_the_server_past_its_idle_timeout(tmp_path, tiny_fleet_dir):
    with ChipServer(tiny_fleet_dir / "chipB.h5", tmp_path, "--body-timeout", "60", idle=1.5) as server:
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
            sock.sendall(f"POST /v1/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {_token(server)}\r\n"
                         "Content-Length: 1000000\r\n\r\n".encode())
            _closed_by_server(sock, b" ", 0.1, ATTACK_S)
        assert server.process.wait(ATTACK_S) == 0
        assert time.monotonic() - start < 1.5 + 3.0
    _no_traceback(server, "(--idle-timeout); stopping")


# ----------------------------------------------------------------------------------------- the client

class EvilStation:
    """A station that misbehaves on purpose: reads each request's headers, then lets ``behave`` answer."""

    def __init__(self, behave: Callable[[socket.socket], None]) -> None:
        self.behave = behave
        self.requests: list[bytes] = []                       # the head of every request received
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                self.requests.append(data)
                self.behave(conn)
            except OSError:
                pass

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()


def _reply(body: bytes, *headers: str) -> Callable[[socket.socket], None]:
    head = "".join(f"{h}\r\n" for h in ("HTTP/1.1 200 OK", "Content-Type: application/json", *headers))
    return lambda conn: conn.sendall(head.encode() + b"\r\n" + body)


def _slow_headers(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for _ in range(200):                                      # a header line every 0.2 s, never the end
        conn.sendall(b"X-Slow: 1\r\n")
        time.sleep(0.2)


def _endless_body(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
    block = b" " * 65536
    for _ in range(400):                                      # 26 MB, no length declared
        conn.sendall(block)


def _bomb() -> bytes:
    """64 MiB of zeros gzipped twice: under 2 KB on the wire."""
    zeros, packer = bytes(1 << 20), __import__("zlib").compressobj(9, wbits=31)
    inner = b"".join(packer.compress(zeros) for _ in range(64)) + packer.flush()
    return gzip.compress(inner, 9)


@pytest.fixture
def evil(cli, tiny_fleet_dir, tmp_path):
    """``connect(behave)``: an evil station and a profile chipB-remote pointing at it; the folder of profiles."""
    folder = tmp_path / "profiles"
    shutil.copytree(tiny_fleet_dir, folder)
    token = tmp_path / "station.token"
    token.write_text("a-token-of-sixteen-characters-or-more\n")
    token.chmod(0o600)
    stations = []

    def connect(behave: Callable[[socket.socket], None]) -> Path:
        stations.append(EvilStation(behave))
        result = cli("chip", "connect", "chipB", "--profiles", folder, "--address", stations[-1].url,
                     "--token-file", token)
        assert result.exit_code == 0, result.output
        return folder

    connect.stations = stations
    yield connect
    for station in stations:
        station.close()


def _timed(run: Callable[[], object]) -> tuple[object, float]:
    start = time.monotonic()
    result = run()
    return result, time.monotonic() - start


def test_slow_reply_headers_cannot_outlast_the_timeout(evil, cli, one_line_error):
    folder = evil(_slow_headers)
    result, took = _timed(lambda: cli("chip", "info", "chipB-remote", "--profiles", folder, "--timeout", "1"))
    one_line_error(result, "no reply within --timeout 1 s after 4 tries")
    assert 4.0 < took < 4 * 1.0 + 1.4 + 2.0                  # each try one deadline, then the 0.2/0.4/0.8 backoff


@pytest.mark.parametrize("behave, fragment", [
    (_reply(b"[" * 100_000), "nests lists or objects deeper than 32"),
    (_reply(b'{"device_id": ' + b'{"a": ' * 20_000), "nests lists or objects deeper than 32"),
    (_reply(b"{}", "Content-Length: 99999999999"), "larger than the limit"),
    (_endless_body, "larger than the limit"),
], ids=["nested-list", "nested-object", "declared-huge", "endless"])
def test_a_hostile_reply_is_one_line(evil, cli, one_line_error, behave, fragment):
    folder = evil(behave)
    result, took = _timed(lambda: cli("chip", "info", "chipB-remote", "--profiles", folder, "--timeout", "2"))
    one_line_error(result, fragment)
    assert took < ATTACK_S


def test_a_compressed_reply_is_refused_without_inflating_it(evil, cli, one_line_error):
    bomb = _bomb()
    assert len(bomb) < 2048
    folder = evil(_reply(bomb, "Content-Encoding: gzip, gzip", f"Content-Length: {len(bomb)}"))
    tracemalloc.start()
    try:
        result, took = _timed(lambda: cli("chip", "info", "chipB-remote", "--profiles", folder, "--timeout", "2"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_line_error(result, "'gzip, gzip'-encoded reply", "never inflated")
    assert took < 2.0 and peak < 32 * 1024 * 1024                    # 64 MiB inflated would show here
    head = evil.stations[-1].requests[0].lower()
    assert b"\r\naccept-encoding: identity\r\n" in head and b"authorization: bearer " in head


# ------------------------------------------------------------------------------------------- tokens

def _hostile(folder: Path, name: str, **attrs: str) -> Path:
    """The profile ``name`` with its backend attributes overwritten, as someone else could send it."""
    path = folder / f"{name}.h5"
    with h5py.File(path, "r+") as f:
        for key, value in attrs.items():
            f["backend"].attrs[key] = value
    return path


@pytest.fixture
def connected(cli, tiny_fleet_dir, station, tmp_path):
    """A profiles folder with chipB-remote pointing at the station, its token copied into tokens/."""
    folder = tmp_path / "profiles"
    shutil.copytree(tiny_fleet_dir, folder)
    result = cli("chip", "connect", "chipB", "--profiles", folder, "--address", station.url, "--token-file",
                 station.token_file)
    assert result.exit_code == 0, result.output
    assert (folder / "tokens" / "chipB-remote.token").stat().st_mode & 0o777 == 0o600
    assert (folder / "tokens").stat().st_mode & 0o777 == 0o700
    return folder


def test_the_station_is_reached_with_the_copied_token_or_the_environment(cli, connected, station, tmp_path):
    assert json.loads(cli("chip", "info", "chipB-remote", "--profiles", connected, "--json").stdout)[
        "device_id"] == "chipB"
    shared = connected / "tokens" / "chipB-remote.token"       # a token already in the folder is named, not copied
    again = cli("chip", "connect", "chipB", "--profiles", connected, "--address", station.url, "--token-file",
                shared, "--name", "again")
    assert again.exit_code == 0, again.output
    assert not (connected / "tokens" / "again.token").exists()
    assert cli("chip", "info", "again", "--profiles", connected).exit_code == 0
    plain = tmp_path / "plain"
    shutil.copytree(connected, plain)
    made = cli("chip", "connect", "chipB", "--profiles", plain, "--address", station.url, "--name", "envchip")
    assert made.exit_code == 0, made.output
    result = cli("chip", "info", "envchip", "--profiles", plain, "--json",
                 env={"PNNDEPLOY_CHIP_TOKEN": _token(station)})
    assert result.exit_code == 0, result.output


def test_token_files_readable_by_others_are_refused(cli, connected, tiny_fleet_dir, tmp_path, one_line_error):
    token = connected / "tokens" / "chipB-remote.token"
    token.chmod(0o640)
    one_line_error(cli("chip", "info", "chipB-remote", "--profiles", connected), f"chmod 600 {token}")
    loose = tmp_path / "loose.token"
    loose.write_text("a-token-of-sixteen-characters-or-more\n")
    loose.chmod(0o644)
    one_line_error(cli("chip", "serve", tiny_fleet_dir / "chipB.h5", "--port", "0", "--token-file", loose),
                   f"chmod 600 {loose}")
    one_line_error(cli("chip", "connect", "chipB", "--profiles", connected, "--address", "http://127.0.0.1:9",
                       "--token-file", loose, "--name", "other"), "chmod 600")


@pytest.mark.parametrize("value", ["/etc/passwd", "../../secret.token", "sub/x.token", "..", ".hidden"])
def test_a_profile_cannot_point_its_token_at_any_local_file(cli, connected, value, one_line_error):
    _hostile(connected, "chipB-remote", token_file=value)
    one_line_error(cli("chip", "info", "chipB-remote", "--profiles", connected), "token_file", "not a plain file name",
                   "tokens/")
    result = cli("profile", "validate", connected / "chipB-remote.h5")
    assert result.exit_code == 2 and "not a plain file name" in result.stderr


def test_a_token_link_out_of_the_tokens_folder_is_refused(cli, connected, tmp_path, one_line_error):
    outside = tmp_path / "elsewhere.token"
    outside.write_text("a-token-of-sixteen-characters-or-more\n")
    outside.chmod(0o600)
    (connected / "tokens" / "link.token").symlink_to(outside)
    _hostile(connected, "chipB-remote", token_file="link.token")
    one_line_error(cli("chip", "info", "chipB-remote", "--profiles", connected), "is a link to", "outside")


def test_plain_http_off_loopback_needs_insecure(cli, connected, one_line_error):
    far = "http://192.0.2.7:8470"                         # TEST-NET-1: never contacted, every check is local
    one_line_error(cli("chip", "connect", "chipB", "--profiles", connected, "--address", far, "--name", "far"),
                   "plain HTTP", "--insecure")
    made = cli("chip", "connect", "chipB", "--profiles", connected, "--address", far, "--name", "far", "--insecure")
    assert made.exit_code == 0, made.output
    validated = cli("profile", "validate", connected / "far.h5")
    assert validated.exit_code == 2 and "plain HTTP to a non-loopback host" in validated.stderr
    result, took = _timed(lambda: cli("chip", "info", "far", "--profiles", connected))
    one_line_error(result, "plain HTTP", "--insecure", "https://")
    assert took < 2.0
    assert cli("profile", "validate", connected / "chipB-remote.h5").exit_code == 0       # loopback: fine
    _hostile(connected, "far", address="https://192.0.2.7:8470")
    assert cli("profile", "validate", connected / "far.h5").exit_code == 0                # TLS: fine


def test_serving_off_loopback_needs_tls_or_insecure(cli, tiny_fleet_dir, tmp_path, monkeypatch, one_line_error):
    one_line_error(cli("chip", "serve", tiny_fleet_dir / "chipB.h5", "--host", "0.0.0.0", "--token-file",
                       tmp_path / "t.token"), "not loopback", "--tls-cert", "--insecure")
    assert not (tmp_path / "t.token").exists()                 # refused before anything was made or bound
    from pnndeploy.backends import BackendError, server

    def no_bind(host: str, port: int) -> None:                 # never listen off loopback in a test
        raise BackendError(f"not binding {host} in a test")

    monkeypatch.setattr(server, "bind", no_bind)
    result = cli("chip", "serve", tiny_fleet_dir / "chipB.h5", "--host", "0.0.0.0", "--insecure", "--token-file",
                 tmp_path / "t.token")
    lines = result.stderr.splitlines()
    assert result.exit_code == 2 and len(lines) == 2 and "Traceback" not in result.output
    assert lines[0].startswith("pnndeploy: warning: --insecure: serving plain HTTP on 0.0.0.0")
    assert "not binding 0.0.0.0" in lines[1]


# ----------------------------------------------------------------------------------------------- TLS

def _pki(folder: Path, name: str) -> dict[str, Path]:
    """A CA and a certificate for 127.0.0.1 signed by it (PEM files in ``folder``, the key mode 600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject: str, key, issuer: str, signer, ca: bool):
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    files = {"ca": folder / f"{name}-ca.pem", "cert": folder / f"{name}.pem", "key": folder / f"{name}.key"}
    files["ca"].write_bytes(cert(f"{name} CA", ca_key, f"{name} CA", ca_key, True).public_bytes(
        serialization.Encoding.PEM))
    files["cert"].write_bytes(cert("127.0.0.1", key, f"{name} CA", ca_key, False).public_bytes(
        serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    files["key"].chmod(0o600)
    return files


@pytest.fixture(scope="module")
def tls_station(tmp_path_factory, tiny_fleet_dir):
    folder = tmp_path_factory.mktemp("tls")
    pki, other = _pki(folder, "lab"), _pki(folder, "other")
    with ChipServer(tiny_fleet_dir / "chipB.h5", folder / "server", "--tls-cert", pki["cert"], "--tls-key",
                    pki["key"], idle=60) as server:
        yield server, pki, other


def test_a_tls_station_is_reached_and_verified(cli, tls_station, tiny_fleet_dir, tmp_path):
    server, pki, _ = tls_station
    assert server.url.startswith("https://")
    folder = tmp_path / "profiles"
    shutil.copytree(tiny_fleet_dir, folder)
    made = cli("chip", "connect", "chipB", "--profiles", folder, "--address", server.url, "--token-file",
               server.token_file, "--ca-file", pki["ca"])
    assert made.exit_code == 0, made.output
    result, took = _timed(lambda: cli("chip", "info", "chipB-remote", "--profiles", folder, "--json"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["device_id"] == "chipB" and took < ATTACK_S
    assert (folder / "tokens" / "chipB-remote.ca.pem").read_bytes() == pki["ca"].read_bytes()


@pytest.mark.parametrize("ca", ["other", None], ids=["wrong-ca", "system-store"])
def test_a_tls_station_that_fails_verification_is_one_line(cli, tls_station, tiny_fleet_dir, tmp_path, ca,
                                                          one_line_error):
    server, _, other = tls_station
    folder = tmp_path / "profiles"
    shutil.copytree(tiny_fleet_dir, folder)
    extra = ["--ca-file", other["ca"]] if ca else []
    made = cli("chip", "connect", "chipB", "--profiles", folder, "--address", server.url, "--token-file",
               server.token_file, *extra)
    assert made.exit_code == 0, made.output
    result, took = _timed(lambda: cli("chip", "info", "chipB-remote", "--profiles", folder))
    one_line_error(result, "TLS handshake failed", "certificate verify failed", "ca_file")
    assert took < 2.0                                          # not retried: a wrong certificate stays wrong


def test_tls_files_are_checked_before_serving(cli, tiny_fleet_dir, tls_station, tmp_path, one_line_error):
    _, pki, other = tls_station
    one_line_error(cli("chip", "serve", tiny_fleet_dir / "chipB.h5", "--tls-cert", pki["cert"]), "go together")
    one_line_error(cli("chip", "serve", tiny_fleet_dir / "chipB.h5", "--tls-cert", pki["cert"], "--tls-key",
                       other["key"], "--token-file", tmp_path / "t.token"), "cannot be used")
    loose = tmp_path / "loose.key"
    shutil.copyfile(pki["key"], loose)
    loose.chmod(0o644)
    one_line_error(cli("chip", "serve", tiny_fleet_dir / "chipB.h5", "--tls-cert", pki["cert"], "--tls-key",
                       loose), f"chmod 600 {loose}")

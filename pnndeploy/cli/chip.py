"""`pnndeploy chip serve|connect|info` and `pnndeploy calibrate`: chips on stations, reached through a backend."""

from __future__ import annotations

from typing import Any

import click

from pnndeploy.cli.common import (FloatRange, check_output_file, compute_options, max_faulty_option, print_json,
                                  profiles_option, progress_bar, resolve_compute_options)
from pnndeploy.cli.group import main
from pnndeploy.errors import PnnError

timeout_option = click.option(
    "--timeout", type=FloatRange(0.1, 3600), default=10.0, show_default=True, metavar="S",
    help="Seconds one exchange with a chip's station may take, connect to last byte, before it is retried "
         "(3 retries with backoff).")
insecure_option = click.option(
    "--insecure", is_flag=True,
    help="Allow plain http:// to a station off this machine: the token and the data cross the network "
         "unencrypted (a trusted lab network only; README, Security).")


@main.group()
def chip() -> None:
    """Chips on test stations: serve a simulated chip on the network, connect a profile to a station.

    \b
    Examples:
      pnndeploy chip serve chipB --port 8470 --token-file chipB.token &
      pnndeploy chip connect chipB --address http://127.0.0.1:8470 --token-file chipB.token
      pnndeploy transfer --device chipB-remote
    """


def _profile_path(device: str, profiles: str | None) -> Any:
    from pathlib import Path

    from pnndeploy.formats.profile_folder import profiles_dir, resolve_device

    if device.endswith(".h5") or "/" in device:
        return Path(device)
    return resolve_device(device, profiles_dir(profiles))


def recalibration_source(device: str, profiles: str | None, out: str | None, temperature: float | None) -> Any:
    """(path, profile) of the DEVICE a new calibration replaces (`calibrate`, `profile import`), after the checks
    both share: ``--out`` writable, ``--temperature`` finite."""
    import math

    from pnndeploy.formats.profiles import read_profile

    path = _profile_path(device, profiles)
    if out:
        check_output_file(out, "--out", "chipB.h5")
    if temperature is not None and not math.isfinite(temperature):
        raise PnnError(f"--temperature {temperature} is not a finite number of degrees Celsius")
    return path, read_profile(path)


def _read_or_make_token(path: str) -> str:
    """The token in ``path`` (an owner-only file), or a new one written there with mode 600."""
    import secrets
    from pathlib import Path

    from pnndeploy.atomic import write_new_private
    from pnndeploy.backends.credentials import read_secret

    target = Path(path)
    if target.is_file():
        token = read_secret(target.resolve(), "--token-file").strip()
        if len(token) < 16:
            raise PnnError(f"--token-file {path} holds a token of {len(token)} characters; use at least 16 "
                           "(or delete the file and a new one is made)")
        return token
    if target.exists():
        raise PnnError(f"--token-file {path} is not a file")
    if not target.parent.is_dir():
        raise PnnError(f"--token-file {path}: folder {target.parent} does not exist; create it or choose another path")
    token = secrets.token_urlsafe(32)
    try:        # whole or not at all (an interrupt leaves no empty token file), mode 600 from the start
        write_new_private(target, (token + "\n").encode())
    except FileExistsError:
        raise PnnError(f"--token-file {path} was created meanwhile by another process; run again to use it") from None
    return token


def _server_token(token_file: str | None, device_id: str) -> tuple[str, str]:
    """The token `chip serve` demands and where it is: --token-file, else $PNNDEPLOY_CHIP_TOKEN, else
    PROFILE_ID.token in the current folder (made when absent)."""
    import os

    from pnndeploy.backends.credentials import TOKEN_ENV

    env = os.environ.get(TOKEN_ENV, "").strip()
    if token_file is None and env:
        if len(env) < 16 or any(not 0x21 <= ord(c) <= 0x7E for c in env):
            raise PnnError(f"${TOKEN_ENV} must be at least 16 printable characters without spaces; set a longer "
                           "one, or unset it and a token file is made")
        return env, f"${TOKEN_ENV}"
    path = token_file or f"{device_id}.token"
    return _read_or_make_token(path), path


def _tls_files(cert: str | None, key: str | None) -> tuple[str, str] | None:
    """--tls-cert and --tls-key checked: both or neither, the key owner-only, the pair loadable."""
    import ssl
    from pathlib import Path

    from pnndeploy.backends.credentials import read_secret

    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise PnnError("--tls-cert and --tls-key go together: give the PEM certificate and its private key")
    read_secret(Path(key).resolve(), "--tls-key")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise PnnError(f"--tls-cert {cert} / --tls-key {key} cannot be used ({' '.join(str(exc).split())}); give a "
                       "PEM certificate and the private key that belongs to it") from None
    return cert, key


def _check_exposure(host: str, tls: tuple[str, str] | None, insecure: bool) -> None:
    """Off loopback: TLS, or the user's --insecure with one line saying what it costs."""
    from pnndeploy.backends.credentials import is_loopback

    if is_loopback(host):
        return
    if tls is None and not insecure:
        raise PnnError(f"--host {host} is not loopback, and plain HTTP would send the token and every measurement "
                       "unencrypted over the network; serve https with --tls-cert F --tls-key F, or pass --insecure "
                       "on a trusted lab network")
    if tls is None:
        click.echo(f"pnndeploy: warning: --insecure: serving plain HTTP on {host}: anyone on the network path can "
                   "read the token and drive the chip", err=True)
    else:
        click.echo(f"pnndeploy: warning: listening on {host}, not loopback: anyone with the token who can reach "
                   "this machine can drive the chip", err=True)


@chip.command()
@click.argument("profile")
@profiles_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs --tls-cert/--tls-key (or --insecure).")
@click.option("--port", type=click.IntRange(0, 65535), default=8470, show_default=True,
              help="TCP port (0: any free port, logged and written to --port-file).")
@click.option("--token-file", default=None, metavar="F",
              help="File holding the bearer token every request must carry (mode 600; made if absent). "
                   "Default: $PNNDEPLOY_CHIP_TOKEN when set, else PROFILE_ID.token in the current folder.")
@click.option("--tls-cert", default=None, metavar="F", help="Serve https with this PEM certificate (chain).")
@click.option("--tls-key", default=None, metavar="F", help="The certificate's PEM private key (mode 600).")
@click.option("--insecure", is_flag=True,
              help="Serve plain HTTP on a --host that is not loopback (a trusted lab network only; README, Security).")
@click.option("--port-file", default=None, metavar="F", help="Write the port listened on to this file.")
@click.option("--latency-ms", type=FloatRange(0, 10000), default=2.0, show_default=True,
              help="Added to every measurement, as a station's readout takes.")
@click.option("--measurement-noise", type=FloatRange(0, 1), default=0.002, show_default=True,
              help="Std of the noise on every measured output (weight units), on top of the profile's "
                   "detector noise on the weights.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the chip's noise.")
@click.option("--max-requests", type=click.IntRange(1, None), default=None,
              help="Stop after answering this many requests (refused ones included).")
@click.option("--idle-timeout", type=FloatRange(0.1, None), default=None, metavar="S",
              help="Stop after S seconds without a request.")
@click.option("--header-timeout", type=FloatRange(0.1, 3600), default=10.0, show_default=True, metavar="S",
              help="Drop a connection whose request (line and headers; on the stream, its next message) has not "
                   "come S seconds after it opened or after its previous reply.")
@click.option("--body-timeout", type=FloatRange(0.1, 3600), default=30.0, show_default=True, metavar="S",
              help="Answer 408 (and close) when a request's body is not complete S seconds after its headers; drop "
                   "a stream whose begun message, or a connection whose unread reply, is still pending S (+1) "
                   "seconds on.")
@click.option("--max-connections", type=click.IntRange(1, 10000), default=64, show_default=True,
              help="Open connections at most; a new one beyond drops one whose peer does not read its reply, else "
                   "the one that has waited longest without a request.")
@click.option("--max-client-connections", type=click.IntRange(1, 10000), default=16, show_default=True,
              help="The same limit per client address.")
@click.option("--fault", type=click.Choice(["malformed", "oversized", "stall", "nan"]), default=None, hidden=True,
              help="Misbehave on /infer (tests of clients' fault handling).")
def serve(profile: str, profiles: str | None, host: str, port: int, token_file: str | None, tls_cert: str | None,
          tls_key: str | None, insecure: bool, port_file: str | None, latency_ms: float, measurement_noise: float,
          seed: int, max_requests: int | None, idle_timeout: float | None, header_timeout: float,
          body_timeout: float, max_connections: int, max_client_connections: int, fault: str | None) -> None:
    """Play one chip from a simulated PROFILE (a device name or .h5 path) behind an HTTP server.

    Only this process knows the chip's fabrication truth; clients see what a station
    measures (protocol v1: README, "Connecting a lab's station"; the running server
    lists it at /docs; measurements also travel as messages on one WebSocket,
    /v1/stream).  Every request and every message needs the token; each is logged to
    stderr.
    """
    from pnndeploy.atomic import atomic_path
    from pnndeploy.backends.server import ServerSettings, bind, serve as run_server
    from pnndeploy.backends.simulated import SimulatedChip
    from pnndeploy.formats.profiles import read_profile

    record = read_profile(_profile_path(profile, profiles))
    if record.backend is not None:
        raise PnnError(f"profile {profile} points at a station itself ({record.backend.kind} "
                       f"{record.backend.address}); serve the simulated profile it was made from")
    tls = _tls_files(tls_cert, tls_key)
    _check_exposure(host, tls, insecure)
    board = SimulatedChip(profile=record, measurement_noise=measurement_noise, seed=seed)
    token, token_source = _server_token(token_file, record.device_id)
    sock = bind(host, port)
    actual = sock.getsockname()[1]
    if port_file:
        with atomic_path(port_file) as tmp:
            tmp.write_text(f"{actual}\n")
    click.echo(f"chip {record.device_id} ({record.platform} {record.shape[0]}x{record.shape[1]}): listening on "
               f"{'https' if tls else 'http'}://{host}:{actual} (token in {token_source})", err=True)
    run_server(board, ServerSettings(host=host, port=actual, token=token, latency_s=latency_ms / 1000.0,
                                     max_requests=max_requests, idle_timeout=idle_timeout, fault=fault,
                                     header_timeout=header_timeout, body_timeout=body_timeout,
                                     max_connections=max_connections, max_client_connections=max_client_connections,
                                     tls_cert=tls[0] if tls else None, tls_key=tls[1] if tls else None), sock)


def _install_credential(source: str, folder: Any, name: str, flag: str, secret: bool) -> str:
    """Copy the token or CA file the user gave into the profiles' tokens folder (mode 600); its name there."""
    import os
    import ssl
    from pathlib import Path

    from pnndeploy.atomic import atomic_path
    from pnndeploy.backends.credentials import read_secret

    given = Path(source)
    if not given.is_file():
        raise PnnError(f"{flag} {source}: file not found")
    text = read_secret(given.resolve(), flag, secret)
    if secret and not text.strip():
        raise PnnError(f"{flag} {source} is empty")
    if not secret:
        try:
            ssl.create_default_context(cadata=text)
        except (ssl.SSLError, ValueError) as exc:
            raise PnnError(f"{flag} {source} holds no usable PEM certificate ({exc}); give the station's CA "
                           "certificate") from None
    if folder.is_dir() and given.resolve().parent == folder.resolve():
        return given.resolve().name               # already in the tokens folder: named as it is, not copied
    folder.mkdir(mode=0o700, exist_ok=True)
    with atomic_path(folder / name) as tmp:
        os.chmod(tmp, 0o600)
        tmp.write_text(text)
    return name


@chip.command()
@click.argument("device")
@profiles_option
@click.option("--address", required=True, metavar="URL",
              help="Where the station answers, e.g. http://127.0.0.1:8470 or https://station7.lab:8470.")
@click.option("--kind", default="http", show_default=True,
              help="Backend kind (http, or one a lab's package registers under the pnndeploy.backends entry point).")
@click.option("--token-file", default=None, metavar="F",
              help="The station's token file (mode 600): copied to PROFILES/tokens/NAME.token and named in the "
                   "profile. Without it the token is read from $PNNDEPLOY_CHIP_TOKEN at run time.")
@click.option("--ca-file", default=None, metavar="F",
              help="https: the station's CA certificate (PEM), copied to PROFILES/tokens/NAME.ca.pem and named in "
                   "the profile. Without it the system's certificate store verifies the station.")
@insecure_option
@click.option("--name", default=None, help="Device name of the new profile (default: DEVICE-remote).")
@click.option("--wire", type=click.Choice(["auto", "stream", "binary", "json"]), default="auto", show_default=True,
              help="http: how arrays travel: as the station offers (auto: binary frames on its WebSocket stream, else "
                   "one binary frame per HTTP request, else JSON), on the stream only, as a binary frame per request "
                   "only, or JSON with base64 arrays (a station that speaks only JSON).")
@click.option("--busy-poll-ms", type=FloatRange(0.0, 50.0), default=None, metavar="MS",
              help="http: how long a wait for the station's reply polls before it sleeps, on the stream and the "
                   "binary wire (default 2 ms; 0: never; the JSON wire never polls). Polling keeps a core busy while "
                   "it waits, and saves the sleep and wake that cost about as much as a fast station's answer on a "
                   "virtual machine; after three polls that found nothing it polls only every 16th wait.")
def connect(device: str, profiles: str | None, address: str, kind: str, token_file: str | None,
            ca_file: str | None, insecure: bool, name: str | None, wire: str, busy_poll_ms: float | None) -> None:
    """Write a profile of DEVICE that reaches the chip through a station instead of simulating it.

    The new profile keeps DEVICE's calibration and environment, drops its fabrication
    truth, and names the backend; `transfer`, `audit`, `calibrate` and `train --in-situ`
    then measure the chip itself.  Token and CA files are copied into the tokens/ folder
    beside the profile, the only place a profile can name files in.
    """
    import dataclasses

    from pnndeploy.backends import backend_class
    from pnndeploy.backends.credentials import CREDENTIALS_DIR, plain_http_problem
    from pnndeploy.formats.profile_folder import check_device_name
    from pnndeploy.formats.profiles import BackendSpec, read_profile, write_profile

    source = _profile_path(device, profiles)
    record = read_profile(source)
    backend_class(kind)                       # an unknown kind is refused now, not at the first measurement
    if kind == "http":
        from pnndeploy.backends.http import check_url

        check_url(address)
    new_name = check_device_name(name or f"{record.device_id}-remote")
    problem = plain_http_problem(kind, address, {"token_file": "x"} if token_file else {})
    if problem and not insecure:
        raise PnnError(f"--address: {problem}")
    # the chip id the station must report (carried over when the source itself points at a station)
    options = {"device": (record.backend.options.get("device") if record.backend else None) or record.device_id}
    target = source.parent / f"{new_name}.h5"
    if target.resolve() == source.resolve():
        raise PnnError(f"--name {new_name} would overwrite {source}; choose another name")
    folder = source.parent / CREDENTIALS_DIR
    if token_file:
        options["token_file"] = _install_credential(token_file, folder, f"{new_name}.token", "--token-file", True)
    if wire != "auto":
        options["wire"] = wire
    if busy_poll_ms is not None:
        options["busy_poll_ms"] = busy_poll_ms
    if ca_file:
        options["ca_file"] = _install_credential(ca_file, folder, f"{new_name}.ca.pem", "--ca-file", False)
    write_profile(dataclasses.replace(record, device_id=new_name, fabrication=None,
                                      backend=BackendSpec(kind, address, options)), target)
    click.echo(f"wrote {target}: {new_name} -> {kind} {address} (station chip {record.device_id})")


@chip.command()
@click.argument("device")
@profiles_option
@timeout_option
@insecure_option
@click.option("--json", "as_json", is_flag=True, help="Print what the chip reports as JSON.")
def info(device: str, profiles: str | None, timeout: float, insecure: bool, as_json: bool) -> None:
    """Ask DEVICE's station what it holds: chip id, platform, array, firmware, what it supports (and, for a
    station over the network, the wire measurements take: stream, binary or json)."""
    from pnndeploy.deploy.hardware import open_chip
    from pnndeploy.formats.profiles import read_profile

    backend = open_chip(read_profile(_profile_path(device, profiles)), timeout, insecure)
    try:
        doc = backend.info().to_dict()
        wire = getattr(backend, "wire_in_use", None)
        if isinstance(wire, str):
            doc["wire"] = wire
    finally:
        backend.close()
    if as_json:
        print_json(doc)
    else:
        for key, value in doc.items():
            click.echo(f"{key:>16}: {value}")


@main.command()
@click.argument("device")
@profiles_option
@click.option("--points", type=click.IntRange(16, 65536), default=1024, show_default=True,  # MIN/MAX_POINTS
              help="Sweep points per device (on the DAC grid, over the heater range).")
@click.option("--temperature", type=float, default=None, metavar="C",
              help="Set the station's temperature (degrees Celsius) before sweeping (needs a TEC).")
@click.option("--max-residual", type=FloatRange(0, None, min_open=True), default=0.02, show_default=True,
              help="Refuse the calibration when any device's rms fit residual exceeds this (weight units).")
@max_faulty_option
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Write the recalibrated profile here instead of replacing DEVICE's.")
@click.option("--dry-run", is_flag=True, help="Measure and report; write nothing.")
@timeout_option
@insecure_option
@compute_options
@click.option("--json", "as_json", is_flag=True, help="Print the calibration document on stdout.")
def calibrate(device: str, profiles: str | None, points: int, temperature: float | None, max_residual: float,
              max_faulty: float, out: str | None, dry_run: bool, timeout: float, insecure: bool, compute: str | None,
              threads: str | None, as_json: bool) -> None:
    """Recalibrate DEVICE by measurement: sweep every device, fit its transfer function, write the profile.

    The chip is reached through its profile's backend; a simulated profile without one is
    measured in-process from its truth (and the report gives the calibration error against
    that truth).  The old calibration is kept in the profile's calibration_history; the file
    is replaced atomically, and not at all when the sweep or any device's fit fails.

    \b
    Examples:
      pnndeploy calibrate chipB-remote
      pnndeploy calibrate chipC --dry-run --json
    """
    from pnndeploy.backends.simulated import SimulatedChip
    from pnndeploy.deploy.calibration import calibration_doc, check_fit, measure_calibration, recalibrated
    from pnndeploy.deploy.hardware import open_chip
    from pnndeploy.formats.profile_schema import field_units
    from pnndeploy.formats.profiles import write_profile
    from pnndeploy.platforms import get_platform
    from pnndeploy.report.tables import render_calibration

    where = resolve_compute_options(compute, threads)           # before anything is read or measured
    path, record = recalibration_source(device, profiles, out, temperature)
    if record.backend is None and temperature is not None and temperature != record.calibration_temperature_C:
        # the simulated truth holds at the profile's calibration temperature: a calibration at another one
        # would shift every offset by k * dT and the simulator would then map with it
        raise PnnError(f"--temperature {temperature:g}: {record.device_id} is simulated in-process, and its truth "
                       f"holds at {record.calibration_temperature_C:g} degC; calibrate it there, or serve it "
                       "(`pnndeploy chip serve`) and calibrate the station's copy")
    backend = open_chip(record, timeout, insecure) if record.backend is not None else SimulatedChip(profile=record)
    try:
        if temperature is not None:
            backend.set_temperature(temperature)       # the backend reports the temperature it reached
        with progress_bar() as progress:
            task = progress.add_task(f"sweeping {record.devices} devices of {record.device_id}", total=record.devices)
            result = measure_calibration(record, backend, points, progress=lambda n: progress.advance(task, n),
                                         compute=where)
    finally:
        backend.close()
    check_fit(result, max_residual, max_faulty)
    written = None
    if not dry_run:
        target = out or str(path)
        write_profile(recalibrated(record, result), target)
        written = target
    units = {**field_units(get_platform(record.platform)), "_controls": get_platform(record.platform).control_units}
    doc = calibration_doc(result, units, written)
    if as_json:
        print_json(doc)
    else:
        render_calibration(doc)

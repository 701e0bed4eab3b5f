"""Where a chip's credentials come from, and where they may go: token and CA files, the environment, loopback.

Why this exists: a profile may come from someone else, and its ``backend`` group
says where pnndeploy connects and which token it sends.  So a profile names its
token (``token_file``) and its station's CA certificate (``ca_file``) by a plain
name in the ``tokens/`` folder beside it, never by a path; the token file must be
the user's own and readable by nobody else (as ssh insists for its keys); and a
credential goes to a non-loopback address in plain HTTP only when the user says
``--insecure``.  The other source of a token is :data:`TOKEN_ENV`.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from pnndeploy.errors import PnnError
# the naming rule lives with the profiles folder (formats), which validates profiles without this layer
from pnndeploy.formats.profile_folder import CREDENTIALS_DIR, FILE_OPTIONS, credential_name_problem

__all__ = ["TOKEN_ENV", "CREDENTIALS_DIR", "FILE_OPTIONS", "CredentialError", "Trust", "credential_path",
           "read_secret", "token_from", "is_loopback", "plain_http_problem"]

#: Environment variable holding a chip server's bearer token (client, and `chip serve` without --token-file).
TOKEN_ENV = "PNNDEPLOY_CHIP_TOKEN"
#: Largest token or CA file read, bytes (a token is a line; a CA bundle a few certificates).
MAX_FILE_BYTES = 256 * 1024

class CredentialError(PnnError):
    """A token or CA file that may not be used: one line, exit 2."""


@dataclass(frozen=True)
class Trust:
    """What the user, not the profile, decided for this run: where named files live, and --insecure."""

    #: The ``tokens/`` folder beside the profile (None: the profile names no files, e.g. a backend made in code).
    folder: Path | None = None
    #: ``--insecure``: a credential may cross the network in plain HTTP to a non-loopback station.
    insecure: bool = False


def credential_path(trust: Trust, key: str, name: str, where: str) -> Path:
    """The file backend option ``key`` names, checked to lie inside the profile's tokens folder."""
    problem = credential_name_problem(key, name)
    if problem:
        raise CredentialError(f"{where}: {problem}")
    if trust.folder is None:
        raise CredentialError(f"{where}: backend {key} {name!r} names a file in a profile's {CREDENTIALS_DIR}/ "
                              "folder, but this backend was not opened from a profile file")
    folder = trust.folder
    path = folder / name
    try:
        real, home = path.resolve(strict=True), folder.resolve(strict=True)
    except (OSError, RuntimeError):
        raise CredentialError(f"{where}: backend {key} {path} does not exist; put the file there (mode 600 for a "
                              "token) or run `pnndeploy chip connect` again") from None
    if real.parent != home:
        raise CredentialError(f"{where}: backend {key} {path} is a link to {real}, outside {folder}; a profile "
                              f"only reaches files inside its {CREDENTIALS_DIR}/ folder: copy the file there")
    return real


def read_secret(path: Path, what: str, secret: bool = True) -> str:
    """The text of a token (``secret``) or CA file; refused unless a regular file (owner-only for a secret)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise CredentialError(f"{what} {path}: cannot be read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CredentialError(f"{what} {path} is not a regular file")
        if secret and os.name == "posix":
            if info.st_uid != os.geteuid():
                raise CredentialError(f"{what} {path} belongs to another user (uid {info.st_uid}); use a token "
                                      "file of your own")
            if info.st_mode & 0o077:
                raise CredentialError(f"{what} {path} can be read by others (mode {stat.S_IMODE(info.st_mode):03o});"
                                      f" run `chmod 600 {path}`")
        raw = fh.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise CredentialError(f"{what} {path} is larger than {MAX_FILE_BYTES} bytes; is it the right file?")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialError(f"{what} {path} is not UTF-8 text") from None


def token_from(trust: Trust, options: Mapping[str, str], where: str) -> str:
    """The bearer token: the profile's named token file (owner-only), else $PNNDEPLOY_CHIP_TOKEN."""
    name = options.get("token_file")
    if name:
        path = credential_path(trust, "token_file", str(name), where)
        token = read_secret(path, f"{where}: token file").strip()
        if not token:
            raise CredentialError(f"{where}: token file {path} is empty")
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            raise CredentialError(f"{where}: no token; the profile's backend names no token_file and ${TOKEN_ENV} "
                                  "is unset")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in token):
        raise CredentialError(f"{where}: the token holds spaces or control characters; it must be one line of "
                              "printable ASCII (as `pnndeploy chip serve` makes it)")
    return token


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IP literals (a name other than localhost is not trusted to be local)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def plain_http_problem(kind: str, address: str, options: Mapping[str, str]) -> str | None:
    """Why this backend would send a credential unencrypted over the network (None: it would not)."""
    sends = kind == "http" or bool(options.get("token_file"))
    try:
        parts = urlsplit(address)
        host = parts.hostname or ""
    except ValueError:
        return None
    if not sends or parts.scheme != "http" or not host or is_loopback(host):
        return None
    return (f"address {address} is plain HTTP to a non-loopback host: the bearer token would cross "
            "the network unencrypted; use https:// (the station runs `chip serve --tls-cert F --tls-key F`, "
            "the profile names its CA in ca_file), or pass --insecure to accept it on a trusted lab network")

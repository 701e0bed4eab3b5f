"""Where profiles live: the profiles folder, device names, and a name's profile file.

A device name names files (``PROFILES/NAME.h5``, ``deployments/MODEL@NAME.h5``),
so it is checked to be a plain name, never a path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pnndeploy.errors import ProfileError
from pnndeploy.untrusted import brief

#: Environment variable naming the profiles folder when ``--profiles`` is not given.
PROFILES_ENV = "PNNDEPLOY_PROFILES"
DEFAULT_PROFILES_DIR = "device_profiles"


def profiles_dir(option: str | os.PathLike[str] | None = None, platform: str | None = None) -> Path:
    """The profiles folder: ``option`` (``--profiles``), else $PNNDEPLOY_PROFILES, else the default fleet's.

    The default fleet of a platform lies in its own folder below device_profiles (``platform.profiles_subdir``;
    the microring fleet is device_profiles itself).
    """
    if option:
        return Path(option)
    env = os.environ.get(PROFILES_ENV)
    if env:
        return Path(env)
    if platform is not None:
        from pnndeploy.platforms import get_platform

        return Path(DEFAULT_PROFILES_DIR) / get_platform(platform).profiles_subdir
    return Path(DEFAULT_PROFILES_DIR)


_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_NAME_MAX = 64


def check_device_name(name: str) -> str:
    """``name`` if it is a plain device name (not a path); ProfileError otherwise."""
    hint = ("use a device name such as 'chipA' (see `pnndeploy fleet list`) and pick the folder "
            "with --profiles")
    if not isinstance(name, str) or not name:
        raise ProfileError(f"device name is empty; {hint}")
    shown = name if len(name) <= 40 else name[:40] + "..."
    if len(name) > _NAME_MAX:
        raise ProfileError(f"device name {shown!r} is longer than {_NAME_MAX} characters; {hint}")
    if "/" in name or "\\" in name or ".." in name:
        raise ProfileError(f"device name {shown!r} looks like a path, not a name; {hint}")
    if name.startswith("."):
        raise ProfileError(f"device name {shown!r} starts with '.'; {hint}")
    if not _NAME_RE.fullmatch(name):
        raise ProfileError(f"device name {shown!r} has characters outside A-Z a-z 0-9 _ . -; {hint}")
    return name


def _check_inside(path: Path, directory: Path) -> Path:
    """``path`` unless it is a symbolic link leading out of ``directory``; ProfileError then.

    A folder of profiles may come from someone else (a tarball keeps its links): a name must not
    make pnndeploy read a file elsewhere on this machine.  Links inside the folder are fine.
    """
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        if not target.is_relative_to(Path(os.path.realpath(directory))):
            shown = brief(str(target), 80, quote=False, tail=True)
            raise ProfileError(
                f"profile {path} is a symbolic link to {shown}, outside the profiles folder {directory}; "
                "pnndeploy reads only profiles inside the folder: copy the file into it instead of linking")
    return path


def list_profiles(directory: str | os.PathLike[str]) -> list[Path]:
    """Sorted ``*.h5`` regular files of ``directory`` (hidden ones skipped); ProfileError if it is no folder.

    Anything but a regular file (a FIFO, a device, a link to one) is skipped unopened; a link that
    leads out of the folder is refused (:func:`_check_inside`).
    """
    directory = Path(directory)
    if not directory.is_dir():
        what = "is a file, not a folder" if directory.exists() else "does not exist"
        raise ProfileError(
            f"profiles folder {directory} {what}; pass --profiles DIR, set "
            f"{PROFILES_ENV}, or create one with `pnndeploy fleet make`")
    # hidden files are skipped: a writer killed mid-write may leave its temporary .NAME.h5.XXXX.tmp
    return sorted(_check_inside(p, directory) for p in directory.glob("*.h5")
                  if p.is_file() and not p.name.startswith("."))


def resolve_device(name: str, directory: str | os.PathLike[str]) -> Path:
    """``<directory>/<name>.h5`` for a device name; ProfileError if the name is bad or absent."""
    check_device_name(name)
    directory = Path(directory)
    path = directory / f"{name}.h5"
    # exact names only, also on case-insensitive filesystems
    if path.is_file() and path.name in os.listdir(directory):
        return _check_inside(path, directory)
    if not directory.is_dir():
        what = "is a file, not a folder" if directory.exists() else "does not exist"
        raise ProfileError(
            f"no profile for device {name!r}: profiles folder {directory} {what}; "
            f"pass --profiles DIR or set {PROFILES_ENV}, or create a fleet with `pnndeploy fleet make`")
    known = [p.stem for p in list_profiles(directory)]
    extra = ""
    folded = [k for k in known if k.lower() == name.lower()]
    if name.endswith(".h5") and name[:-3] in known:
        extra = f"; did you mean {name[:-3]!r}? give the name without .h5"
    elif folded:
        extra = f"; did you mean {folded[0]!r}? names are case-sensitive"
    else:
        import difflib

        close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
        if close:
            extra = f"; the closest name is {close[0]!r}"
    if not known:
        have = "it holds no profiles"
    elif len(known) <= 8:
        have = f"it holds {', '.join(known)}"
    else:
        have = f"it holds {len(known)} profiles"
    raise ProfileError(
        f"no profile for device {name!r} in {directory} ({have}){extra}; see "
        f"`pnndeploy fleet list` or pass --profiles DIR")


# ------------------------------------------------------------------ files a profile's backend names

#: The folder, beside the profiles, holding the files their ``backend`` groups name (tokens, CA certificates).
CREDENTIALS_DIR = "tokens"
#: Backend options that name a file in :data:`CREDENTIALS_DIR`, and whether the file is a secret.
FILE_OPTIONS = {"token_file": True, "ca_file": False}
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def credential_name_problem(key: str, name: str) -> str | None:
    """Why ``name`` cannot be the value of backend option ``key`` (None: a plain file name, fine).

    Why names only: a profile may come from someone else, and a path in it would make pnndeploy
    read (and send as a token) any file the user can read.
    """
    if _FILE_NAME_RE.fullmatch(name) and ".." not in name:
        return None
    shown = name if len(name) <= 60 else name[:60] + "..."
    return (f"'backend' {key} {shown!r} is not a plain file name: a profile names its {key} by name in the "
            f"{CREDENTIALS_DIR}/ folder beside it (letters, digits, _ . -; no path, no '..'); move the file there "
            f"and write its name, e.g. with `pnndeploy chip connect --{key.replace('_', '-')} FILE`")

"""What every command shares: progress bars on stderr, JSON on stdout, checks of output paths and options."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from pnndeploy.errors import PnnError


def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def progress_bar(*columns: Any, transient: bool = True) -> Any:
    """A rich progress display on stderr; silent when stderr is not a terminal (logs, pipes, tests)."""
    from rich.progress import Progress

    console = stderr_console()
    return Progress(*columns, console=console, transient=transient, disable=not console.is_terminal)


def print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, allow_nan=False))


profiles_option = click.option(
    "--profiles", "profiles", default=None, metavar="DIR",
    help="Folder of device profiles (default: $PNNDEPLOY_PROFILES, else device_profiles).")


def check_output_file(path: str, flag: str, example: str = "model.onnx") -> None:
    """Refuse an output path that cannot be written, before any long computation."""
    from pathlib import Path

    target = Path(path)
    if target.is_dir():
        raise PnnError(f"{flag} {path} is a folder; give a file path such as {target / example}")
    check_output_dir(target.parent, flag, shown=path)


def check_output_dir(directory: Any, flag: str, shown: str | None = None) -> None:
    """Refuse an output folder that is a file or cannot be created or written."""
    from pathlib import Path

    folder = Path(directory)
    shown = shown if shown is not None else str(folder)
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise PnnError(f"{flag} {shown}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK):
        raise PnnError(f"{flag} {shown}: folder {parent} is not writable; choose another path")


def fraction(name: str, value: float | None) -> float | None:
    if value is not None and not 0.0 <= value <= 1.0:  # also refuses NaN
        raise PnnError(f"{name} {value} is outside [0, 1]; accuracies are fractions, e.g. 0.9")
    return value

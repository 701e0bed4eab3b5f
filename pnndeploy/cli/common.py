"""What every command shares: progress bars on stderr, JSON on stdout, checks of output paths and options."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from pnndeploy.errors import PnnError
from pnndeploy.platforms import DEFAULT_PLATFORM, PLATFORMS


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


def _default_fleets() -> str:
    """Where each platform's default fleet lies, for help texts: "device_profiles (NAME), ..."."""
    from pathlib import Path

    return ", ".join(f"{Path('device_profiles') / PLATFORMS[name].profiles_subdir} ({name})" for name in sorted(PLATFORMS))


class FloatRange(click.FloatRange):
    """click's FloatRange, which also refuses NaN (its bounds compare false with NaN, so it let ``nan`` through:
    a server slept NaN seconds, a profile was written that no backend could open)."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        number = super().convert(value, param, ctx)
        if number != number:
            self.fail(f"{value!r} is not a number", param, ctx)
        return number


#: `calibrate` and `profile import`: how many devices may not respond before the measurement, not the chip, is
#: blamed (the default is DEFAULT_MAX_FAULTY of pnndeploy.deploy.calibration, which a test keeps equal).
max_faulty_option = click.option(
    "--max-faulty", type=FloatRange(0, 1), default=0.1, show_default=True,
    help="Refuse the calibration when more than this fraction of devices do not respond to their setting (a "
         "laser off, a station wired to another chip); up to it they are recorded as faulty and mapped around.")

profiles_option = click.option(
    "--profiles", "profiles", default=None, metavar="DIR",
    help=f"Folder of device profiles (default: $PNNDEPLOY_PROFILES, else the platform's default fleet: "
         f"{_default_fleets()}).")


def platform_option(what: str) -> Any:
    """``--platform NAME``, one of the platforms this pnndeploy knows."""
    return click.option("--platform", type=click.Choice(sorted(PLATFORMS)), default=None,
                        help=f"{what} (default {DEFAULT_PLATFORM}).")


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


def executor_options(func: Any) -> Any:
    """--executor local|ray and --address, for commands whose pieces of work are independent."""
    func = click.option("--address", default=None, metavar="auto|ray://HOST:PORT",
                        help="With --executor ray: the cluster to join (default: start a local one on this "
                             "machine's cores).")(func)
    func = click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        help="local: in this process, in order; ray: as Ray tasks (the optional extra, "
                             "pip install -e '.[ray]').")(func)
    return func


def check_executor(executor: str, address: str | None) -> None:
    """Refuse, before any work, an executor that cannot run: Ray not installed, --address without Ray."""
    if address and executor != "ray":
        raise PnnError(f"--address {address} names a Ray cluster; add --executor ray, or drop --address")
    if executor == "ray":
        from pnndeploy.deploy.executors import require_ray

        require_ray()
        if address and address.startswith("ray://"):
            try:
                import grpc  # noqa: F401  (Ray Client's transport)
            except ImportError:
                raise PnnError(f"--address {address} is a Ray Client address, which needs pip install "
                               "'ray[client]'; or use --address auto on a node of the cluster") from None


def compute_options(func: Any) -> Any:
    """--compute auto|cpu|cuda[:N] and --threads N: where torch computes (never which chip: that is --device)."""
    func = click.option("--threads", default=None, metavar="N|auto",
                        help="CPU threads torch may use (default auto, or $PNNDEPLOY_THREADS: training takes one "
                             "thread for small models and every core once a step is big enough to split; fleets take "
                             "every core). Training's last bits depend on it: --threads 1 --compute cpu reproduces "
                             "a run bit for bit on a machine of the same CPU kind; a fleet's bits do not.")(func)
    func = click.option("--compute", default=None, metavar="auto|cpu|cuda[:N]",
                        help="Where training and the chip physics compute (default auto, or $PNNDEPLOY_COMPUTE): a "
                             "CUDA GPU when there is one, else the CPU. Not a chip: --device names chips.")(func)
    return func


def resolve_compute_options(compute: str | None, threads: str | None) -> Any:
    """The :class:`~pnndeploy.compute.Compute` of ``--compute`` and ``--threads`` (one line, exit 2, when absent)."""
    from pnndeploy.compute import resolve_compute

    return resolve_compute(compute, threads)

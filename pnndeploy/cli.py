"""The `pnndeploy` command line: parse, call, render.  No physics here.

Heavy modules (torch, onnx, h5py) are imported inside the commands so that
`pnndeploy --help` stays fast.
"""

from __future__ import annotations

import errno
import json
import math
import os
import sys
from typing import Any

import click

from pnndeploy import __version__
from pnndeploy.errors import ConfigError, PnnError


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _usage_line(exc: click.ClickException) -> str:
    """A click usage error (bad flag value, unknown option, missing argument) as one line."""
    message = _one_line(exc.format_message()).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    command = " ".join(["pnndeploy", *ctx.command_path.split()[1:]]) if ctx is not None else "pnndeploy"
    return f"pnndeploy: error: {message}; see `{command} --help`"


def _os_error_line(exc: OSError) -> str:
    """An operating-system error (unwritable folder, disk full, ...) as one line naming the file."""
    what = exc.strerror or _one_line(str(exc)) or type(exc).__name__
    where = f"{exc.filename}: " if exc.filename else ""
    return f"pnndeploy: error: {where}{what}; check the path, its permissions and the free disk space"


#: click >= 8.2 shows a group's help through this UsageError when no command is given: leave it to click.
_HELP_ERRORS = tuple(getattr(click.exceptions, name) for name in ("NoArgsIsHelpError",)
                     if hasattr(click.exceptions, name))


class PnnGroup(click.Group):
    """A click group that turns every user-fixable error into one line on stderr and exit status 2.

    PnnError, click's own usage errors and operating-system errors all become
    ``pnndeploy: error: ...``; never a traceback.  Ctrl-C unwinds (temporary
    files are removed by their ``finally``); SIGTERM removes the temporary file
    of the write in progress and exits with status 143.  Either way no partial
    output file is left.
    """

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _HELP_ERRORS:
            raise
        except click.UsageError as exc:   # options of the top-level command itself
            click.echo(_usage_line(exc), err=True)
            sys.exit(exc.exit_code)

    def invoke(self, ctx: click.Context) -> Any:
        previous = _install_sigterm()
        try:
            return super().invoke(ctx)
        except PnnError as exc:
            click.echo(f"pnndeploy: error: {_one_line(str(exc))}", err=True)
            sys.exit(2)
        except _HELP_ERRORS:
            raise
        except click.ClickException as exc:
            click.echo(_usage_line(exc), err=True)
            sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
        except OSError as exc:
            if exc.errno == errno.EPIPE:   # stdout closed early (`| head`): click exits quietly
                raise
            click.echo(_os_error_line(exc), err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("pnndeploy: interrupted; no partial output files were left", err=True)
            sys.exit(130)
        finally:
            _restore_sigterm(previous)


def _install_sigterm() -> Any:
    """On SIGTERM remove the temporary file of any write in progress and exit 143 at once.

    An exception raised from a signal handler can land in a finalizer, where Python swallows it, so
    the handler does the cleanup itself (main thread only); returns the previous handler.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        from pnndeploy.atomic import remove_active_temporaries

        remove_active_temporaries()
        try:
            os.write(2, b"pnndeploy: terminated; no partial output files were left\n")
        finally:
            os._exit(143)

    try:
        return signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        return None


def _restore_sigterm(previous: Any) -> None:
    import signal

    if previous is not None:
        try:
            signal.signal(signal.SIGTERM, previous)
        except (ValueError, OSError):
            pass


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _progress(*columns: Any, transient: bool = True) -> Any:
    """A rich progress display on stderr; silent when stderr is not a terminal (logs, pipes, tests)."""
    from rich.progress import Progress

    console = _stderr_console()
    return Progress(*columns, console=console, transient=transient, disable=not console.is_terminal)


def _print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, allow_nan=False))


@click.group(cls=PnnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pnndeploy")
def main() -> None:
    """Train physical neural networks with sharpness-aware training (SAT), export them once as ONNX,
    and deploy them to a fleet of chips through each chip's calibration profile.

    \b
    Typical flow:
      pnndeploy train                      # SAT on the embedded digits set -> models/model.onnx
      pnndeploy inspect models/model.onnx  # what the file holds
      pnndeploy transfer --device chipB    # map onto one chip's calibration, accuracy on that chip
      pnndeploy transfer --fleet           # every chip in device_profiles/, yield
      pnndeploy audit --fleet              # temperature and ageing tolerance; exit 1 if it fails
      pnndeploy demo                       # standard vs noise-aware vs SAT, the whole story

    Exit status: 0 success, 1 a check failed, 2 bad usage or bad input.
    """


# ---------------------------------------------------------------------------------------------- train
@main.command()
@click.option("--dataset", default=None, metavar="SPEC",
              help="digits (default, scikit-learn's handwritten digits), iris, mnist:DIR (IDX files), "
                   "npz:PATH (arrays X, y, optional X_test, y_test).")
@click.option("--method", type=click.Choice(["sat", "standard", "noise-aware"]), default=None,
              help="sat (default): sharpness-aware training on the ring detunings; standard: the paper's "
                   "baseline, trains W in [-1, 1] directly; noise-aware: Gaussian noise on the detunings.")
@click.option("--epochs", type=int, default=None, help="Passes over the training set (default 30).")
@click.option("--batch-size", type=int, default=None, help="Samples per step (default 32).")
@click.option("--lr", type=float, default=None, help="Adam learning rate (default 0.01).")
@click.option("--seed", type=int, default=None, help="Seed for the split, the init and the shuffling (default 0).")
@click.option("--hidden", type=str, default=None, metavar="W[,W...]",
              help="Hidden layer widths, comma-separated (default 32).")
@click.option("--rho", type=float, default=None,
              help="SAT radius: the norm of the perturbation of all detunings together, in nm "
                   "(relative when --adaptive). Default 0.1. --rho 0 takes the same steps as plain training "
                   "on the detunings (at twice the cost: both passes still run).")
@click.option("--adaptive/--no-adaptive", default=None,
              help="Adaptive SAT (ASAM): scale the perturbation by |detuning| (default off).")
@click.option("--perturb", type=click.Choice(["onchip", "all"]), default=None,
              help="Which parameters SAT perturbs: the on-chip controls (default) or also gains and biases.")
@click.option("--drift-budget", type=float, default=None, metavar="K",
              help="SAT only: in each ascent step also shift every detuning by the worse of ±k·K "
                   "(a common-mode temperature change of K kelvin), default 0 (off).")
@click.option("--sat-every", type=int, default=None, metavar="K",
              help="Efficient SAT: compute a fresh ascent direction every K steps and reuse it in between "
                   "(one forward/backward instead of two). Default 1: full SAT; 5 matched its fleet accuracy "
                   "at 0 K over five seeds at about 0.7x its time (README, Performance).")
@click.option("--noise", type=float, default=None,
              help="Std of Gaussian noise on each detuning at every training step, nm: noise-aware "
                   "(default 0.05) and sat (default 0, off; with --drift-budget it covers random errors too).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML file of defaults for any of these options; flags given on the command line win.")
@click.option("--out", default=None, metavar="FILE.onnx", help="Where to write the model (default models/model.onnx).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout and nothing else there.")
@click.pass_context
def train(ctx: click.Context, config_path: str | None, as_json: bool, **flags: Any) -> None:
    """Train one model against the nominal chip and export it as ONNX.

    \b
    Example:
      pnndeploy train --method sat --seed 0 --out models/sat.onnx
      pnndeploy train --method standard --epochs 30 --json
    """
    from pnndeploy.config import load_config
    from pnndeploy.training import TrainConfig

    settings: dict[str, Any] = load_config(config_path) if config_path else {}
    from_file = set(settings)
    for name, value in flags.items():
        if value is not None and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            settings[name] = value
            from_file.discard(name)
    if isinstance(settings.get("hidden"), str):
        settings["hidden"] = _parse_widths(settings["hidden"])
    dataset_spec = settings.pop("dataset", "digits")
    out = settings.pop("out", "models/model.onnx")
    config = TrainConfig(**settings)
    try:
        config.validate()
    except ConfigError as exc:
        # a value that came from the YAML file: name the file and its key, not only the flag
        text = str(exc)
        key = next((k for k in sorted(from_file) if text.startswith(f"--{k.replace('_', '-')} ")), None)
        if key is None:
            raise
        raise ConfigError(f"config {config_path}: key '{key}': {text}; fix it in the file or override "
                          f"it with --{key.replace('_', '-')}") from None
    _check_output_file(out, "--out")
    summary = _run_training(dataset_spec, config, out)
    if as_json:
        _print_json(summary.to_json())
        return
    from pnndeploy.report import render_train_summary

    render_train_summary(summary)


def _check_output_file(path: str, flag: str, example: str = "model.onnx") -> None:
    """Refuse an output path that cannot be written, before any long computation."""
    from pathlib import Path

    target = Path(path)
    if target.is_dir():
        raise PnnError(f"{flag} {path} is a folder; give a file path such as {target / example}")
    _check_output_dir(target.parent, flag, shown=path)


def _check_output_dir(directory: Any, flag: str, shown: str | None = None) -> None:
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


def _parse_widths(text: str) -> list[int]:
    try:
        widths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise PnnError(f"--hidden {text!r}: expected comma-separated integers such as 32 or 64,32") from None
    if not widths:
        raise PnnError("--hidden is empty: give at least one width, e.g. --hidden 32")
    return widths


def _run_training(dataset_spec: str, config: Any, out: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from pnndeploy.data import load_dataset
    from pnndeploy.pipeline import train_and_export

    dataset = load_dataset(dataset_spec, seed=config.seed)
    with _progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[status]}"), TimeElapsedColumn(), transient=False) as progress:
        task = progress.add_task(f"train {config.method}", total=config.epochs, status="")

        def on_epoch(record: Any) -> None:
            progress.update(task, advance=1,
                            status=f"loss {record.loss:.3f}  train acc {record.train_accuracy:.3f}")

        summary, _ = train_and_export(dataset, config, out, on_epoch=on_epoch)
    return summary


# -------------------------------------------------------------------------------------------- inspect
@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the metadata and layers as JSON.")
def inspect(model: str, as_json: bool) -> None:
    """Show an exported model's metadata and layers.

    \b
    Example:
      pnndeploy inspect models/model.onnx
    """
    from pnndeploy.onnx_io import load_model
    from pnndeploy.report import inspect_document, render_inspect

    exported = load_model(model)
    doc = inspect_document(exported)
    if as_json:
        _print_json(doc)
    else:
        render_inspect(doc)


# ---------------------------------------------------------------------------------------------- fleet
profiles_option = click.option(
    "--profiles", "profiles", default=None, metavar="DIR",
    help="Folder of device profiles (default: $PNNDEPLOY_PROFILES, else device_profiles).")


@main.group()
def fleet() -> None:
    """Simulated chips: generate a fleet from a process spec, list the profiles."""


@fleet.command("make")
@click.option("--process", "process_path", default="device_profiles/process.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="Process spec (YAML) with the spreads of every quantity.")
@click.option("--count", type=click.IntRange(1, 10000), default=8, show_default=True, help="Number of chips.")
@click.option("--prefix", default="chip", show_default=True, help="Chip names: PREFIX + A, B, … Z, AA, …")
@click.option("--out", "out_dir", default="device_profiles", show_default=True, help="Folder to write them to.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Fleet seed; each chip draws from its own stream derived from it and its name.")
@click.option("--json", "as_json", is_flag=True, help="Print the written paths as JSON.")
def fleet_make(process_path: str, count: int, prefix: str, out_dir: str, seed: int, as_json: bool) -> None:
    """Generate simulated chips (fabrication truth + calibration) as HDF5 profiles.

    \b
    Example:
      pnndeploy fleet make --count 64 --prefix lot7- --out profiles/lot7 --seed 3
    """
    from pnndeploy.fleet_gen import chip_names, load_process, make_fleet
    from pnndeploy.profiles import check_device_name

    for name in dict.fromkeys(chip_names(1, prefix) + chip_names(count, prefix)[-1:]):
        try:
            check_device_name(name)
        except PnnError as exc:
            reason = str(exc).split(";")[0]
            shown = prefix if len(prefix) <= 40 else prefix[:40] + "..."
            raise PnnError(f"--prefix {shown!r} makes chip names that are refused ({reason}); "
                           "use letters, digits, '_', '.' or '-', e.g. --prefix lot7-") from None
    process = load_process(process_path)
    _check_output_dir(out_dir, "--out")
    with _progress() as progress:
        task = progress.add_task("writing profiles", total=count)
        paths = make_fleet(process, count, prefix, seed, out_dir,
                           progress=lambda i, n, name: progress.update(task, completed=i))
    if as_json:
        _print_json({"profiles": [str(p) for p in paths], "process": process["name"], "seed": seed})
    else:
        click.echo(f"wrote {len(paths)} profiles to {out_dir} ({paths[0].stem} … {paths[-1].stem})")


@fleet.command("list")
@profiles_option
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def fleet_list(profiles: str | None, as_json: bool) -> None:
    """List the device profiles of the profiles folder.

    \b
    Example:
      pnndeploy fleet list --profiles device_profiles
    """
    from pnndeploy.profiles import list_profiles, profile_summary, profiles_dir, read_profile
    from pnndeploy.report import render_fleet_list

    directory = profiles_dir(profiles)
    rows = [profile_summary(read_profile(path)) for path in list_profiles(directory)]
    if as_json:
        _print_json({"profiles_dir": str(directory), "devices": rows})
    else:
        render_fleet_list(str(directory), rows)


@main.group()
def profile() -> None:
    """Look at one device profile: show it, or validate a file."""


@profile.command("show")
@click.argument("name")
@profiles_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def profile_show(name: str, profiles: str | None, as_json: bool) -> None:
    """Show a device's array, calibration age and (simulated chips) its calibration error.

    \b
    Example:
      pnndeploy profile show chipB
    """
    from pnndeploy.profiles import profile_summary, profiles_dir, read_profile, resolve_device
    from pnndeploy.report import render_profile

    summary = profile_summary(read_profile(resolve_device(name, profiles_dir(profiles))))
    if as_json:
        _print_json(summary)
    else:
        render_profile(summary)


@profile.command("validate")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print {path, valid, problems} as JSON.")
def profile_validate(path: str, as_json: bool) -> None:
    """Check a profile file: every problem in one report. Exit 2 when it is invalid.

    \b
    Example:
      pnndeploy profile validate device_profiles/chipA.h5
    """
    from pnndeploy.profiles import validate_profile

    problems = validate_profile(path)
    if as_json:
        _print_json({"path": path, "valid": not problems, "problems": problems})
    elif not problems:
        click.echo(f"{path}: valid")
    if problems:
        if not as_json:
            click.echo(f"pnndeploy: error: profile {path}: " + "; ".join(problems), err=True)
        sys.exit(2)


# ------------------------------------------------------------------------------------------- transfer
def _devices_options(func: Any) -> Any:
    func = click.option("--device", "devices", multiple=True, metavar="NAME",
                        help="A device name (repeatable); resolves to PROFILES/NAME.h5.")(func)
    func = click.option("--fleet", "use_fleet", is_flag=True, help="Every profile in the profiles folder.")(func)
    func = profiles_option(func)
    func = click.option("--model", default="models/model.onnx", show_default=True,
                        type=click.Path(dir_okay=False), help="The ONNX model written by `pnndeploy train`.")(func)
    func = click.option("--dataset", default=None, metavar="SPEC",
                        help="Evaluate on this dataset's test split instead of the model's own.")(func)
    return func


def _fraction(name: str, value: float | None) -> float | None:
    if value is not None and not 0.0 <= value <= 1.0:  # also refuses NaN
        raise PnnError(f"{name} {value} is outside [0, 1]; accuracies are fractions, e.g. 0.9")
    return value


@main.command()
@_devices_options
@click.option("--temperature-delta", "delta_T", type=float, default=0.0, show_default=True,
              help="Chip temperature minus calibration temperature, K (every ring shifts by its own k·ΔT).")
@click.option("--threshold", type=float, default=0.9, show_default=True,
              help="Accuracy a chip must reach to count towards the yield.")
@click.option("--min-yield", type=float, default=None,
              help="Exit with status 1 when the fleet's yield is below this fraction.")
@click.option("--no-save", is_flag=True, help="Do not write deployments/MODEL@DEVICE.h5 files.")
@click.option("--json", "as_json", is_flag=True, help="Print the DESIGN.md transfer document on stdout.")
def transfer(model: str, devices: tuple[str, ...], use_fleet: bool, profiles: str | None, dataset: str | None,
             delta_T: float, threshold: float, min_yield: float | None, no_save: bool, as_json: bool) -> None:
    """Map the model onto chip(s) through their calibration and report the accuracy on each.

    \b
    Examples:
      pnndeploy transfer --device chipB
      pnndeploy transfer --fleet --temperature-delta 1 --min-yield 0.9 --json
    """
    from pathlib import Path

    from pnndeploy.profiles import profiles_dir
    from pnndeploy.report import render_transfer
    from pnndeploy.transfer import transfer_report

    _fraction("--threshold", threshold)
    _fraction("--min-yield", min_yield)
    if not math.isfinite(delta_T):
        raise PnnError(f"--temperature-delta {delta_T} is not a finite number of kelvin")
    prepared = _prepare_with_progress(model, devices, use_fleet, profiles_dir(profiles), dataset,
                                      None if no_save else Path("deployments"))
    report = transfer_report(prepared, delta_T=delta_T, threshold=threshold)
    if as_json:
        _print_json(report)
    else:
        render_transfer(report)
    if min_yield is not None and report["fleet"] is None:
        click.echo("pnndeploy: --min-yield needs at least one simulated chip to evaluate; every chip given is real",
                   err=True)
        sys.exit(1)
    if min_yield is not None and report["fleet"]["yield"] < min_yield:
        click.echo(f"pnndeploy: yield {report['fleet']['yield']:.3f} is below --min-yield {min_yield}", err=True)
        sys.exit(1)


def _prepare_with_progress(model: str, devices: Any, use_fleet: bool, directory: Any, dataset: str | None,
                           save_dir: Any) -> Any:
    from pnndeploy.transfer import prepare_fleet

    with _progress() as progress:
        task = progress.add_task("mapping onto chips", total=None)
        return prepare_fleet(model, devices, use_fleet, directory, dataset, save_dir,
                             on_device=lambda name: progress.update(task, advance=1,
                                                                     description=f"mapped {name}"))


# ---------------------------------------------------------------------------------------------- audit
@main.command()
@_devices_options
@click.option("--temperature", "temperature", default="-2:2:0.25", show_default=True, metavar="LO:HI:STEP",
              help="Temperature sweep, K from the calibration temperature (HI included).")
@click.option("--days", "days", default="0:180:15", show_default=True, metavar="LO:HI:STEP",
              help="Ageing sweep, days since calibration (HI included).")
@click.option("--draws", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Random ageing walks per device (the median is reported).")
@click.option("--threshold", type=float, default=None,
              help="Accuracy every chip must keep; default: the model's nominal accuracy minus 0.05.")
@click.option("--require-temperature", type=float, default=1.0, show_default=True, metavar="K",
              help="Pass only if every chip stays above the threshold within ±K kelvin.")
@click.option("--require-days", type=float, default=30.0, show_default=True, metavar="D",
              help="Pass only if every chip stays above the threshold for D days after calibration.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write accuracy-vs-drift plots (PNG).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Write a Markdown report (tables, and the plot if --plot is given).")
@click.option("--json", "as_json", is_flag=True, help="Print the DESIGN.md audit document on stdout.")
def audit(model: str, devices: tuple[str, ...], use_fleet: bool, profiles: str | None, dataset: str | None,
          temperature: str, days: str, draws: int, threshold: float | None, require_temperature: float,
          require_days: float, plot: str | None, report_path: str | None, as_json: bool) -> None:
    """Check drift robustness: accuracy vs temperature and vs days since calibration. Exit 1 when it fails.

    \b
    Examples:
      pnndeploy audit --fleet
      pnndeploy audit --device chipB --temperature -1:1:0.1 --require-temperature 0.5 --plot audit.png
      pnndeploy audit --fleet --threshold 0.9 --report audit.md --plot audit.png --json
    """
    from pnndeploy.audit import SweepRange, run_audit
    from pnndeploy.profiles import profiles_dir
    from pnndeploy.report import render_audit

    if plot is not None and not plot.lower().endswith(".png"):
        raise PnnError(f"--plot {plot}: the audit plot is a PNG; give a file name ending in .png")
    t_range = SweepRange.parse(temperature, "--temperature")
    d_range = SweepRange.parse(days, "--days")
    _fraction("--threshold", threshold)
    if plot:
        _check_output_file(plot, "--plot", "audit.png")
    if report_path:
        _check_output_file(report_path, "--report", "audit.md")
    prepared = _prepare_with_progress(model, devices, use_fleet, profiles_dir(profiles), dataset, None)
    total = len(t_range.values((0.0, -require_temperature, require_temperature))) \
        + draws * len(d_range.values((0.0, require_days)))
    with _progress() as progress:
        task = progress.add_task("sweeping temperature and ageing", total=total)
        doc = run_audit(prepared, t_range, d_range, threshold=threshold, require_temperature=require_temperature,
                        require_days=require_days, draws=draws, progress=lambda n: progress.advance(task, n))
    if plot:
        from pnndeploy.plots import plot_audit

        plot_audit(doc, plot)
        doc["plot"] = plot
    if report_path:
        from pnndeploy.report import write_audit_markdown

        write_audit_markdown(doc, report_path, plot)
        doc["report"] = report_path
    if as_json:
        _print_json(doc)
    else:
        render_audit(doc)
    if not doc["passed"]:
        sys.exit(1)


# ----------------------------------------------------------------------------------------------- demo
@main.command()
@click.option("--out", "out_dir", default="reports/demo", show_default=True, help="Folder for the report.")
@profiles_option
@click.option("--quick", is_flag=True, help="Few epochs and coarse sweeps (well under a minute), for a smoke test.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="First training seed.")
@click.option("--seeds", type=click.IntRange(1, 20), default=None,
              help="Seeds per method, averaged in the table (default 3; 1 with --quick).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison table as JSON.")
def demo(out_dir: str, profiles: str | None, quick: bool, seed: int, seeds: int | None, as_json: bool) -> None:
    """The whole story: standard vs noise-aware vs SAT vs SAT with a drift adversary, on the default fleet.

    Trains each on the embedded digits, maps it onto every chip, audits drift, and writes
    OUT/report.md, OUT/summary.json and the plots.

    \b
    Example:
      pnndeploy demo --out reports/demo
    """
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from pnndeploy.demo import DEMO_ENTRIES, run_demo
    from pnndeploy.profiles import profiles_dir
    from pnndeploy.training import TrainConfig

    epochs = 6 if quick else TrainConfig().epochs
    runs = len(DEMO_ENTRIES) * (seeds or (1 if quick else 3))
    with _progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), transient=False) as progress:
        task = progress.add_task("demo", total=runs * (epochs + 2))
        doc = run_demo(out_dir, profiles_dir(profiles), quick=quick, seed=seed, seeds=seeds,
                       status=lambda text: progress.update(task, description=text,
                                                           advance=0 if text.startswith("training") else 1),
                       on_epoch=lambda name, record: progress.advance(task, 1))
    if as_json:
        _print_json({"out": out_dir, "threshold": doc["threshold"], "table": doc["table"]})
        return
    from pnndeploy.report import render_demo_table

    render_demo_table(doc["table"], doc["threshold"])
    click.echo(f"report: {out_dir}/report.md (plots and summary.json beside it)")


if __name__ == "__main__":
    main()

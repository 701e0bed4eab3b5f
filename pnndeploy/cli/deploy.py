"""`pnndeploy transfer` and `pnndeploy audit`: map a model onto chips, measure it, check its drift tolerance."""

from __future__ import annotations

import math
import sys
from typing import Any

import click

from pnndeploy.cli.common import (check_executor, check_output_file, compute_options, executor_options, fraction,
                                  print_json, profiles_option, progress_bar, resolve_compute_options)
from pnndeploy.cli.chip import insecure_option, timeout_option
from pnndeploy.cli.group import main
from pnndeploy.errors import PnnError
from pnndeploy.simulation.compensation import COMPENSATIONS


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
    func = timeout_option(func)
    func = insecure_option(func)
    func = compute_options(func)
    return func


@main.command()
@_devices_options
@click.option("--temperature-delta", "delta_T", type=float, default=0.0, show_default=True,
              help="Chip temperature minus calibration temperature, K (every control device shifts by its own k·ΔT).")
@click.option("--threshold", type=float, default=0.9, show_default=True,
              help="Accuracy a chip must reach to count towards the yield.")
@click.option("--min-yield", type=float, default=None,
              help="Exit with status 1 when the fleet's yield is below this fraction.")
@click.option("--no-save", is_flag=True, help="Do not write deployments/MODEL@DEVICE.h5 files.")
@click.option("--uncalibrated", is_flag=True,
              help="Map through the nominal device (the drawing: no offsets, nominal device parameters, no "
                   "crosstalk) instead of each chip's calibration: what skipping calibration costs (the paper's "
                   "in-silico transfer). Writes no deployment.")
@executor_options
@click.option("--chips-per-task", type=click.IntRange(1, None), default=512, show_default=True,
              help="With --executor ray: simulated chips evaluated by one Ray task.")
@click.option("--json", "as_json", is_flag=True, help="Print the DESIGN.md transfer document on stdout.")
def transfer(model: str, devices: tuple[str, ...], use_fleet: bool, profiles: str | None, dataset: str | None,
             delta_T: float, threshold: float, min_yield: float | None, no_save: bool, uncalibrated: bool, executor: str,
             address: str | None, chips_per_task: int, timeout: float, insecure: bool, compute: str | None,
             threads: str | None, as_json: bool) -> None:
    """Map the model onto chip(s) through their calibration and report the accuracy on each.

    \b
    Examples:
      pnndeploy transfer --device chipB
      pnndeploy transfer --fleet --temperature-delta 1 --min-yield 0.9 --json
      pnndeploy transfer --fleet --profiles lots/lot7 --executor ray --address auto
      pnndeploy transfer --device chipB-remote --timeout 5   # a chip behind a station (its profile's backend)
      pnndeploy transfer --fleet --uncalibrated              # mapped through the nominal device (in silico)
    """
    from pathlib import Path

    from pnndeploy.deploy.transfer import transfer_report
    from pnndeploy.report.tables import render_transfer

    fraction("--threshold", threshold)
    fraction("--min-yield", min_yield)
    if not math.isfinite(delta_T):
        raise PnnError(f"--temperature-delta {delta_T} is not a finite number of kelvin")
    check_executor(executor, address)
    where = resolve_compute_options(compute, threads)
    with _cluster(executor, address):       # one Ray session maps (on the workers) and evaluates
        prepared = _prepare_with_progress(model, devices, use_fleet, profiles, dataset,
                                          None if no_save else Path("deployments"), timeout, insecure, where,
                                          calibrated=not uncalibrated,
                                          ray=(executor, address, chips_per_task))
        with prepared, _measuring(prepared, 1):
            report = transfer_report(prepared, delta_T=delta_T, threshold=threshold, executor=executor,
                                     address=address, chips_per_task=chips_per_task)
    if as_json:
        print_json({**report.to_json(), **({"mapped_through": "nominal device"} if uncalibrated else {})})
    else:
        render_transfer(report.to_json())
        if uncalibrated:
            click.echo("mapped through the nominal device, not each chip's calibration (--uncalibrated); no "
                       "deployment written")
    if min_yield is not None and report.fleet is None:
        click.echo("pnndeploy: --min-yield needs at least one simulated chip to evaluate; every chip given is real",
                   err=True)
        sys.exit(1)
    if min_yield is not None and report.fleet.yield_ < min_yield:
        click.echo(f"pnndeploy: yield {report.fleet.yield_:.3f} is below --min-yield {min_yield}", err=True)
        sys.exit(1)


def _cluster(executor: str, address: str | None) -> Any:
    """A Ray session for the command's duration with ``--executor ray`` (mapping and evaluation share it)."""
    import contextlib

    if executor != "ray":
        return contextlib.nullcontext()
    from pnndeploy.deploy.executors import ray_session

    return ray_session(address)


def _prepare_with_progress(model: str, devices: Any, use_fleet: bool, directory: Any, dataset: str | None,
                           save_dir: Any, timeout: float, insecure: bool, compute: Any, calibrated: bool = True,
                           ray: tuple[str, str | None, int] | None = None) -> Any:
    """``ray``: (executor, address, chips per task) where the chips are mapped (default: in this process)."""
    from pnndeploy.deploy.transfer import prepare_fleet

    with progress_bar() as progress:
        task = progress.add_task("mapping onto chips", total=None)
        return prepare_fleet(model, devices, use_fleet, directory, dataset, save_dir,
                             on_device=lambda name: progress.update(task, advance=1,
                                                                     description=f"mapped {name}"),
                             timeout=timeout, insecure=insecure, compute=compute, calibrated=calibrated,
                             **({} if ray is None else dict(zip(("executor", "address", "chips_per_task"), ray))))


class _measuring:
    """A progress bar over the samples streamed through the chips behind a backend (``passes`` test sets each)."""

    def __init__(self, prepared: Any, passes: int) -> None:
        self.prepared, self.passes, self.display = prepared, passes, None

    def __enter__(self) -> "_measuring":
        if self.prepared.hardware:
            self.display = progress_bar()
            self.display.__enter__()
            samples = len(self.prepared.data.y)
            for name, board in self.prepared.hardware.items():
                task = self.display.add_task(f"measuring {name}", total=self.passes * samples)
                board.progress = lambda n, task=task: self.display.advance(task, n)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.display is not None:
            self.display.__exit__(*exc)


# ---------------------------------------------------------------------------------------------- audit
def _all_axes() -> list[Any]:
    """Every perturbation axis of every platform, one per option stem, in declaration order."""
    from pnndeploy.platforms import PLATFORMS

    stems: dict[str, Any] = {}
    for platform in PLATFORMS.values():
        for axis in platform.axes:
            stems.setdefault(axis.flag or axis.name, axis)
    return list(stems.values())


def _axis_options(func: Any) -> Any:
    """--STEM LO:HI:STEP and --require-STEM R for every axis a platform declares (temperature and ageing for all)."""
    for axis in reversed(_all_axes()):
        stem = axis.flag or axis.name
        everyone = axis.kind != "setup"
        func = click.option(f"--require-{stem}", f"require_{stem.replace('-', '_')}", type=float,
                            default=axis.require if everyone else None, show_default=everyone,
                            metavar=axis.units.upper() if axis.units not in ("1", "") else "R",
                            help=("Pass only if every chip stays above the threshold for DAYS days after "
                                  "calibration" if axis.kind == "ageing" else
                                  f"Pass only if every chip stays above the threshold within ±{axis.units}"
                                  if everyone else
                                  f"Setups with this axis: pass only if every setup stays above the threshold within "
                                  f"{axis.label} {axis.centre:g} ± R (default {axis.require:g})")
                            + ".")(func)
        func = click.option(f"--{stem}", f"sweep_{stem.replace('-', '_')}", default=axis.sweep if everyone else None,
                            show_default=everyone, metavar="LO:HI:STEP",
                            help=axis.help if everyone else f"Setups with this axis: {axis.help} (default "
                                                            f"{axis.sweep}).")(func)
    return func


@main.command()
@_devices_options
@_axis_options
@click.option("--draws", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Random ageing walks per device (the median is reported).")
@click.option("--threshold", type=float, default=None,
              help="Accuracy every chip must keep; default: the model's nominal accuracy minus 0.05.")
@click.option("--compensation", type=click.Choice(list(COMPENSATIONS)), default=None,
              help="How the deployment re-fits the drift at run time, from a 32-input reference measurement (no "
                   "labels): " + "; ".join(f"{c.name} ({c.summary})" for c in COMPENSATIONS.values()) + ". The "
                   "temperature sweep is reported as programmed and with bias always; this "
                   "picks the one the verdict uses. Default: what the model was trained for (spec-sat's).")
@click.option("--drift-compensation/--no-drift-compensation", default=None,
              help="The same as --compensation bias / none.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write accuracy-vs-drift plots (PNG).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Write a Markdown report (tables, and the plot if --plot is given).")
@click.option("--json", "as_json", is_flag=True, help="Print the DESIGN.md audit document on stdout.")
def audit(model: str, devices: tuple[str, ...], use_fleet: bool, profiles: str | None, dataset: str | None,
          draws: int, threshold: float | None, compensation: str | None, drift_compensation: bool | None,
          plot: str | None, report_path: str | None, timeout: float, insecure: bool, compute: str | None,
          threads: str | None, as_json: bool, **axes: Any) -> None:
    """Check drift robustness: accuracy along every axis the chips drift on (temperature, days since
    calibration, and a setup's misalignment). Exit 1 when it fails.

    \b
    Examples:
      pnndeploy audit --fleet
      pnndeploy audit --device chipB --temperature -1:1:0.1 --require-temperature 0.5 --plot audit.png
      pnndeploy audit --fleet --threshold 0.9 --report audit.md --plot audit.png --json
      pnndeploy audit --fleet --compensation gain-bias --require-temperature 1
      pnndeploy audit --model models/fs.onnx --fleet --require-shift 1     (a free-space model: its setups)
    """
    from pnndeploy.deploy.audit import SweepRange, audit as run, audit_passes, axis_sweeps, model_compensation
    from pnndeploy.formats.onnx_io import load_model
    from pnndeploy.platforms import get_platform
    from pnndeploy.report.tables import render_audit

    where = resolve_compute_options(compute, threads)
    if plot is not None and not plot.lower().endswith(".png"):
        raise PnnError(f"--plot {plot}: the audit plot is a PNG; give a file name ending in .png")
    if compensation is not None and drift_compensation is not None:
        raise PnnError("give --compensation or --drift-compensation/--no-drift-compensation, not both")
    if drift_compensation is not None:
        compensation = "bias" if drift_compensation else "none"
    fraction("--threshold", threshold)
    stems = [a.flag or a.name for a in _all_axes()]
    for stem in stems:                  # the grids' syntax, before anything is read
        text = axes[f"sweep_{stem.replace('-', '_')}"]
        if text is not None:
            SweepRange.parse(text, f"--{stem}")
    for path, flag, example in ((plot, "--plot", "audit.png"), (report_path, "--report", "audit.md")):
        if path:
            check_output_file(path, flag, example)
    loaded = load_model(model)
    sweeps = axis_sweeps(get_platform(loaded.platform),
                         {stem: axes[f"sweep_{stem.replace('-', '_')}"] for stem in stems},
                         {stem: axes[f"require_{stem.replace('-', '_')}"] for stem in stems})
    prepared = _prepare_with_progress(model, devices, use_fleet, profiles, dataset, None, timeout, insecure, where)
    strategy = compensation or model_compensation(loaded.metadata)
    with prepared, progress_bar() as progress:
        kinds = ", ".join(dict.fromkeys(s.axis.label if s.axis.kind != "setup" else "misalignment" for s in sweeps))
        task = progress.add_task(f"sweeping {kinds}", total=audit_passes(sweeps, draws))
        result = run(prepared, sweeps, threshold, draws, lambda n: progress.advance(task, n), strategy)
    doc = result.to_json()
    if plot:
        from pnndeploy.report.plots import plot_audit

        plot_audit(doc, plot)
        doc["plot"] = plot
    if report_path:
        from pnndeploy.report.tables import write_audit_markdown

        write_audit_markdown(doc, report_path, plot)
        doc["report"] = report_path
    if as_json:
        print_json(doc)
    else:
        render_audit(doc)
    if not result.passed:
        sys.exit(1)

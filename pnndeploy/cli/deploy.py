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
@executor_options
@click.option("--chips-per-task", type=click.IntRange(1, None), default=512, show_default=True,
              help="With --executor ray: simulated chips evaluated by one Ray task.")
@click.option("--json", "as_json", is_flag=True, help="Print the DESIGN.md transfer document on stdout.")
def transfer(model: str, devices: tuple[str, ...], use_fleet: bool, profiles: str | None, dataset: str | None,
             delta_T: float, threshold: float, min_yield: float | None, no_save: bool, executor: str,
             address: str | None, chips_per_task: int, timeout: float, insecure: bool, compute: str | None,
             threads: str | None, as_json: bool) -> None:
    """Map the model onto chip(s) through their calibration and report the accuracy on each.

    \b
    Examples:
      pnndeploy transfer --device chipB
      pnndeploy transfer --fleet --temperature-delta 1 --min-yield 0.9 --json
      pnndeploy transfer --fleet --profiles lots/lot7 --executor ray --address auto
      pnndeploy transfer --device chipB-remote --timeout 5   # a chip behind a station (its profile's backend)
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
    prepared = _prepare_with_progress(model, devices, use_fleet, profiles, dataset,
                                      None if no_save else Path("deployments"), timeout, insecure, where)
    with prepared, _measuring(prepared, 1):
        report = transfer_report(prepared, delta_T=delta_T, threshold=threshold, executor=executor,
                                 address=address, chips_per_task=chips_per_task)
    if as_json:
        print_json(report)
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
                           save_dir: Any, timeout: float, insecure: bool, compute: Any) -> Any:
    from pnndeploy.deploy.transfer import prepare_fleet

    with progress_bar() as progress:
        task = progress.add_task("mapping onto chips", total=None)
        return prepare_fleet(model, devices, use_fleet, directory, dataset, save_dir,
                             on_device=lambda name: progress.update(task, advance=1,
                                                                     description=f"mapped {name}"),
                             timeout=timeout, insecure=insecure, compute=compute)


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
@click.option("--rotation", default=None, metavar="LO:HI:STEP",
              help="Free-space setups: rotation sweep, degrees from the calibrated setup (default -4:4:0.5).")
@click.option("--shift", default=None, metavar="LO:HI:STEP",
              help="Free-space setups: shift sweep, mask pixels along x and, separately, along y (default -4:4:0.5).")
@click.option("--scale", default=None, metavar="LO:HI:STEP",
              help="Free-space setups: magnification sweep, relative to the calibrated setup (default 0.8:1.2:0.025).")
@click.option("--require-rotation", type=float, default=None, metavar="DEG",
              help="Free-space setups: pass only if every setup stays above the threshold within ±DEG (default 2).")
@click.option("--require-shift", type=float, default=None, metavar="PX",
              help="Free-space setups: ... within ±PX along x and along y (default 2).")
@click.option("--require-scale", type=float, default=None, metavar="FRAC",
              help="Free-space setups: ... within a magnification of 1 ± FRAC (default 0.1).")
@click.option("--drift-compensation/--no-drift-compensation", default=None,
              help="Judge the temperature sweep with drift compensation: at each temperature every chip re-fits "
                   "one common control bias from a 32-input reference measurement (no labels). Both sweeps are "
                   "always reported; this picks the one the verdict uses. Default: what the model was trained "
                   "for (on for spec-sat --drift-compensation, off otherwise).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write accuracy-vs-drift plots (PNG).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Write a Markdown report (tables, and the plot if --plot is given).")
@click.option("--json", "as_json", is_flag=True, help="Print the DESIGN.md audit document on stdout.")
def audit(model: str, devices: tuple[str, ...], use_fleet: bool, profiles: str | None, dataset: str | None,
          temperature: str, days: str, draws: int, threshold: float | None, require_temperature: float,
          require_days: float, rotation: str | None, shift: str | None, scale: str | None,
          require_rotation: float | None, require_shift: float | None, require_scale: float | None,
          drift_compensation: bool | None, plot: str | None, report_path: str | None,
          timeout: float, insecure: bool, compute: str | None, threads: str | None, as_json: bool) -> None:
    """Check drift robustness: accuracy vs temperature and vs days since calibration (and, for free-space
    setups, vs rotation, shift and magnification). Exit 1 when it fails.

    \b
    Examples:
      pnndeploy audit --fleet
      pnndeploy audit --device chipB --temperature -1:1:0.1 --require-temperature 0.5 --plot audit.png
      pnndeploy audit --fleet --threshold 0.9 --report audit.md --plot audit.png --json
      pnndeploy audit --fleet --drift-compensation --require-temperature 1
      pnndeploy audit --model models/fs.onnx --fleet --require-shift 1     (a free-space model: its setups)
    """
    from pnndeploy.deploy.audit import SweepRange, audit_passes, axis_sweeps, run_audit
    from pnndeploy.formats.onnx_io import load_model
    from pnndeploy.platforms import get_platform
    from pnndeploy.report.tables import render_audit

    where = resolve_compute_options(compute, threads)
    if plot is not None and not plot.lower().endswith(".png"):
        raise PnnError(f"--plot {plot}: the audit plot is a PNG; give a file name ending in .png")
    t_range = SweepRange.parse(temperature, "--temperature")
    d_range = SweepRange.parse(days, "--days")
    fraction("--threshold", threshold)
    if plot:
        check_output_file(plot, "--plot", "audit.png")
    if report_path:
        check_output_file(report_path, "--report", "audit.md")
    platform = get_platform(load_model(model).platform)
    axes = axis_sweeps(platform, {"rotation_deg": rotation, "shift_x_px": shift, "shift_y_px": shift, "scale": scale},
                       {"rotation_deg": require_rotation, "shift_x_px": require_shift, "shift_y_px": require_shift,
                        "scale": require_scale},
                       {"rotation_deg": "--rotation", "shift_x_px": "--shift", "shift_y_px": "--shift",
                        "scale": "--scale", "require-rotation_deg": "--require-rotation",
                        "require-shift_x_px": "--require-shift", "require-shift_y_px": "--require-shift",
                        "require-scale": "--require-scale"})
    prepared = _prepare_with_progress(model, devices, use_fleet, profiles, dataset, None, timeout, insecure, where)
    total = audit_passes(t_range, d_range, require_temperature, require_days, draws, axes)
    what = "temperature, ageing and misalignment" if axes else "temperature and ageing"
    with prepared, progress_bar() as progress:
        task = progress.add_task(f"sweeping {what}", total=total)
        doc = run_audit(prepared, t_range, d_range, threshold=threshold, require_temperature=require_temperature,
                        require_days=require_days, draws=draws, progress=lambda n: progress.advance(task, n),
                        drift_compensation=drift_compensation, axes=axes)
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
    if not doc["passed"]:
        sys.exit(1)

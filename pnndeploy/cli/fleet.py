"""`pnndeploy fleet make|list` and `pnndeploy profile show|validate`: simulated chips and their profiles."""

from __future__ import annotations

import sys

import click

from pnndeploy.cli.common import (FloatRange, check_output_dir, max_faulty_option, platform_option, print_json,
                                  profiles_option, progress_bar)
from pnndeploy.cli.group import main
from pnndeploy.errors import PnnError


# ---------------------------------------------------------------------------------------------- fleet
@main.group()
def fleet() -> None:
    """Simulated chips: generate a fleet from a process spec, list the profiles."""


@fleet.command("make")
@platform_option("Platform of the chips: picks the default --process and --out")
@click.option("--process", "process_path", default=None, type=click.Path(dir_okay=False),
              help="Process spec (YAML) with the spreads of every quantity (default: the platform's "
                   "default fleet folder's process.yaml, e.g. device_profiles/process.yaml).")
@click.option("--count", type=click.IntRange(1, 10000), default=8, show_default=True, help="Number of chips.")
@click.option("--prefix", default="chip", show_default=True, help="Chip names: PREFIX + A, B, … Z, AA, …")
@click.option("--out", "out_dir", default=None,
              help="Folder to write them to (default: the platform's default fleet folder, e.g. device_profiles).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Fleet seed; each chip draws from its own stream derived from it and its name.")
@click.option("--json", "as_json", is_flag=True, help="Print the written paths as JSON.")
def fleet_make(platform: str | None, process_path: str | None, count: int, prefix: str, out_dir: str | None,
               seed: int, as_json: bool) -> None:
    """Generate simulated chips (fabrication truth + calibration) as HDF5 profiles.

    \b
    Example:
      pnndeploy fleet make --count 64 --prefix lot7- --out profiles/lot7 --seed 3
    """
    from pathlib import Path

    from pnndeploy.formats.process_spec import load_process
    from pnndeploy.formats.profile_folder import check_device_name
    from pnndeploy.platforms import DEFAULT_PLATFORM, get_platform
    from pnndeploy.simulation.fabrication import chip_names, make_fleet

    for name in dict.fromkeys(chip_names(1, prefix) + chip_names(count, prefix)[-1:]):
        try:
            check_device_name(name)
        except PnnError as exc:
            reason = str(exc).split(";")[0]
            shown = prefix if len(prefix) <= 40 else prefix[:40] + "..."
            raise PnnError(f"--prefix {shown!r} makes chip names that are refused ({reason}); "
                           "use letters, digits, '_', '.' or '-', e.g. --prefix lot7-") from None
    def default_dir(name: str) -> Path:
        return Path("device_profiles") / get_platform(name).profiles_subdir

    process_path = process_path or str(default_dir(platform or DEFAULT_PLATFORM) / "process.yaml")
    process = load_process(process_path)
    if platform is not None and process["platform"] != platform:
        raise PnnError(f"--process {process_path} is a {process['platform']} process but --platform is {platform}; "
                       "give a process file of that platform or drop --platform")
    out_dir = out_dir or str(default_dir(process["platform"]))   # never another platform's fleet folder
    check_output_dir(out_dir, "--out")
    with progress_bar() as progress:
        task = progress.add_task("writing profiles", total=count)
        paths = make_fleet(process, count, prefix, seed, out_dir,
                           progress=lambda i, n, name: progress.update(task, completed=i))
    kept = _keep_process(process_path, out_dir)
    if as_json:
        print_json({"profiles": [str(p) for p in paths], "process": process["name"], "seed": seed,
                    "process_copy": kept})
    else:
        click.echo(f"wrote {len(paths)} profiles to {out_dir} ({paths[0].stem} … {paths[-1].stem})")


def _keep_process(source: str, out_dir: str) -> str | None:
    """Copy the process spec beside the chips it made, as ``process.yaml`` (spec-SAT and the demo train for a
    fleet folder's process.yaml); an existing one of other content is kept, with a warning.  Returns the copy."""
    from pathlib import Path

    from pnndeploy.atomic import write_bytes_atomic

    target, data = Path(out_dir) / "process.yaml", Path(source).read_bytes()
    if target.exists():
        if target.read_bytes() != data:
            click.echo(f"pnndeploy: warning: kept {target}, which differs from --process {source}; spec-SAT and "
                       "the demo read it as this folder's process", err=True)
        return str(target)
    write_bytes_atomic(target, data)
    return str(target)


@fleet.command("list")
@profiles_option
@platform_option("List this platform's default fleet when --profiles is not given")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def fleet_list(profiles: str | None, platform: str | None, as_json: bool) -> None:
    """List the device profiles of the profiles folder.

    \b
    Example:
      pnndeploy fleet list --profiles device_profiles
    """
    from pnndeploy.formats.profile_folder import list_profiles, profiles_dir
    from pnndeploy.formats.profiles import profile_summary, read_profile
    from pnndeploy.report.tables import render_fleet_list

    directory = profiles_dir(profiles, platform)
    rows = [profile_summary(read_profile(path)) for path in list_profiles(directory)]
    if as_json:
        print_json({"profiles_dir": str(directory), "devices": rows})
    else:
        render_fleet_list(str(directory), rows)


@main.group()
def profile() -> None:
    """Look at one device profile: show it, validate a file, import a lab's calibration into it."""


@profile.command("show")
@click.argument("name")
@profiles_option
@platform_option("Look in this platform's default fleet when --profiles is not given")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def profile_show(name: str, profiles: str | None, platform: str | None, as_json: bool) -> None:
    """Show a device's array, calibration age and (simulated chips) its calibration error.

    \b
    Example:
      pnndeploy profile show chipB
    """
    from pnndeploy.formats.profile_folder import profiles_dir, resolve_device
    from pnndeploy.formats.profiles import profile_summary, read_profile
    from pnndeploy.report.tables import render_profile

    summary = profile_summary(read_profile(resolve_device(name, profiles_dir(profiles, platform))))
    if as_json:
        print_json(summary)
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
    from pnndeploy.backends.credentials import plain_http_problem
    from pnndeploy.formats.profile_schema import validate_profile
    from pnndeploy.formats.profiles import read_profile

    problems = validate_profile(path)
    backend = None if problems else read_profile(path).backend
    if backend is not None:      # valid, but it would send a credential in clear text: a problem to report here
        problem = plain_http_problem(backend.kind, backend.address, backend.options)
        problems += [f"'backend' {problem}"] if problem else []
    if as_json:
        print_json({"path": path, "valid": not problems, "problems": problems})
    elif not problems:
        click.echo(f"{path}: valid")
    if problems:
        if not as_json:
            click.echo(f"pnndeploy: error: profile {path}: " + "; ".join(problems), err=True)
        sys.exit(2)


@profile.command("import")
@click.argument("device")
@click.argument("file", type=click.Path(dir_okay=False))
@profiles_option
@click.option("--max-residual", type=FloatRange(0, None, min_open=True), default=0.02, show_default=True,
              help="Sweeps: refuse the calibration when any device's rms fit residual exceeds this (weight units).")
@max_faulty_option
@click.option("--temperature", type=float, default=None, metavar="C",
              help="Temperature of the lab's measurement, degrees Celsius (default: the profile's calibration's).")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Write the updated profile here instead of replacing DEVICE's.")
@click.option("--json", "as_json", is_flag=True, help="Print the import document on stdout.")
def profile_import(device: str, file: str, profiles: str | None, max_residual: float, max_faulty: float,
                   temperature: float | None, out: str | None, as_json: bool) -> None:
    """Import a lab's calibration of DEVICE from FILE (CSV with a header, or NPZ): fitted parameters or sweeps.

    Fitted parameters: columns row, col, <field>_<unit> for every calibrated field (rings:
    resonance_offset_nm, gamma_nm, a_1).  Sweeps: row, col, setting_nm, measured_1, fitted per
    device as `calibrate` fits.  Every device once (parameters) or over the same settings (sweeps);
    any bad cell, device or fit writes nothing (exit 2).  The old calibration is kept in
    calibration_history, and the new one records the file's name and sha256.

    \b
    Examples:
      pnndeploy profile import chipB examples/calibration/chipB_parameters.csv
      pnndeploy profile import chipB lab_sweeps.csv --out chipB-lab.h5 --json
    """
    from pnndeploy.cli.chip import recalibration_source
    from pnndeploy.deploy.calibration import recalibrated
    from pnndeploy.deploy.calibration_import import import_calibration, import_doc
    from pnndeploy.formats.profile_schema import field_units
    from pnndeploy.formats.profiles import write_profile
    from pnndeploy.platforms import get_platform
    from pnndeploy.report.tables import faulty_line

    path, record = recalibration_source(device, profiles, out, temperature)
    result, table, kind = import_calibration(record, file, max_residual, temperature, max_faulty=max_faulty)
    target = out or str(path)
    write_profile(recalibrated(record, result), target)
    doc = import_doc(result, table, kind, field_units(get_platform(record.platform)), target)
    if as_json:
        print_json(doc)
    else:
        fields = ", ".join(f"{k} {v['mean']:.4g} ± {v['std']:.2g} {v['units']}" for k, v in doc["fields"].items())
        click.echo(f"wrote {target}: {record.device_id} calibrated from {table.name} ({kind}, {doc['entries']} "
                   f"lines; {fields}); the old calibration is kept in calibration_history")
        click.echo(faulty_line(doc["faulty"]))

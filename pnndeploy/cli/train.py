"""`pnndeploy train` and `pnndeploy inspect`: make a model file, and look inside one."""

from __future__ import annotations

from typing import Any

import click

from pnndeploy.cli.common import (check_output_file, compute_options, platform_option, print_json, progress_bar,
                                  resolve_compute_options)
from pnndeploy.cli.group import main
from pnndeploy.errors import ConfigError, PnnError
from pnndeploy.platforms import PLATFORMS


# ---------------------------------------------------------------------------------------------- train
def _per_platform(value: Any) -> str:
    """A per-platform figure for help texts: "VALUE UNITS (NAME), ..."."""
    return ", ".join(f"{value(p)} {p.control_units} ({name})" for name, p in sorted(PLATFORMS.items()))


@main.command()
@platform_option("What the on-chip layers are; its controls are what SAT and noise-aware training train")
@click.option("--dataset", default=None, metavar="SPEC",
              help="digits (default, scikit-learn's handwritten digits), iris, mnist:DIR (IDX files), "
                   "npz:PATH (arrays X, y, optional X_test, y_test).")
@click.option("--method", type=click.Choice(["sat", "spec-sat", "standard", "noise-aware"]), default=None,
              help="spec-sat (default): SAT over the perturbations of the fleet's process spec (noise of the "
                   "spec's sigma, the worst common-mode drift, radius 2 sigma; see --robust-to); sat: "
                   "sharpness-aware training on the physical controls (ring detunings, mesh phases) with a "
                   "hand-set --rho; standard: the paper's baseline, trains W in [-1, 1] directly and maps it at "
                   "export; noise-aware: Gaussian noise on the controls.")
@click.option("--epochs", type=int, default=None, help="Passes over the training set (default 30).")
@click.option("--batch-size", type=int, default=None, help="Samples per step (default 32).")
@click.option("--lr", type=float, default=None, help="Adam learning rate (default 0.01).")
@click.option("--seed", type=int, default=None, help="Seed for the split, the init and the shuffling (default 0).")
@click.option("--hidden", type=str, default=None, metavar="W[,W...]",
              help="Hidden layer widths, comma-separated (default 128 for spec-sat; 32, round 1's default, for "
                   "the other methods, so their results reproduce).")
@click.option("--conv", type=str, default=None, metavar="C[,C...]",
              help="A digital conv front end: channels per stage (3x3 conv, ReLU, 2x2 max-pool), e.g. 8,16 for "
                   "28x28 images; the on-chip layers follow it. Needs image data (digits, digits28, mnist:DIR).")
@click.option("--onchip", type=int, default=None, metavar="N",
              help="Put only the last N linear layers on the chip (the paper: its last two); the earlier ones "
                   "run in electronics. Default 0: every linear layer on chip.")
@click.option("--rho", type=float, default=None,
              help="SAT radius: the norm of the perturbation of all controls together, in control units "
                   f"({', '.join(f'{p.control_units} for {n}' for n, p in sorted(PLATFORMS.items()))}; relative "
                   "when --adaptive). Default 0.1. --rho 0 takes the same steps as plain training on the "
                   "controls (at twice the cost: both passes still run).")
@click.option("--adaptive/--no-adaptive", default=None,
              help="Adaptive SAT (ASAM): scale the perturbation by |control| (default off).")
@click.option("--perturb", type=click.Choice(["onchip", "all"]), default=None,
              help="Which parameters SAT perturbs: the on-chip controls (default) or also gains and biases.")
@click.option("--drift-budget", type=float, default=None, metavar="K",
              help="SAT only: in each ascent step also shift every control by the worse of ±k·K "
                   f"(a common-mode temperature change of K kelvin; k = {_per_platform(lambda p: p.nominal_drift)} "
                   "per K), default 0 (off).")
@click.option("--sat-every", type=int, default=None, metavar="K",
              help="Efficient SAT: compute a fresh ascent direction every K steps and reuse it in between "
                   "(one forward/backward instead of two). Default 1: full SAT; 5 matched its fleet accuracy "
                   "at 0 K over five seeds at about 0.7x its time (README, Performance).")
@click.option("--ascent", type=click.Choice(["gradient", "momentum"]), default=None,
              help="sat and spec-sat: where the ascent points. gradient (default): a clean forward/backward "
                   "first (two passes per step); momentum: Adam's running mean of the gradients, no extra pass "
                   "(Momentum-SAM; the cheap efficient SAT, README Performance).")
@click.option("--noise", type=float, default=None,
              help="Std of Gaussian noise on each control at every training step, control units: noise-aware "
                   f"(default {_per_platform(lambda p: p.default_noise)}) and sat (default 0, off; with "
                   "--drift-budget it covers random errors too).")
@click.option("--robust-to", type=click.Path(dir_okay=False), default=None, metavar="PROCESS.yaml",
              help="spec-sat: the process spec of the fleet to deploy on; its calibration error, ageing rate, "
                   "drift coefficient and spread and DAC step make the perturbation set (default: the platform's "
                   "default fleet's, device_profiles[/PLATFORM]/process.yaml).")
@click.option("--require-temperature", type=float, default=None, metavar="K",
              help="spec-sat: deployment range of the common-mode temperature change, ±K (default 1, as audit).")
@click.option("--require-days", type=float, default=None, metavar="D",
              help="spec-sat: days after calibration the model must last: the ageing walk's spread (default 30).")
@click.option("--robust-z", type=float, default=None, metavar="Z",
              help="spec-sat: the ascent guards the Z-sigma quantile of the independent errors, rho = Z * sigma "
                   "(default 2: the 97.7th-percentile chip).")
@click.option("--drift-compensation/--no-drift-compensation", default=None,
              help="spec-sat: the deployment re-fits a common bias per chip (audit --drift-compensation), so the "
                   "common-mode shift is cancelled and only its device-to-device spread is trained against "
                   "(default on; --no-drift-compensation trains for chips run as programmed, against the worst "
                   "of -K, 0, +K).")
@click.option("--robust-rotation", type=float, default=None, metavar="DEG",
              help="Free-space setups, sat and spec-sat: FD-SAT trains for setups rotated by up to ±DEG (default 2).")
@click.option("--robust-shift", type=float, default=None, metavar="PX",
              help="Free-space setups, sat and spec-sat: ... shifted by up to ±PX mask pixels along x and y (default 2).")
@click.option("--robust-scale", type=float, default=None, metavar="FRAC",
              help="Free-space setups, sat and spec-sat: ... magnified by 1 ± FRAC (default 0.1).")
@click.option("--misalignment-rho", type=float, default=None, metavar="R",
              help="Free-space setups: FD-SAT's finite-difference ascent from a random misalignment of that box, in box "
                   "half-widths (default 0.5; 0: the random draw only).")
@click.option("--in-situ", "in_situ", default=None, metavar="DEVICE",
              help="Train on a chip: every forward pass of the on-chip layers is measured on DEVICE (through its "
                   "profile's backend; a simulated profile without one is played in-process), the backward pass "
                   "goes through the digital model. --method standard: PAT; --method sat: SAT + PAT.")
@click.option("--in-situ-profiles", "in_situ_profiles", default=None, metavar="DIR",
              help="Folder of the --in-situ device's profile (default: the platform's profiles folder).")
@click.option("--timeout", type=click.FloatRange(0.1, 3600), default=10.0, show_default=True, metavar="S",
              help="--in-situ: seconds one exchange with the chip's station may take.")
@click.option("--insecure", is_flag=True,
              help="--in-situ: allow plain http:// to a station off this machine (README, Security).")
@compute_options
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML file of defaults for any of these options; flags given on the command line win.")
@click.option("--out", default=None, metavar="FILE.onnx", help="Where to write the model (default models/model.onnx).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout and nothing else there.")
@click.pass_context
def train(ctx: click.Context, config_path: str | None, as_json: bool, in_situ: str | None,
          in_situ_profiles: str | None, timeout: float, insecure: bool, **flags: Any) -> None:
    """Train one model against the nominal chip and export it as ONNX.

    \b
    Example:
      pnndeploy train --seed 0 --out models/spec.onnx          (spec-sat, drift-compensated deployment)
      pnndeploy train --method sat --seed 0 --out models/sat.onnx
      pnndeploy train --method standard --epochs 30 --json
      pnndeploy train --no-drift-compensation --require-temperature 1 --robust-to device_profiles/process.yaml
      pnndeploy train --dataset digits28 --conv 8,16 --hidden 64 --onchip 2     (the paper's on-chip FC layers)
      pnndeploy train --method sat --in-situ chipA-remote --out models/sat-pat.onnx   (SAT + PAT on a chip)
      pnndeploy train --dataset mnist:data/mnist --conv 6,16 --hidden 120,84 --onchip 2 --compute cuda
    """
    from pnndeploy.training.config import TrainConfig, load_config

    settings: dict[str, Any] = load_config(config_path) if config_path else {}
    from_file = set(settings)
    for name, value in flags.items():
        if value is not None and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            settings[name] = value
            from_file.discard(name)
    for key in ("hidden", "conv"):
        if isinstance(settings.get(key), str):
            settings[key] = _parse_widths(settings[key], f"--{key}")
    dataset_spec = settings.pop("dataset", "digits")
    out = settings.pop("out", "models/model.onnx")
    compute_spec, threads = settings.pop("compute", None), settings.pop("threads", None)
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
    check_output_file(out, "--out")
    compute = resolve_compute_options(compute_spec, threads)
    chip = _open_in_situ(in_situ, in_situ_profiles, config.platform, timeout, insecure) if in_situ else None
    try:
        summary = _run_training(dataset_spec, config, out, chip, compute)
    finally:
        if chip is not None:
            chip.backend.close()
    if as_json:
        print_json(summary.to_json())
        return
    from pnndeploy.report.tables import render_train_summary

    render_train_summary(summary)


def _parse_widths(text: str, flag: str = "--hidden") -> list[int]:
    try:
        widths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise PnnError(f"{flag} {text!r}: expected comma-separated integers such as 32 or 64,32") from None
    if not widths:
        raise PnnError(f"{flag} is empty: give at least one width, e.g. {flag} 32")
    return widths


def _open_in_situ(device: str, profiles: str | None, platform: str, timeout: float, insecure: bool = False) -> Any:
    """The chip of ``--in-situ``: its backend opened and checked (or the simulated profile played in-process)."""
    from pnndeploy.backends.simulated import SimulatedChip
    from pnndeploy.deploy.hardware import open_chip
    from pnndeploy.formats.profile_folder import profiles_dir, resolve_device
    from pnndeploy.formats.profiles import read_profile
    from pnndeploy.training.in_situ import InSituChip

    profile = read_profile(resolve_device(device, profiles_dir(profiles, platform)))
    if profile.platform != platform:
        raise PnnError(f"--in-situ {device} is a {profile.platform} chip but the model is trained for {platform}; "
                       f"add --platform {profile.platform} or choose a {platform} chip")
    if profile.backend is None and not profile.simulated:
        raise PnnError(f"--in-situ {device}: the profile names no backend and has no fabrication truth, so there "
                       "is no chip to measure; connect it with `pnndeploy chip connect`")
    backend = open_chip(profile, timeout, insecure) if profile.backend is not None else SimulatedChip(profile=profile)
    return InSituChip(backend, profile)


def _run_training(dataset_spec: str, config: Any, out: str, chip: Any = None, compute: Any = None) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from pnndeploy.data.datasets import load_dataset
    from pnndeploy.training.pipeline import train_and_export

    dataset = load_dataset(dataset_spec, seed=config.seed)
    with progress_bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[status]}"), TimeElapsedColumn(), transient=False) as progress:
        where = f" on chip {chip.profile.device_id}" if chip is not None else ""
        task = progress.add_task(f"train {config.method}{where} on {compute.device}", total=config.epochs,
                                 status="")

        def on_epoch(record: Any) -> None:
            progress.update(task, advance=1,
                            status=f"loss {record.loss:.3f}  train acc {record.train_accuracy:.3f}")

        summary, _ = train_and_export(dataset, config, out, on_epoch=on_epoch, chip=chip, compute=compute)
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
    from pnndeploy.formats.onnx_io import load_model
    from pnndeploy.report.tables import inspect_document, render_inspect

    exported = load_model(model)
    doc = inspect_document(exported)
    if as_json:
        print_json(doc)
    else:
        render_inspect(doc)

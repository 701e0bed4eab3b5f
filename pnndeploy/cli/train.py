"""`pnndeploy train` and `pnndeploy inspect`: make a model file, and look inside one."""

from __future__ import annotations

import types
import typing
from typing import Any

import click

from pnndeploy.cli.common import (FloatRange, check_output_file, compute_options, platform_option, print_json,
                                  progress_bar, resolve_compute_options)
from pnndeploy.cli.group import main
from pnndeploy.errors import ConfigError, PnnError


# ---------------------------------------------------------------------------------------------- train
def _setting_options(func: Any) -> Any:
    """One option per training setting, generated from TrainConfig's fields (help and default written there)."""
    from dataclasses import fields

    from pnndeploy.training.config import TrainConfig
    from pnndeploy.training.methods import METHODS
    from pnndeploy.training.settings import choices_of, described, flag, help_text

    hints = typing.get_type_hints(TrainConfig)
    for f in reversed(fields(TrainConfig)):
        s = described(f)
        if f.name == "platform":
            continue                            # --platform: the option every command shares
        kind = _plain_type(hints[f.name])
        choices = list(METHODS) if f.name == "method" else choices_of(s)
        decls = [f"{flag(f.name)}/--no-{flag(f.name)[2:]}"] if kind is bool else [flag(f.name)]
        text = help_text(f)
        if s.pairs:
            func = click.option(*decls, f.name, multiple=True, metavar=s.metavar, help=text + _options_help())(func)
            continue
        if f.name == "method":
            text = "; ".join(f"{name}{' (default)' if name == f.default else ''}: {m.summary}"
                             for name, m in METHODS.items()) + "."
        value_type = (click.Choice(choices) if choices else str if s.widths else None if kind is bool
                      else click.Path(dir_okay=False) if s.path else kind)
        func = click.option(*decls, f.name, default=None, metavar=s.metavar, help=text, type=value_type)(func)
    return func


def _options_help() -> str:
    """Every platform's options, for `train --help`."""
    from pnndeploy.platforms import PLATFORMS

    listed = [f"{name}: " + "; ".join(o.describe() for o in p.options) for name, p in PLATFORMS.items() if p.options]
    return (" Options: " + " | ".join(listed) + ".") if listed else ""


def _parse_pairs(pairs: tuple[str, ...], name: str) -> dict[str, str]:
    """``("grid=128", ...)`` as {"grid": "128"}; the platform types and checks the values."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"{name} {pair!r}: expected KEY=VALUE, e.g. {name} grid=128")
        parsed[key.strip()] = value.strip()
    return parsed


def _plain_type(hint: Any) -> Any:
    """``float`` for ``float | None``: the type a flag parses."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(k for k in typing.get_args(hint) if k is not type(None))
    return hint


@main.command()
@platform_option("What the on-chip layers are; its controls are what SAT and noise-aware training train")
@click.option("--dataset", default=None, metavar="SPEC",
              help="digits (default, scikit-learn's handwritten digits), digits28, iris, mnist:DIR (IDX files), "
                   "cifar10:DIR (CIFAR-10's binary version: data_batch_1.bin ... test_batch.bin), "
                   "npz:PATH (arrays X, y, optional X_test, y_test).")
@_setting_options
@click.option("--in-situ", "in_situ", default=None, metavar="DEVICE",
              help="Train on a chip: every forward pass of the on-chip layers is measured on DEVICE (through its "
                   "profile's backend; a simulated profile without one is played in-process), the backward pass "
                   "goes through the digital model. --method standard: PAT; --method sat: SAT + PAT.")
@click.option("--in-situ-profiles", "in_situ_profiles", default=None, metavar="DIR",
              help="Folder of the --in-situ device's profile (default: the platform's profiles folder).")
@click.option("--in-situ-programming", "in_situ_programming", type=click.Choice(["calibrated", "as-trained"]),
              default=None, help="--in-situ: program each step's controls through the chip's calibration "
                                 "(calibrated, the default) or as trained, through the nominal device (as-trained: "
                                 "the paper's protocol; on a mesh it skips a fit of every phase at every step).")
@click.option("--timeout", type=FloatRange(0.1, 3600), default=10.0, show_default=True, metavar="S",
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
          in_situ_profiles: str | None, in_situ_programming: str | None, timeout: float, insecure: bool,
          **flags: Any) -> None:
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
      pnndeploy train --dataset digits28 --init-from lenet.onnx --onchip 2 --epochs 5   (bring your own model)
    """
    from pnndeploy.training.config import TrainConfig, load_config

    settings: dict[str, Any] = load_config(config_path) if config_path else {}
    from_file = set(settings)
    file_options = settings.get("platform_options", {})
    for name, value in flags.items():
        if value is not None and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            settings[name] = value
            from_file.discard(name)
    if isinstance(settings.get("platform_options"), tuple):      # the flags add to (and win over) the file's
        settings["platform_options"] = {**file_options,
                                        **_parse_pairs(settings["platform_options"], "--platform-option")}
    from dataclasses import fields

    from pnndeploy.training.settings import described

    for f in fields(TrainConfig):
        if described(f).widths and isinstance(settings.get(f.name), str):
            settings[f.name] = _parse_widths(settings[f.name], f"--{f.name}", described(f).empty_ok)
    init = None
    if settings.get("init_from") is not None:       # the architecture comes from the file
        from pnndeploy.formats.onnx_import import read_network
        from pnndeploy.training.init_from import architecture_settings

        init = read_network(settings["init_from"])
        settings = architecture_settings(init, settings)
    dataset_spec = settings.pop("dataset", "digits")
    out = settings.pop("out", "models/model.onnx")
    compute_spec, threads = settings.pop("compute", None), settings.pop("threads", None)
    try:
        config = TrainConfig(**settings)            # checked on construction
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
    if in_situ_programming and not in_situ:
        raise PnnError(f"--in-situ-programming {in_situ_programming} says how to program a chip trained on, and "
                       "there is none; add --in-situ DEVICE or drop it")
    chip = _open_in_situ(in_situ, in_situ_profiles, config.platform, timeout, insecure,
                         in_situ_programming or "calibrated") if in_situ else None
    try:
        summary = _run_training(dataset_spec, config, out, chip, compute, init)
    finally:
        if chip is not None:
            chip.backend.close()
    if as_json:
        print_json(summary.to_json())
        return
    from pnndeploy.report.tables import render_train_summary

    render_train_summary(summary)


def _parse_widths(text: str, flag: str = "--hidden", empty_ok: bool = False) -> list[int]:
    """``"64,32"`` as [64, 32]; ``none`` is no layer where the setting allows it."""
    if empty_ok and text.strip().lower() in ("none", ""):
        return []
    try:
        widths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise PnnError(f"{flag} {text!r}: expected comma-separated integers such as 32 or 64,32") from None
    if not widths:
        raise PnnError(f"{flag} is empty: give at least one width, e.g. {flag} 32" +
                       (", or none" if empty_ok else ""))
    return widths


def _open_in_situ(device: str, profiles: str | None, platform: str, timeout: float, insecure: bool = False,
                  programming: str = "calibrated") -> Any:
    """The chip of ``--in-situ``: its backend opened and checked (or the simulated profile played in-process),
    mapped through its calibration or, ``as-trained``, through the nominal device."""
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
    if programming == "as-trained":                 # mapped through the drawing, not the calibration
        from pnndeploy.deploy.mapping import uncalibrated

        profile = uncalibrated(profile)
    return InSituChip(backend, profile, programming)


def _run_training(dataset_spec: str, config: Any, out: str, chip: Any = None, compute: Any = None,
                  init: Any = None) -> Any:
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

        summary, _ = train_and_export(dataset, config, out, on_epoch=on_epoch, chip=chip, compute=compute, init=init)
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

"""The `pnndeploy` command line: parse, call, render.  No physics here.

Heavy modules (torch, onnx, h5py) are imported inside the commands so that
`pnndeploy --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from pnndeploy import __version__
from pnndeploy.errors import PnnError


class PnnGroup(click.Group):
    """A click group that turns every PnnError into one line on stderr and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PnnError as exc:
            click.echo(f"pnndeploy: error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("pnndeploy: interrupted; no partial output files were left", err=True)
            sys.exit(130)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


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
                   "(relative when --adaptive). Default 0.1. --rho 0 is plain training on the detunings.")
@click.option("--adaptive/--no-adaptive", default=None,
              help="Adaptive SAT (ASAM): scale the perturbation by |detuning| (default off).")
@click.option("--perturb", type=click.Choice(["onchip", "all"]), default=None,
              help="Which parameters SAT perturbs: the on-chip controls (default) or also gains and biases.")
@click.option("--noise", type=float, default=None,
              help="noise-aware: std of the Gaussian noise on each detuning, nm (default 0.05).")
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
    for name, value in flags.items():
        if value is not None and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            settings[name] = value
    if isinstance(settings.get("hidden"), str):
        settings["hidden"] = _parse_widths(settings["hidden"])
    dataset_spec = settings.pop("dataset", "digits")
    out = settings.pop("out", "models/model.onnx")
    config = TrainConfig(**settings)
    config.validate()
    summary = _run_training(dataset_spec, config, out)
    if as_json:
        _print_json(summary.to_json())
        return
    from pnndeploy.report import render_train_summary

    render_train_summary(summary)


def _parse_widths(text: str) -> list[int]:
    try:
        widths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise PnnError(f"--hidden {text!r}: expected comma-separated integers such as 32 or 64,32") from None
    if not widths:
        raise PnnError("--hidden is empty: give at least one width, e.g. --hidden 32")
    return widths


def _run_training(dataset_spec: str, config: Any, out: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pnndeploy.data import load_dataset
    from pnndeploy.pipeline import train_and_export

    dataset = load_dataset(dataset_spec, seed=config.seed)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                  console=_stderr_console(), transient=False) as progress:
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


if __name__ == "__main__":
    main()

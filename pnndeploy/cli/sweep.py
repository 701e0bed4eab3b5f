"""`pnndeploy sweep GRID.yaml`: train, map and audit every cell of a grid, locally or on Ray."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pnndeploy.cli.common import (check_executor, compute_options, executor_options, print_json, progress_bar,
                                  resolve_compute_options)
from pnndeploy.cli.group import main


@main.command()
@click.argument("grid", type=click.Path(dir_okay=False))
@click.option("--out", default=None, metavar="DIR",
              help="Where the cells, models and table go (default sweeps/<grid name>). Cells already there are "
                   "skipped, so rerunning resumes an interrupted sweep.")
@executor_options
@click.option("--cpus", type=click.IntRange(1, None), default=None,
              help="With --executor ray and no --address: CPUs of the local cluster (default: this machine's "
                   "cores; each cell takes one).")
@compute_options
@click.option("--json", "as_json", is_flag=True, help="Print the results document on stdout.")
def sweep(grid: str, out: str | None, executor: str, address: str | None, cpus: int | None, compute: str | None,
          threads: str | None, as_json: bool) -> None:
    """Run a grid of trainings × fleets × drift sweeps; one table, a CSV, a Pareto plot and the models.

    Each cell (one training setting with one seed) trains, exports, maps onto every fleet and audits
    there. Exit 1 when a cell failed (the others are still run and written).

    \b
    Examples:
      pnndeploy sweep examples/sweep.yaml
      pnndeploy sweep examples/sweep.yaml --executor ray            (a local Ray cluster of this machine)
      pnndeploy sweep big.yaml --executor ray --address auto --json
      pnndeploy sweep big.yaml --executor ray --compute cuda       (one GPU of the cluster per cell)
    """
    from pnndeploy.experiments.sweep import load_sweep, run_sweep

    check_executor(executor, address)
    where = resolve_compute_options(compute, threads)
    spec = load_sweep(grid)
    target = Path(out) if out else Path("sweeps") / spec.name
    total = len(spec.cells())
    with progress_bar() as progress:
        task = progress.add_task(f"sweep {spec.name}", total=total)

        def on_cell(index: int, status: str) -> None:
            progress.update(task, advance=1, description=f"cell {index + 1}/{total}: {status}")

        doc = run_sweep(spec, target, executor=executor, address=address, num_cpus=cpus, on_cell=on_cell,
                        compute=where)
    if as_json:
        print_json(doc)
    else:
        from pnndeploy.report.tables import render_sweep

        render_sweep(doc)
    if doc["counts"]["failed"]:
        click.echo(f"pnndeploy: {doc['counts']['failed']} cell(s) failed; see the table", err=True)
        sys.exit(1)

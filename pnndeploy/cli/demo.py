"""`pnndeploy demo`: the whole story on the embedded defaults."""

from __future__ import annotations

import click

from pnndeploy.cli.common import print_json, profiles_option, progress_bar
from pnndeploy.cli.group import main


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

    from pnndeploy.experiments.demo import DEMO_ENTRIES, run_demo
    from pnndeploy.formats.profile_folder import profiles_dir
    from pnndeploy.training.config import TrainConfig

    epochs = 6 if quick else TrainConfig().epochs
    runs = len(DEMO_ENTRIES) * (seeds or (1 if quick else 3))
    with progress_bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), transient=False) as progress:
        task = progress.add_task("demo", total=runs * (epochs + 2))
        doc = run_demo(out_dir, profiles_dir(profiles), quick=quick, seed=seed, seeds=seeds,
                       status=lambda text: progress.update(task, description=text,
                                                           advance=0 if text.startswith("training") else 1),
                       on_epoch=lambda name, record: progress.advance(task, 1))
    if as_json:
        print_json({"out": out_dir, "threshold": doc["threshold"], "table": doc["table"]})
        return
    from pnndeploy.report.tables import render_demo_table

    render_demo_table(doc["table"], doc["threshold"])
    click.echo(f"report: {out_dir}/report.md (plots and summary.json beside it)")

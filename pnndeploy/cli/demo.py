"""`pnndeploy demo`: the whole story on the embedded defaults."""

from __future__ import annotations

import click

from pnndeploy.cli.common import (compute_options, platform_option, print_json, profiles_option, progress_bar,
                                  resolve_compute_options)
from pnndeploy.cli.group import main


# ----------------------------------------------------------------------------------------------- demo
@main.command()
@platform_option("The chips the story is told on; the fleet is that platform's default one")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="A train config (YAML) whose set-up every method trains in: platform and its options, dataset, "
                   "front end, widths, on-chip split, epochs, batch size, lr (any file of examples/paper/). Its "
                   "method and method settings are not used: each row has its own.")
@click.option("--out", "out_dir", default=None,
              help="Folder for the report (default reports/demo, reports/demo-PLATFORM for another platform).")
@profiles_option
@click.option("--quick", is_flag=True, help="Few epochs and coarse sweeps (well under a minute), for a smoke test.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="First training seed.")
@click.option("--seeds", type=click.IntRange(1, 20), default=None,
              help="Seeds per method, averaged in the table (default 3; 1 with --quick).")
@compute_options
@click.option("--json", "as_json", is_flag=True, help="Print the comparison table as JSON.")
def demo(platform: str | None, config_path: str | None, out_dir: str | None, profiles: str | None, quick: bool, seed: int, seeds: int | None,
         compute: str | None, threads: str | None, as_json: bool) -> None:
    """The whole story: standard vs noise-aware vs SAT vs spec-SAT (as programmed, drift-compensated).

    Trains each on the embedded digits (every method at width 128; or in the set-up of --config), maps it
    onto every chip of the default fleet (or --profiles), audits drift with and without compensation, and writes OUT/report.md,
    OUT/summary.json and the plots.

    \b
    Examples:
      pnndeploy demo --out reports/demo
      pnndeploy fleet make --process examples/paper/mzi64-process.yaml --count 8 --out profiles/mzi64
      pnndeploy demo --config examples/paper/CONFIG.yaml --profiles profiles/mzi64
          (CONFIG: the paper's 64-mode mesh read by intensity; README, "The paper's networks as configs")
    """
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from pnndeploy.experiments.demo import demo_entries, demo_setup, run_demo
    from pnndeploy.formats.profile_folder import profiles_dir
    from pnndeploy.platforms import DEFAULT_PLATFORM
    from pnndeploy.training.config import TrainConfig

    setup: dict = {}
    unused: list[str] = []
    if config_path is not None:
        from pnndeploy.training.config import load_config

        setup, unused = demo_setup(load_config(config_path), platform)
        platform = setup["platform"]
    platform = platform or DEFAULT_PLATFORM
    where = resolve_compute_options(compute, threads)
    out_dir = out_dir or ("reports/demo" if platform == DEFAULT_PLATFORM else f"reports/demo-{platform}")
    epochs = setup.get("epochs", TrainConfig().epochs)
    epochs = min(6, epochs) if quick else epochs
    runs = len(demo_entries(platform)) * (seeds or (1 if quick else 3))
    with progress_bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), transient=False) as progress:
        task = progress.add_task("demo", total=runs * (epochs + 2))
        doc = run_demo(out_dir, profiles_dir(profiles, platform), quick=quick, seed=seed, seeds=seeds, platform=platform,
                       status=lambda text: progress.update(task, description=text,
                                                           advance=0 if text.startswith("training") else 1),
                       on_epoch=lambda name, record: progress.advance(task, 1), compute=where, setup=setup)
    if unused:
        click.echo(f"pnndeploy: note: --config {config_path}: not used by the demo (each row sets its own method and "
                   f"settings; seeds and compute are the demo's flags): {', '.join(unused)}", err=True)
    if as_json:
        print_json({"out": out_dir, "threshold": doc["threshold"], "table": doc["table"]})
        return
    from pnndeploy.report.tables import render_demo_table

    render_demo_table(doc["table"], doc["threshold"])
    click.echo(f"report: {out_dir}/report.md (plots and summary.json beside it)")

"""Pictures of drift robustness (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pnndeploy.atomic import atomic_path
from pnndeploy.report.tables import misalignment_axes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _percent(values: list[float | None]) -> list[float]:
    """Accuracies as percentages; a point that could not be measured (None) is a gap."""
    return [float("nan") if a is None else 100 * a for a in values]


def plot_audit(doc: dict[str, Any], path: str | Path) -> Path:
    """Accuracy vs ΔT and vs days since calibration: a thin line per chip, the fleet mean bold, the threshold dashed."""
    plt = _pyplot()
    extra = misalignment_axes(doc)
    if extra:                                    # a free-space setup: a second row, one panel per misalignment axis
        fig, grid = plt.subplots(2, max(2, len(extra)), figsize=(4.2 * max(2, len(extra)), 8.4),
                                 constrained_layout=True)
        axes = grid[0]
        for ax in grid[0][2:]:
            ax.axis("off")
        for ax, key in zip(grid[1], extra):
            sweep = doc["sweeps"][key]
            for name, acc in sweep["devices"].items():
                ax.plot(sweep["values"], _percent(acc), lw=0.9, alpha=0.6, label=name)
            if sweep["devices"]:
                ax.plot(sweep["values"], _percent(sweep["fleet_mean"]), color="black", lw=2.6, label="fleet mean")
            ax.axhline(100 * doc["threshold"], color="crimson", ls="--", lw=1.2)
            units = "" if sweep["units"] == "1" else f" ({sweep['units']})"
            ax.set_xlabel(f"{sweep['label']}{units}")
            ax.set_ylabel("accuracy (%)")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
    else:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, key, label in ((axes[0], "temperature_K", "ΔT from calibration (K)"),
                           (axes[1], "days", "days since calibration")):
        sweep = doc["sweeps"][key]
        x = sweep["values"]
        for name, acc in sweep["devices"].items():
            ax.plot(x, _percent(acc), lw=0.9, alpha=0.6, label=name)
        if sweep["devices"]:
            ax.plot(x, _percent(sweep["fleet_mean"]), color="black", lw=2.6, label="fleet mean")
        else:
            ax.text(0.5, 0.5, "not measured (chips behind a backend cannot be aged)", ha="center",
                    transform=ax.transAxes, fontsize=9)
        comp = doc["sweeps"].get(f"{key}_compensated")
        if comp is not None:
            ax.plot(x, _percent(comp["fleet_min"]), color="black", lw=1.8, ls=":",
                    label="fleet min, drift-compensated")
        ax.axhline(100 * doc["threshold"], color="crimson", ls="--", lw=1.2, label="threshold")
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    compensated = "temperature_K_compensated" in doc["sweeps"]
    axes[0].set_title(f"temperature drift — {doc['method']}" + (" (dotted: worst chip, drift-compensated)"
                                                               if compensated else ""), fontsize=10)
    axes[1].set_title(f"ageing ({doc['sweeps']['days'].get('draws', 1)} draws, median)")
    axes[1].legend(fontsize=7, ncol=2, loc="lower left")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def plot_comparison(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Fleet-mean accuracy vs ΔT for several models in one picture (the demo's headline plot)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for row in rows:
        t = row["audit"]["sweeps"]["temperature_K"]
        d = row["audit"]["sweeps"]["days"]
        line, = axes[0].plot(t["values"], [100 * a for a in t["fleet_mean"]], lw=2, marker="o", ms=3,
                             label=row["name"])
        comp = row["audit"]["sweeps"].get("temperature_K_compensated")
        if comp is not None:
            axes[0].plot(comp["values"], [100 * a for a in comp["fleet_mean"]], lw=1.3, ls="--",
                         color=line.get_color())
        axes[1].plot(d["values"], [100 * a for a in d["fleet_mean"]], lw=2, marker="o", ms=3, label=row["name"])
    for ax, label in ((axes[0], "ΔT from calibration (K)"), (axes[1], "days since calibration")):
        ax.set_xlabel(label)
        ax.set_ylabel("fleet-mean accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_title("temperature drift, fleet mean (dashed: drift-compensated)")
    axes[1].set_title("ageing, fleet mean")
    axes[0].legend(fontsize=8)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For each (x, y), True when no other point is at least as good in both and better in one (higher is better)."""
    return [not any((a >= x and b >= y) and (a > x or b > y) for a, b in points) for x, y in points]


def plot_pareto(doc: dict[str, Any], path: str | Path) -> Path:
    """A sweep's cells: ideal-chip accuracy against the worst chip under drift (the worst fleet), front joined."""
    plt = _pyplot()
    cells = [c for c in doc["cells"] if c["status"] != "failed"]
    # the worst chip on the sweep each audit was judged on (drift-compensated for a model trained for it)
    points = [(c["ideal"], min(f["min_within_K_compensated" if f["audit_compensated"] else "min_within_K"]
                               for f in c["fleets"].values())) for c in cells]
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(7, 5), constrained_layout=True)
    methods = sorted({c["method"] for c in cells})
    for method in methods:
        xs = [100 * p[0] for p, c in zip(points, cells) if c["method"] == method]
        ys = [100 * p[1] for p, c in zip(points, cells) if c["method"] == method]
        ax.scatter(xs, ys, s=28, label=method, alpha=0.8)
    best = sorted((p for p, on in zip(points, front) if on))
    if best:
        ax.plot([100 * x for x, _ in best], [100 * y for _, y in best], color="black", lw=1.2, ls="--",
                label="Pareto front")
    ax.axhline(100 * doc["threshold"], color="crimson", ls=":", lw=1, label="threshold")
    ax.set_xlabel("ideal-chip accuracy (%)")
    ax.set_ylabel(f"worst chip within ±{doc['require_temperature_K']:g} K, worst fleet, as audited (%)")
    ax.set_title(f"sweep {doc['sweep']}: {len(cells)} cells")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path

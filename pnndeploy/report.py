"""Tables and documents a person (rich tables) or a program (JSON) reads."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table


def _console() -> Console:
    return Console()


def pct(value: float | None) -> str:
    """An accuracy fraction as a percentage, or a dash."""
    return "–" if value is None else f"{100 * value:.1f} %"


def render_train_summary(summary: Any) -> None:
    table = Table(title=f"Trained {summary.method} on {summary.dataset} ({summary.platform})")
    for column in ("train accuracy", "test accuracy", "sharpness (λ_max, 1/nm²)", "seconds"):
        table.add_column(column, justify="right")
    table.add_row(pct(summary.train_accuracy), pct(summary.test_accuracy), f"{summary.sharpness:.4g}",
                  f"{summary.seconds:.1f}")
    console = _console()
    console.print(table)
    if summary.clipped_weights:
        console.print(f"{summary.clipped_weights} weights lay beyond the control range and were clipped at export.")
    console.print(f"model written to [bold]{summary.model}[/bold] (sha256 {summary.model_sha256[:12]}…)")


def inspect_document(model: Any) -> dict[str, Any]:
    """The `inspect --json` document: metadata (without the bulky controls) and per-layer statistics."""
    meta = {k: v for k, v in model.metadata.items() if k != "controls"}
    units = model.platform_params.get("control_units", "")
    layers = []
    for layer in model.layers:
        layers.append({
            "name": layer.name,
            "shape": list(layer.weight.shape),
            "onchip": True,
            "weight_range": [float(layer.weight.min()), float(layer.weight.max())],
            "controls_range": [float(layer.controls.min()), float(layer.controls.max())],
            "controls_units": units,
            "gain_mean": float(np.mean(layer.gain)),
        })
    return {"model": str(model.path), "sha256": model.sha256, "metadata": meta, "layers": layers}


def render_inspect(doc: dict[str, Any]) -> None:
    console = _console()
    meta = doc["metadata"]
    info = Table(title=f"{doc['model']}", show_header=False)
    info.add_column("key", style="bold")
    info.add_column("value")
    for key in ("platform", "method", "rho", "dataset", "seed", "version"):
        info.add_row(key, str(meta.get(key)))
    metrics = meta.get("metrics", {})
    if isinstance(metrics, dict):
        for key, value in metrics.items():
            info.add_row(f"metrics.{key}", f"{value:.4g}" if isinstance(value, float) else str(value))
    info.add_row("input_scaling", _short(meta.get("input_scaling")))
    info.add_row("sha256", doc["sha256"])
    console.print(info)
    layers = Table(title="on-chip layers")
    for column in ("layer", "shape (out×in)", "W range", "controls range"):
        layers.add_column(column)
    for layer in doc["layers"]:
        w, c = layer["weight_range"], layer["controls_range"]
        layers.add_row(layer["name"], "×".join(map(str, layer["shape"])), f"[{w[0]:.3f}, {w[1]:.3f}]",
                       f"[{c[0]:.3f}, {c[1]:.3f}] {layer['controls_units']}")
    console.print(layers)


def _short(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"

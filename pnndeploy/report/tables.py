"""Tables and documents a person (rich tables) or a program (JSON) reads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table


def _console() -> Console:
    """stdout console; 120 columns when stdout is a file or pipe (rich would assume 80)."""
    console = Console()
    return console if console.is_terminal else Console(width=120)


def pct(value: float | None) -> str:
    """An accuracy fraction as a percentage, or a dash."""
    return "–" if value is None else f"{100 * value:.1f} %"


def render_train_summary(summary: Any) -> None:
    from pnndeploy.platforms import get_platform

    u = get_platform(summary.platform).control_units
    table = Table(title=f"Trained {summary.method} on {summary.dataset} ({summary.platform})")
    for column in ("train accuracy", "test accuracy", f"sharpness λ_max (1/{u}²)", f"tr H (1/{u}²)", "seconds"):
        table.add_column(column, justify="right")
    table.add_row(pct(summary.train_accuracy), pct(summary.test_accuracy), f"{summary.sharpness:.4g}",
                  f"{summary.hessian_trace:.4g}", f"{summary.seconds:.1f}")
    console = _console()
    console.print(table)
    imported = getattr(summary, "init_from", None)
    if imported:
        start = Table(title=f"Initialised from {imported['file']} (sha256 {imported['sha256'][:12]}…)")
        for column in ("test accuracy as read", "on the nominal chip, mapped", "after fine-tuning",
                       "onnxruntime max |Δ logit|"):
            start.add_column(column, justify="right")
        start.add_row(pct(imported["imported_test_accuracy"]), pct(imported["mapped_test_accuracy"]),
                      pct(summary.test_accuracy), f"{imported['onnxruntime_max_abs_diff']:.2g}")
        console.print(start)
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
            "shape": list(layer.shape),
            "onchip": True,
            # a layer that is not a weight matrix (an intensity readout, a propagation) has no W range
            "weight_range": [float(layer.weight.min()), float(layer.weight.max())] if layer.weight is not None
            else None,
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
    pset = meta.get("perturbation_set")
    if isinstance(pset, dict):
        info.add_row("perturbation_set", f"σ {pset.get('sigma', 0):.4g}, ρ {pset.get('rho', 0):.4g}, "
                                         f"±{pset.get('temperature_K')} K, {pset.get('days')} days, "
                                         f"{'compensated' if pset.get('compensated') else 'as programmed'}, "
                                         f"from {pset.get('source')}")
    digital = meta.get("digital")
    if isinstance(digital, dict):
        info.add_row("digital front end", _short(" → ".join(
            f"{layer.get('kind')} " + (f"{layer.get('kernel')}×{layer.get('kernel')} " if layer.get("kind") == "conv"
                                         else "") + f"{layer.get('in')}→{layer.get('out')}"
            for layer in digital.get("layers", []) if isinstance(layer, dict)) + f" (input {digital.get('input_shape')})", 120))
    info.add_row("sha256", doc["sha256"])
    console.print(info)
    layers = Table(title="on-chip layers")
    for column in ("layer", "shape (out×in)", "W range", "controls range"):
        layers.add_column(column)
    for layer in doc["layers"]:
        w, c = layer["weight_range"], layer["controls_range"]
        layers.add_row(layer["name"], "×".join(map(str, layer["shape"])),
                       f"[{w[0]:.3f}, {w[1]:.3f}]" if w is not None else "– (not a matrix)",
                       f"[{c[0]:.3f}, {c[1]:.3f}] {layer['controls_units']}")
    console.print(layers)


def _short(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def render_fleet_list(directory: str, rows: list[dict[str, Any]]) -> None:
    table = Table(title=f"device profiles in {directory}")
    for column in ("device", "platform", "array", "simulated", "calibrated", "age (days)",
                   "σ(offset error)"):
        table.add_column(column)
    for row in rows:
        err = row.get("calibration_error", {})
        offset = next(iter(err.values()), None) if err else None
        age = row.get("calibration_age_days")
        table.add_row(row["device_id"], row["platform"], "×".join(map(str, row["array"])),
                      "yes" if row["simulated"] else "no", row["calibration"]["measured_at"],
                      "–" if age is None else f"{age:.1f}",
                      "–" if offset is None else f"{offset['std']:.4f} {offset['units']}")
    _console().print(table)


def render_profile(summary: dict[str, Any]) -> None:
    console = _console()
    info = Table(title=f"device {summary['device_id']}", show_header=False)
    info.add_column("key", style="bold")
    info.add_column("value")
    age = summary.get("calibration_age_days")
    for key, value in (("platform", summary["platform"]), ("process", summary["process"]),
                       ("array", f"{summary['array'][0]}×{summary['array'][1]} ({summary['devices']} devices)"),
                       ("simulated", "yes (has fabrication truth)" if summary["simulated"] else "no (real chip)"),
                       ("calibrated", f"{summary['calibration']['measured_at']} at "
                                      f"{summary['calibration']['temperature_C']} °C"),
                       ("calibration age", "–" if age is None else f"{age:.1f} days")):
        info.add_row(key, str(value))
    if summary["calibration"].get("source"):
        from rich.markup import escape

        info.add_row("calibration source", escape(summary["calibration"]["source"]))
    for key, value in summary.get("options", {}).items():
        info.add_row(key, str(value))
    faulty = summary["calibration"].get("faulty")
    if faulty and faulty["count"]:
        truth = summary.get("faulty_truth")
        kinds = f"; truth: {truth['dead']} dead, {truth['stuck']} stuck" if truth else ""
        info.add_row("faulty devices", f"{faulty['count']} ({100 * faulty['fraction']:.1f} %) do not respond{kinds}")
    env, units = summary["environment"], summary.get("environment_units", {})
    for key in ("crosstalk", "detector_noise", "dac_bits", "heater_range", "ageing_rate"):
        unit = units.get(key, "")
        info.add_row(key, f"{env[key]} {'' if unit == '1' else unit}".strip())
    drift = env["drift_coefficient"]
    info.add_row("drift coefficient", f"{drift['mean']:.4f} ± {drift['std']:.4f} {drift['units']}")
    backend = summary.get("backend")
    if backend:
        station = f" (station chip {backend['device']})" if backend.get("device") else ""
        info.add_row("backend", f"{backend['kind']} {backend['address']}{station}")
    if summary.get("calibration_history"):
        history = summary["calibration_history"]
        info.add_row("calibration history", f"{len(history)} earlier, last measured {history[-1]['measured_at']}")
    console.print(info)
    stats = Table(title="calibration (measured) and its error against the fabrication truth")
    for column in ("field", "mean", "std", "error mean", "error std", "error max |.|"):
        stats.add_column(column, justify="right")
    errors = summary.get("calibration_error", {})
    for field, st in summary["calibration"]["fields"].items():
        e = errors.get(field)
        stats.add_row(f"{field} ({st['units']})", f"{st['mean']:.4f}", f"{st['std']:.4f}",
                      *(("–", "–", "–") if e is None else
                        (f"{e['mean']:+.4f}", f"{e['std']:.4f}", f"{e['max_abs']:.4f}")))
    console.print(stats)


def clipped_cell(device: dict[str, Any]) -> str:
    """A chip's clipped weights, their share of its devices and their causes: "938 (9.9 %): 930 reach, 8 range"."""
    causes = device.get("clipping")
    if not causes or not causes["total"]:
        return str(device["clipped_weights"])
    parts = [f"{causes[c]} {c}" for c in ("reach", "range", "faulty") if causes.get(c)]
    return f"{causes['total']} ({100 * causes['fraction']['total']:.1f} %): {', '.join(parts)}"


def faults_cell(faults: dict[str, Any] | None) -> str:
    """A chip's faulty devices and what they cost: "5 (2.0 %), −0.8 pp"."""
    if not faults:
        return "0"
    cost = "" if faults["cost"] is None else f", {100 * faults['cost']:+.1f} pp"
    return f"{faults['devices']} ({100 * faults['fraction']:.1f} %){cost}"


def render_transfer(report: dict[str, Any]) -> None:
    console = _console()
    title = (f"{report['model']} ({report['method']}) on {report['dataset']}, {report['samples']} test samples, "
             f"ΔT = {report['temperature_delta_K']:+g} K — nominal {pct(report['nominal_accuracy'])}")
    table = Table(title=title)
    faulty = any(d.get("faults") for d in report["devices"])
    for column in ("device", "measured by", "accuracy", "95 % CI", "vs nominal", "clipped weights",
                   *(["faulty devices (cost)"] if faulty else [])):
        table.add_column(column, justify="right")
    for d in report["devices"]:
        source = d.get("evaluated_by") or "–"
        extra = [faults_cell(d.get("faults"))] if faulty else []
        if d["accuracy"] is None:
            table.add_row(d["device"], source, "no valid output" if d.get("invalid_samples") else "real chip", "–",
                          "–", clipped_cell(d), *extra)
            continue
        lo, hi = d["ci95"]
        table.add_row(d["device"], source, pct(d["accuracy"]), f"{100 * lo:.1f}–{100 * hi:.1f} %",
                      f"{100 * d['delta_vs_nominal']:+.1f} pp", clipped_cell(d), *extra)
    console.print(table)
    if faulty:
        console.print("faulty devices: flagged by the calibration, held at rest and mapped around; cost = accuracy "
                      "against the same chip had they worked (simulated chips)")
    if any(d["clipped_weights"] for d in report["devices"]):
        console.print("clipped: [bold]reach[/] = weight beyond the device's reach, [bold]range[/] = setting beyond "
                      "the heater range, [bold]faulty[/] = on a device that does not respond (per layer: --json)")
    for d in report["devices"]:
        if d.get("invalid_samples"):
            console.print(f"[bold red]warning[/]: {d['device']} returned NaN or inf outputs for "
                          f"{d['invalid_samples']} of {report['samples']} samples; they are left out of its "
                          "accuracy (check the station's detectors)")
    if report.get("not_evaluated"):
        console.print(f"not evaluated (real chips without a backend): {', '.join(report['not_evaluated'])}; "
                      "their deployment files hold the settings to program")
    f = report["fleet"]
    if f is not None and f["count"] > 1:
        summary = Table(title=f"fleet of {f['count']} chips")
        for column in ("mean", "std", "min", "p5", "median", "worst chip", f"yield ≥ {pct(f['threshold'])}"):
            summary.add_column(column, justify="right")
        summary.add_row(pct(f["mean"]), f"{100 * f['std']:.1f} pp", pct(f["min"]), pct(f["p5"]), pct(f["median"]),
                        f["worst_device"], pct(f["yield"]))
        console.print(summary)
    saved = [d["deployment"] for d in report["devices"] if d["deployment"]]
    if saved:
        console.print(f"deployments written: {saved[0]}" + (f" and {len(saved) - 1} more" if len(saved) > 1 else ""))


def _interval(value: list[float] | None) -> str:
    return "none (fails at 0 K)" if value is None else f"{value[0]:+g} … {value[1]:+g} K"


def _days(value: float | None, horizon: float) -> str:
    return f"> {horizon:g}" if value is None else f"{value:g}"


def audit_rows(doc: dict[str, Any]) -> list[list[str]]:
    """Per-device rows: accuracy at 0 and ±require K, tolerance, days to threshold."""
    t = doc["sweeps"]["temperature_K"]
    req = doc["require"]["temperature_K"]
    idx = {round(v, 6): i for i, v in enumerate(t["values"])}
    comp = doc["sweeps"].get("temperature_K_compensated")
    rows = []
    for name, acc in t["devices"].items():
        row = [name, pct(acc[idx[0.0]]), pct(acc[idx[round(-req, 6)]]), pct(acc[idx[round(req, 6)]]),
               _interval(doc["tolerance"]["temperature_K"][name])]
        if comp is not None:
            c = comp["devices"][name]
            row += [f"{pct(c[idx[round(-req, 6)]])} / {pct(c[idx[round(req, 6)]])}",
                    _interval(doc["tolerance"]["temperature_K_compensated"][name])]
        unchecked = name in doc.get("not_checked", {})
        rows.append(row + ["not measurable (real chip)" if unchecked
                           else _days(doc["time_to_threshold_days"].get(name), doc["horizon_days"])])
    return rows


def misalignment_axes(doc: dict[str, Any]) -> list[str]:
    """The setup sweeps of an audit document (a free-space setup's misalignment), in order: those that carry
    their own centre and requirement (temperature and ageing carry theirs in ``require``)."""
    return [k for k, sweep in doc["sweeps"].items() if "require" in sweep and "centre" in sweep]


def misalignment_headers(doc: dict[str, Any]) -> list[str]:
    out = ["device"]
    for key in misalignment_axes(doc):
        sweep = doc["sweeps"][key]
        around = f"±{sweep['require']:g} {sweep['units']}" if sweep["centre"] == 0 else \
            f"{sweep['centre']:g} ± {sweep['require']:g}"
        out.append(f"{sweep['label']}: worst within {around} (tolerance)")
    return out


def misalignment_rows(doc: dict[str, Any]) -> list[list[str]]:
    """Per setup and axis: the worst accuracy within the requirement and the tolerance interval."""
    keys = misalignment_axes(doc)
    if not keys:
        return []
    rows = []
    for name in doc["sweeps"][keys[0]]["devices"]:
        row = [name]
        for key in keys:
            sweep = doc["sweeps"][key]
            inside = [a for v, a in zip(sweep["values"], sweep["devices"][name])
                      if abs(v - sweep["centre"]) <= sweep["require"] + 1e-9]
            worst = None if any(a is None for a in inside) else min(inside)
            tol = doc["tolerance"][key][name]
            units = "" if sweep["units"] == "1" else f" {sweep['units']}"
            row.append(f"{pct(worst)} ({'fails unperturbed' if tol is None else f'{tol[0]:g} … {tol[1]:g}{units}'})")
        rows.append(row)
    return rows


def _audit_headers(doc: dict[str, Any]) -> list[str]:
    req = doc["require"]["temperature_K"]
    comp = [f"compensated −{req:g} / +{req:g} K", "tolerance, compensated"] \
        if "temperature_K_compensated" in doc["sweeps"] else []
    return ["device", "0 K", f"−{req:g} K", f"+{req:g} K", "temperature tolerance", *comp, "days to threshold"]


def render_audit(doc: dict[str, Any]) -> None:
    console = _console()
    table = Table(title=f"audit of {doc['model']} ({doc['method']}): threshold {pct(doc['threshold'])}"
                        f" ({doc['threshold_source']})")
    for column in _audit_headers(doc):
        table.add_column(column, justify="right")
    for row in audit_rows(doc):
        table.add_row(*row)
    console.print(table)
    if doc.get("faults"):
        parts = [f"{name} {f['devices']}" + ("" if f["cost_at_calibration"] is None
                                             else f" ({100 * f['cost_at_calibration']:+.1f} pp)")
                 for name, f in doc["faults"].items()]
        console.print(f"faulty devices (flagged by the calibration; cost at the calibration temperature against the "
                      f"same chip had they worked): {', '.join(parts)}")
    if misalignment_axes(doc):
        table = Table(title="misalignment after calibration (each axis alone, every setup moved alike)")
        for column in misalignment_headers(doc):
            table.add_column(column, justify="right")
        for row in misalignment_rows(doc):
            table.add_row(*row)
        console.print(table)
    rec = doc["recommended_recalibration_days"]
    unchecked = doc.get("not_checked", {})
    aged = doc["sweeps"]["days"]["devices"]
    if not aged:
        console.print("recommended recalibration interval: not measured (no simulated chip to age; chips behind a "
                      "backend cannot be aged on demand)")
    else:
        console.print(f"recommended recalibration interval: "
                      f"{'beyond the ' + format(doc['horizon_days'], 'g') + '-day horizon' if rec is None else format(rec, 'g') + ' days'}"
                      + (f" (simulated chips only; ageing not checked for {len(unchecked)} chip(s) behind a backend)"
                         if unchecked else ""))
    for name, count in doc.get("invalid_samples", {}).items():
        if count:
            console.print(f"[bold red]warning[/]: {name} returned NaN or inf outputs for up to {count} samples of a "
                          "measurement; they were left out (check the station's detectors)")
    req = doc["require"]
    used = (doc.get("drift_compensation") or {}).get("used_for_verdict")
    console.print("verdict on the " + ("drift-compensated sweep (a common bias re-fitted per chip)" if used else
                                       "sweep as programmed (no drift compensation; --drift-compensation to use it)"))
    if doc["passed"]:
        unchecked = doc.get("not_checked", {})
        console.print(f"[bold green]PASSED[/]: every device stays ≥ {pct(doc['threshold'])} within "
                      f"±{req['temperature_K']:g} K and for {req['days']:g} days"
                      + "".join(f", within ±{req[k]:g} of {doc['sweeps'][k]['label']}" for k in misalignment_axes(doc))
                      + (f" (the ageing requirement was not checked for {', '.join(unchecked)})" if unchecked else ""))
    else:
        console.print(f"[bold red]FAILED[/]: {len(doc['failures'])} problem(s): " + "; ".join(doc["failures"][:6])
                      + (" …" if len(doc["failures"]) > 6 else ""))


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def audit_markdown(doc: dict[str, Any], plot: str | None = None, report_dir: str | Path = ".") -> str:
    req = doc["require"]
    rec = doc["recommended_recalibration_days"]
    parts = [
        f"# Drift audit: `{doc['model']}` ({doc['method']})",
        "",
        f"- dataset: {doc['dataset']} ({doc['samples']} test samples), nominal accuracy {pct(doc['nominal_accuracy'])}",
        f"- threshold: {pct(doc['threshold'])} ({doc['threshold_source']})",
        f"- requirement: ±{req['temperature_K']:g} K and {req['days']:g} days → "
        f"**{'PASSED' if doc['passed'] else 'FAILED'}**"
        + (" (judged with drift compensation)" if (doc.get("drift_compensation") or {}).get("used_for_verdict")
           else ""),
        "- recommended recalibration interval: "
        + ("not measured (no simulated chip to age)" if not doc["sweeps"]["days"]["devices"]
           else f"{'beyond the horizon' if rec is None else format(rec, 'g') + ' days'}"
           + (f" (ageing not checked for {', '.join(doc['not_checked'])})" if doc.get("not_checked") else "")),
        "",
        markdown_table(_audit_headers(doc), audit_rows(doc)),
    ]
    if misalignment_axes(doc):
        parts += ["", "Misalignment after calibration (each axis alone):", "",
                  markdown_table(misalignment_headers(doc), misalignment_rows(doc))]
    if doc["failures"]:
        parts += ["", "Failures:", ""] + [f"- {f}" for f in doc["failures"]]
    if plot:
        link = Path(os.path.relpath(Path(plot).resolve(), Path(report_dir).resolve())).as_posix()
        parts += ["", f"![accuracy versus drift]({link})"]
    return "\n".join(parts) + "\n"


def write_audit_markdown(doc: dict[str, Any], path: str, plot: str | None = None) -> None:
    from pnndeploy.atomic import write_bytes_atomic

    write_bytes_atomic(path, audit_markdown(doc, plot, Path(path).parent).encode())


def render_demo_table(table: list[dict[str, Any]], threshold: float) -> None:
    """The demo's comparison, one row per method, compact enough for an 80-column terminal."""
    seeds = table[0]["seeds"] if table else 1
    t = Table(title=f"accuracy in % on the default fleet (mean of {seeds} seed{'s' if seeds > 1 else ''}); "
                    f"threshold {pct(threshold)}", padding=(0, 1))
    req = f"{table[0]['required_temperature_K']:g}" if table else "1"
    for column in ("method", "ideal", "λmax", "mean", "±seeds", "min", "yield", "uncal", "−1K", "+1K", f"min±{req}K",
                   "comp.", "g+b", "audit", "days"):
        t.add_column(column, justify="right", no_wrap=True)
    for r in table:
        days = r["recalibration_days"]
        t.add_row(r["method"], *(f"{100 * r[k]:.1f}" for k in ("nominal_accuracy",)), f"{r['sharpness']:.3g}",
                  f"{100 * r['fleet_mean']:.1f}", f"{100 * r['fleet_mean_std_over_seeds']:.1f}",
                  *(f"{100 * r[k]:.1f}" for k in ("fleet_min", "yield", "uncalibrated_mean", "fleet_mean_minus_1K",
                                                   "fleet_mean_plus_1K", "fleet_min_over_range",
                                                   "compensated_min_over_range", "gain_bias_min_over_range")),
                  f"{r['audits_passed']}/{r['seeds']}" + ("c" if r["audited_compensated"] else ""),
                  f">{r['horizon_days']:g}" if days is None else f"{days:g}")
    _console().print(t)
    axes = list(table[0].get("misalignment_min", {})) if table else []
    if axes:            # free-space setups: the worst setup within each misalignment requirement
        m = Table(title="worst setup in % within each misalignment requirement (each axis alone)", padding=(0, 1))
        m.add_column("method", justify="right", no_wrap=True)
        for k in axes:
            m.add_column(f"{k} ±{table[0]['misalignment_require'][k]:g}", justify="right", no_wrap=True)
        for r in table:
            m.add_row(r["method"], *(f"{100 * r['misalignment_min'][k]:.1f}" for k in axes))
        _console().print(m)


def render_sweep(doc: dict[str, Any]) -> None:
    """The sweep's table: one row per cell and fleet (failures with their error), then the counts."""
    from rich.markup import escape

    req = doc["require_temperature_K"]
    t = Table(title=f"sweep {doc['sweep']} ({doc['executor']}): accuracy in %, threshold {pct(doc['threshold'])}",
              padding=(0, 1))
    for column in ("cell", "method", "settings", "seed", "fleet", "ideal", "mean 0 K", "min 0 K", f"min ±{req:g} K",
                   "compensated", "audit", "status"):
        t.add_column(column, justify="right" if column not in ("settings", "fleet", "status") else "left")
    for k, c in enumerate(doc["cells"], start=1):
        shared = doc.get("shared_settings", {})
        settings = ", ".join(f"{a}={b}" for a, b in c["settings"].items()
                             if a != "method" and shared.get(a, object()) != b) or "—"
        settings = escape(settings)
        if c["status"] == "failed":
            t.add_row(str(k), str(c["settings"].get("method", "")), settings, str(c["seed"]), "", "", "", "", "", "",
                      "", f"[red]failed[/]: {escape(c['error'])}")
            continue
        for name, f in c["fleets"].items():
            t.add_row(str(k), c["method"], settings, str(c["seed"]), escape(name), f"{100 * c['ideal']:.1f}",
                      f"{100 * f['mean_0K']:.1f}", f"{100 * f['min_0K']:.1f}", f"{100 * f['min_within_K']:.1f}",
                      f"{100 * f['min_within_K_compensated']:.1f}",
                      ("pass" if f["audit_passed"] else "fail") + (" (c)" if f["audit_compensated"] else ""),
                      c["status"])
    console = _console()
    console.print(t)
    n = doc["counts"]
    console.print(f"{n['done']} cells run, {n['skipped']} skipped (already in {doc['out']}), {n['failed']} failed; "
                  f"results.json, results.csv" + (", pareto.png" if doc.get("pareto_plot") else ""))


def faulty_line(faulty: dict[str, Any], truth: dict[str, Any] | None = None) -> str:
    """One line on the devices a calibration found not responding (and, for a simulated chip, how that compares
    with its truth)."""
    if not faulty["count"]:
        text = "faulty devices: none (every device responds to its setting)"
    else:
        where = ", ".join(str(tuple(d)) for d in faulty["devices"])
        more = " …" if faulty["count"] > len(faulty["devices"]) else ""
        text = (f"faulty devices: {faulty['count']} ({faulty['fraction']:.1%}) do not respond to their setting, at "
                f"{where}{more}; mapping works around them")
    if truth:
        text += f" (truth: {truth['truth']}, missed {truth['missed']}, false alarms {truth['false_alarms']})"
    return text


def render_calibration(doc: dict[str, Any]) -> None:
    """The `calibrate` result: fitted fields, fit residuals, and the error against the truth where known."""
    console = _console()
    sweep = doc["sweep"]
    table = Table(title=f"calibration of {doc['device']} at {doc['temperature_C']:g} °C ({doc['temperature_source']}), "
                        f"{sweep['points']} points {sweep['from']:+g} … {sweep['to']:+g} {sweep['units']}")
    truth = doc.get("error_vs_truth")
    columns = ["field", "mean", "std", "units"] + (["error vs truth (rms)", "max |error|", "previous (rms)"]
                                                     if truth else [])
    for column in columns:
        table.add_column(column, justify="right")
    for name, f in doc["fields"].items():
        row = [name, f"{f['mean']:.5g}", f"{f['std']:.3g}", f["units"]]
        if truth:
            e = truth[name]
            row += [f"{e['rms']:.2e}", f"{e['max_abs']:.2e}", f"{e['previous_rms']:.2e}"]
        table.add_row(*row)
    console.print(table)
    r = doc["residual"]
    console.print(f"fit residual: rms {r['rms_mean']:.2e} on average, worst {r['rms_max']:.2e} at device "
                  f"{tuple(r['worst_device'])} (weight units)")
    console.print(faulty_line(doc["faulty"], truth.get("faulty") if truth else None))
    console.print(f"written: {doc['written']} (old calibration kept in calibration_history)" if doc["written"]
                  else "dry run: nothing written")

"""`pnndeploy demo`: the whole story on the embedded defaults, in one folder a person can open.

Trains the baseline, noise-aware training, SAT and spec-SAT (for chips run as
programmed, and for a drift-compensated deployment) on the same data and seed, for one platform;
maps each onto that platform's default fleet through each chip's calibration
(and, for comparison, uncalibrated: through the nominal device, which is how
the paper transfers an in-silico model to a fabricated one); audits each
against one common threshold; writes a comparison table, plots, a Markdown
report and a JSON summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pnndeploy.atomic import write_bytes_atomic
from pnndeploy.data.datasets import load_dataset
from pnndeploy.deploy.audit import SweepRange, run_audit
from pnndeploy.deploy.mapping import map_models, uncalibrated
from pnndeploy.compute import CPU, Compute
from pnndeploy.deploy.transfer import PreparedFleet, prepare_fleet, transfer_report
from pnndeploy.errors import PnnError
from pnndeploy.formats.profile_folder import list_profiles
from pnndeploy.formats.profiles import read_profile
from pnndeploy.platforms import DEFAULT_PLATFORM, get_platform
from pnndeploy.deploy.results import Sweep
from pnndeploy.simulation.fleet import SimulatedFleet
from pnndeploy.training.config import TrainConfig
from pnndeploy.training.methods import METHODS, MethodVariant, get_method
from pnndeploy.training.pipeline import train_and_export

#: The demo's common accuracy threshold (fraction), the same for every method so they compare.
DEMO_THRESHOLD = 0.9
#: Every method at the same width, spec-sat's default (the others' default is 32; README, spec-SAT).
DEMO_HIDDEN = [128]


#: One row of the demo: a method's variant (its name, settings and what it means), from the method registry.
DemoEntry = MethodVariant


def demo_entries(platform: str = DEFAULT_PLATFORM) -> tuple[DemoEntry, ...]:
    """The methods the demo compares, in the platform's units: every registered method's variants (the paper's
    three, and spec-SAT for chips run as programmed and for a drift-compensated deployment), baselines first."""
    methods = sorted(METHODS.values(), key=lambda m: not m.baseline)
    return tuple(v for method in methods for v in method.variants(platform))


DEMO_ENTRIES = demo_entries()

#: What a demo takes from a train config (``demo --config``): the set-up, not the method (each row has its own).
DEMO_SETUP_KEYS = frozenset({"platform", "platform_options", "dataset", "hidden", "conv", "kernel", "batch_norm",
                             "onchip", "epochs", "batch_size", "lr"})


def uncalibrated_accuracy(prepared: PreparedFleet) -> list[float]:
    """Accuracy of each simulated chip when the model is mapped through the nominal device, not the calibration."""
    fleet = prepared.require_simulated("an uncalibrated transfer")
    profiles = [p for p in prepared.profiles if p.simulated]
    with fleet.compute.running():
        mapped = map_models(prepared.model, [uncalibrated(p) for p in profiles])
    blind = SimulatedFleet(prepared.model, profiles, mapped, fleet.compute)
    assert blind.device_ids == fleet.device_ids
    return [float(a) for a in blind.accuracy(prepared.data.X, prepared.data.y)]


def _check_fleet_platform(profiles: Path, platform: str) -> Any:
    """Refuse, before any training, a profiles folder whose chips are of another platform; returns its first chip's
    profile (what the other checks look at)."""
    paths = list_profiles(profiles)
    if not paths:
        raise PnnError(f"profiles folder {profiles} holds no profiles; create a fleet with `pnndeploy fleet make` "
                       "or pass --profiles DIR")
    first = read_profile(paths[0])
    if first.platform != platform:
        raise PnnError(f"profiles folder {profiles} holds {first.platform} chips but the demo is for {platform}; "
                       f"pass --profiles with a {platform} fleet or --platform {first.platform}")
    return first


def fleet_options(spec: Path, platform: Any) -> dict[str, Any]:
    """The platform options of the fleet the demo is told on (its process spec's, where they differ from the
    defaults): the models must be trained for those chips."""
    if not spec.is_file():
        return {}
    from pnndeploy.formats.process_spec import load_process, process_platform

    chips = process_platform(load_process(spec, "--profiles")).option_values()
    return {k: v for k, v in chips.items() if v != platform.option_values().get(k)}


def demo_setup(config: dict[str, Any], platform: str | None) -> tuple[dict[str, Any], list[str]]:
    """The set-up a demo takes from a train config (``--config``): its platform, options, data, architecture and
    schedule; and the keys it leaves unused (the method and its settings, which each row sets, the seed, compute;
    not ``out``, whose place the demo's ``--out`` takes)."""
    if platform is not None and config.get("platform", platform) != platform:
        raise PnnError(f"--config sets platform {config['platform']!r} but --platform is {platform}; drop --platform "
                       "or give a config of that platform")
    setup = {k: v for k, v in config.items() if k in DEMO_SETUP_KEYS}
    setup.setdefault("platform", platform or DEFAULT_PLATFORM)
    return setup, sorted(k for k in config if k not in DEMO_SETUP_KEYS | {"out"})


def _check_fleet_options(profiles: Path, first: Any, chip: Any) -> None:
    """Refuse, before any training, a fleet whose chips (``first``: one of them) have other platform options than
    the set-up trains for."""
    fleet = first.chip_platform.option_values()
    wanted = chip.option_values()
    differ = {k: (v, fleet.get(k)) for k, v in wanted.items() if fleet.get(k) != v}
    if differ:
        said = ", ".join(f"{k}={v} (the fleet's: {f})" for k, (v, f) in differ.items())
        raise PnnError(f"--config trains for {said} but the chips in {profiles} differ; make a fleet of such chips "
                       "(pnndeploy fleet make --process SPEC --out DIR, e.g. with examples/paper/mzi64-process.yaml) "
                       "and pass --profiles DIR")


def run_demo(out_dir: str | Path, profiles: Path, quick: bool = False, seed: int = 0, seeds: int | None = None,
             status: Callable[[str], None] | None = None,
             on_epoch: Callable[[str, Any], None] | None = None, platform: str = DEFAULT_PLATFORM,
             compute: Compute = CPU, setup: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the comparison and write report.md, summary.json and the plots into ``out_dir`` (computing on ``compute``).

    Each method is trained with ``seeds`` seeds (default 3, 1 with ``quick``): one seed's
    ranking can flip on a 360-image test set, an average over seeds is what a lab can rely on.
    Seed s fixes the model's split and initialisation; every model is evaluated on its own test split.
    ``setup`` (:func:`demo_setup`: a config's platform, options, dataset, architecture and schedule) replaces
    the demo's own (the platform's default width, options and dataset, 30 epochs).
    """
    from pnndeploy.report.plots import plot_audit, plot_comparison

    say = status or (lambda text: None)
    setup = dict(setup or {})
    platform = setup.pop("platform", platform)
    first = _check_fleet_platform(profiles, platform)
    out = Path(out_dir)
    seeds = seeds if seeds is not None else (1 if quick else 3)
    epochs = setup.pop("epochs", TrainConfig().epochs)
    epochs = min(6, epochs) if quick else epochs
    temperatures = SweepRange(-1.0, 1.0, 0.5) if quick else SweepRange(-2.0, 2.0, 0.25)
    days = SweepRange(0.0, 60.0, 30.0) if quick else SweepRange(0.0, 180.0, 15.0)
    draws = 2 if quick else 5
    rows: list[dict[str, Any]] = []
    # spec-SAT trains against the fleet it is shown on: that fleet's own process spec, when it has one
    spec = Path(profiles) / "process.yaml"
    chip = get_platform(platform)
    hidden = setup.pop("hidden", DEMO_HIDDEN if chip.default_hidden is None else list(chip.default_hidden))
    dataset_name = setup.pop("dataset", chip.demo_dataset)
    if "platform_options" in setup:
        _check_fleet_options(profiles, first, chip.configure(setup["platform_options"]))
    else:
        setup["platform_options"] = fleet_options(spec, chip)
    for s in range(seed, seed + seeds):
        dataset = load_dataset(dataset_name, seed=s)
        for entry in demo_entries(platform):
            robust = get_method(entry.settings["method"]).for_fleet(spec)
            config = TrainConfig(**{**entry.settings, "epochs": epochs, "seed": s, "platform": platform,
                                    "hidden": hidden, **setup, **robust})
            tag = entry.name if s == seed else f"{entry.name}-seed{s}"
            model_path = out / "models" / f"{tag}.onnx"
            say(f"training {entry.name} (seed {s})")
            summary, _ = train_and_export(dataset, config, model_path,
                                          on_epoch=(lambda r, n=entry.name: on_epoch(n, r)) if on_epoch else None,
                                          compute=compute)
            say(f"mapping {entry.name} onto the fleet")
            prepared = prepare_fleet(model_path, [], True, profiles, save_dir=out / "deployments",
                                     stations=False, compute=compute)
            transfer = transfer_report(prepared, threshold=DEMO_THRESHOLD)
            blind = uncalibrated_accuracy(prepared)
            say(f"auditing {entry.name}")
            audit = run_audit(prepared, temperatures, days, threshold=DEMO_THRESHOLD, draws=draws,
                              compare=["gain-bias"])
            if s == seed:
                plot_audit(audit.to_json(), out / f"audit_{entry.name}.png")
            rows.append({"name": entry.name, "seed": s, "what": entry.what, "train": summary.to_json(),
                         "transfer": transfer, "uncalibrated": {"accuracy": blind, "mean": float(np.mean(blind)),
                                                                "min": float(np.min(blind))},
                         "audit": audit})
    plot_comparison(mean_curves(rows), out / "comparison.png")
    table = comparison_table(rows)
    rows = [{**r, "transfer": r["transfer"].to_json(), "audit": r["audit"].to_json()} for r in rows]
    doc = {"platform": platform, "threshold": DEMO_THRESHOLD, "quick": quick, "seeds": list(range(seed, seed + seeds)),
           "epochs": epochs, "hidden": hidden,
           "setup": {k: v for k, v in config.to_dict().items() if k in DEMO_SETUP_KEYS - {"epochs", "hidden"}},
           **({"dataset": dataset.name, "inputs": dataset.n_features}
              if dataset_name != "digits" else {}),
           "fleet": [d["device"] for d in rows[0]["transfer"]["devices"]],
           "table": table, "runs": rows}
    write_bytes_atomic(out / "summary.json", json.dumps(doc, indent=2).encode())
    write_bytes_atomic(out / "report.md", demo_markdown(doc).encode())
    return doc


def _at(sweep: Sweep, value: float) -> float:
    values = [round(v, 6) for v in sweep.values]
    return sweep.fleet_mean[values.index(round(value, 6))]


def _min_within(sweep: Sweep, limit: float) -> float:
    """The worst chip's accuracy anywhere on the sweep within ±limit K."""
    return min(m for v, m in zip(sweep.values, sweep.fleet_min) if abs(v) <= limit + 1e-9)


def _min_around(sweep: Sweep) -> float:
    """The worst setup's accuracy anywhere on a misalignment sweep within its requirement."""
    centre, require = sweep.extra["centre"], sweep.extra["require"]
    return min(m for v, m in zip(sweep.values, sweep.fleet_min) if abs(v - centre) <= require + 1e-9)


def _by_method(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["name"], []).append(row)
    return groups


def mean_curves(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method, the fleet-mean sweeps averaged over seeds (what the comparison plot draws)."""
    curves = []
    for name, group in _by_method(rows).items():
        sweeps = {}
        for key in ("temperature_K", "temperature_K_compensated", "days"):
            sweeps[key] = {"values": group[0]["audit"].sweeps[key].values,
                           "fleet_mean": np.mean([r["audit"].sweeps[key].fleet_mean for r in group],
                                                 axis=0).tolist()}
        curves.append({"name": name + (f" (mean of {len(group)} seeds)" if len(group) > 1 else ""),
                       "audit": {"sweeps": sweeps}})
    return curves


def _intersect(intervals: list[list[float] | None]) -> list[float] | None:
    """The interval common to all (None if any is None or they do not overlap)."""
    if not intervals or any(tol is None for tol in intervals):
        return None
    lo, hi = max(tol[0] for tol in intervals), min(tol[1] for tol in intervals)
    return [lo, hi] if lo <= hi else None


def comparison_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method (means over seeds): the numbers that decide which model to ship."""
    table = []
    for name, group in _by_method(rows).items():
        def mean(get: Callable[[dict[str, Any]], float]) -> float:
            return float(np.mean([get(r) for r in group]))

        fleet_means = [r["transfer"].fleet.mean for r in group]
        audits = [r["audit"] for r in group]
        required = audits[0].require["temperature_K"]
        # the tolerance of the sweep each audit was judged on (compensated for a model trained for it)
        compensated = audits[0].strategy != "none"
        judged = audits[0].judged["temperature_K"][1]
        common = _intersect([_intersect(list(a.tolerance[judged].values())) for a in audits])
        days = [a.recommended_recalibration_days for a in audits]
        finite = [d for d in days if d is not None]

        def sweep_min(key: str) -> float:
            return mean(lambda r: _min_within(r["audit"].sweeps[key], required))

        def worst(key: str) -> float:
            return min(_min_within(a.sweeps[key], required) for a in audits)

        table.append({
            "method": name,
            "seeds": len(group),
            "nominal_accuracy": mean(lambda r: r["train"]["test_accuracy"]),
            "sharpness": float(np.median([r["train"]["sharpness"] for r in group])),
            "hessian_trace": float(np.median([r["train"]["hessian_trace"] for r in group])),
            "fleet_mean": float(np.mean(fleet_means)),
            "fleet_mean_std_over_seeds": float(np.std(fleet_means, ddof=1)) if len(group) > 1 else 0.0,
            "fleet_min": mean(lambda r: r["transfer"].fleet.min),
            "yield": mean(lambda r: r["transfer"].fleet.yield_),
            "uncalibrated_mean": mean(lambda r: r["uncalibrated"]["mean"]),
            "uncalibrated_min": mean(lambda r: r["uncalibrated"]["min"]),
            "fleet_mean_minus_1K": mean(lambda r: _at(r["audit"].sweeps["temperature_K"], -1.0)),
            "fleet_mean_plus_1K": mean(lambda r: _at(r["audit"].sweeps["temperature_K"], 1.0)),
            "fleet_min_over_range": sweep_min("temperature_K"),
            "compensated_min_over_range": sweep_min("temperature_K_compensated"),
            "gain_bias_min_over_range": sweep_min("temperature_K_gain_bias"),
            "worst_chip_over_range": worst("temperature_K"),
            "worst_chip_compensated": worst("temperature_K_compensated"),
            "worst_chip_gain_bias": worst("temperature_K_gain_bias"),
            "required_temperature_K": required,
            "audits_passed": sum(a.passed for a in audits),
            "audited_compensated": compensated,
            "fleet_temperature_tolerance_K": common,
            "recalibration_days": min(finite) if finite else None,
            "horizon_days": audits[0].horizon_days,
            "train_seconds": mean(lambda r: r["train"]["seconds"]),
        })
        axes = [k for k, a in audits[0].axes.items() if a.axis.kind == "setup"]
        if axes:            # a free-space setup: the worst setup within each misalignment requirement
            table[-1]["misalignment_min"] = {k: mean(lambda r, k=k: _min_around(r["audit"].sweeps[k])) for k in axes}
            table[-1]["misalignment_require"] = {k: audits[0].sweeps[k].extra["require"] for k in axes}
    return table


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def table_markdown(table: list[dict[str, Any]], threshold: float) -> str:
    req = f"±{table[0]['required_temperature_K']:g} K" if table else "±1 K"
    headers = ["method", "nominal", "λ_max", "tr H", "fleet mean (± seeds)", "fleet min",
               f"yield ≥ {_pct(threshold)}", "uncalibrated mean", "uncalibrated min", "mean at −1 K", "mean at +1 K",
               f"fleet min over {req}", f"fleet min over {req}, compensated", "… gain-bias", "audits passed",
               "tolerance (all chips)", "days to threshold"]
    axes = list(table[0].get("misalignment_min", {})) if table else []
    headers += [f"fleet min, {k} ±{table[0]['misalignment_require'][k]:g}" for k in axes]
    lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
    for r in table:
        tol = r["fleet_temperature_tolerance_K"]
        days = r["recalibration_days"]
        spread = f" ± {100 * r['fleet_mean_std_over_seeds']:.1f}" if r["seeds"] > 1 else ""
        lines.append("| " + " | ".join([
            r["method"], _pct(r["nominal_accuracy"]), f"{r['sharpness']:.3g}", f"{r['hessian_trace']:.3g}",
            _pct(r["fleet_mean"]) + spread, _pct(r["fleet_min"]), _pct(r["yield"]), _pct(r["uncalibrated_mean"]),
            _pct(r["uncalibrated_min"]), _pct(r["fleet_mean_minus_1K"]),
            _pct(r["fleet_mean_plus_1K"]), _pct(r["fleet_min_over_range"]), _pct(r["compensated_min_over_range"]),
            _pct(r["gain_bias_min_over_range"]),
            f"{r['audits_passed']}/{r['seeds']}" + (" (compensated)" if r["audited_compensated"] else ""),
            "fails at 0 K" if tol is None else f"{tol[0]:+g} … {tol[1]:+g} K",
            f"> {r['horizon_days']:g}" if days is None else f"{days:g}",
            *(_pct(r["misalignment_min"][k]) for k in axes),
        ]) + " |")
    return "\n".join(lines)


def _front_end_words(setup: dict[str, Any]) -> str:
    """How the report names a config's front end and split (nothing for the demo's own MLP)."""
    words = []
    if setup.get("conv"):
        k = setup.get("kernel", 3)
        words.append(f"conv {', '.join(f'{c}@{k}×{k}' for c in setup['conv'])}"
                     + (" with batch norm" if setup.get("batch_norm") else ""))
    if setup.get("onchip"):
        words.append(f"the last {setup['onchip']} layer(s) on the chip")
    return f" ({'; '.join(words)})" if words else ""


def _options_words(setup: dict[str, Any]) -> str:
    """The platform options a report names (nothing at the defaults)."""
    options = setup.get("platform_options") or {}
    return f" ({', '.join(f'{k} {v}' for k, v in options.items())})" if options else ""


def demo_markdown(doc: dict[str, Any]) -> str:
    seeds = doc["seeds"]
    first = {r["name"]: r for r in doc["runs"] if r["seed"] == seeds[0]}
    platform = get_platform(doc["platform"]).configure(doc.get("setup", {}).get("platform_options"))
    u = platform.control_units
    dataset, inputs = doc.get("dataset", "digits"), doc.get("inputs", 64)
    lines = [
        "# pnndeploy demo: one model, eight chips, drift",
        "",
        f"{'Digits' if dataset == 'digits' else f'Digits as {dataset}'} (scikit-learn), "
        f"{inputs}→{'→'.join(map(str, doc.get('hidden', [32])))}→10 MLP{_front_end_words(doc.get('setup', {}))} on "
        f"{platform.description}{_options_words(doc.get('setup', {}))}, {doc['epochs']} epochs; "
        f"seeds {', '.join(map(str, seeds))} (each seed: its own split and initialisation; the table shows the "
        f"mean over seeds, λ_max and tr H the median); fleet: {', '.join(doc['fleet'])}; "
        f"common threshold {_pct(doc['threshold'])}."
        + (" **Quick run** (few epochs, coarse sweeps): numbers are indicative only." if doc["quick"] else ""),
        "",
        table_markdown(doc["table"], doc["threshold"]),
        "",
        "- *nominal*: test accuracy on the ideal digital chip; *λ_max*, *tr H*: top eigenvalue and trace of the loss "
        f"Hessian w.r.t. the {platform.control_noun}s (1/{u}²);",
        "- *fleet mean / min / yield*: mapped through each chip's calibration, evaluated on its fabrication truth at "
        "the calibration temperature (± the standard deviation over seeds);",
        "- *uncalibrated mean / min*: mapped through the nominal device instead (no knowledge of the chip's "
        "errors: the paper's in-silico transfer), same chips and temperature;",
        "- *fleet min over ±K*: the worst chip's accuracy anywhere within the audit's required range, as "
        "programmed and with drift compensation (each chip re-fits one common bias from a 32-input reference "
        "measurement at every temperature; *gain-bias*: then also a gain and a bias per output from the same "
        "measurement), mean over seeds; *audits passed*: seeds whose audit passed, judged as "
        "the model was trained to be deployed;",
        "- *tolerance (all chips)*: the temperature interval in which every chip of every seed stays at or above the "
        "threshold, on the sweep the audit was judged on;",
        "- *days to threshold*: the fleet's recommended recalibration interval under ageing (median of random walks; "
        "the smallest over seeds)."
        + ("\n- *fleet min, AXIS ±R*: the worst setup's accuracy anywhere within ±R of that misalignment "
           "(each axis alone, every setup moved from its calibrated state alike), mean over seeds."
           if doc["table"] and "misalignment_min" in doc["table"][0] else ""),
        "",
        "![fleet mean versus drift](comparison.png)",
        "",
        "## The methods",
        "",
    ]
    lines += [f"- **{name}**: {r['what']}" for name, r in first.items()]
    for name in first:
        lines += ["", f"## {name}: audit per chip (seed {seeds[0]})", "", f"![audit {name}](audit_{name}.png)"]
    return "\n".join(lines) + "\n"

"""pnndeploy: train physical neural networks with sharpness-aware training, export once, deploy to a fleet.

The Python API below is what the command line calls; a lab scripts against it
directly.  Names are imported on first use (torch, onnx and h5py load only when
a name that needs them is touched), so ``import pnndeploy`` stays cheap::

    from pathlib import Path
    from pnndeploy import TrainConfig, SweepRange, prepare_fleet, run_audit, train_and_export, transfer_report

    summary, _ = train_and_export("digits", TrainConfig(method="sat"), "models/sat.onnx")
    fleet = prepare_fleet("models/sat.onnx", devices=[], use_fleet=True, profiles=Path("device_profiles"),
                          save_dir=None)
    print(transfer_report(fleet, delta_T=1.0).fleet.min)
    print(run_audit(fleet, SweepRange(-1, 1, 0.25), SweepRange(0, 60, 15), threshold=0.9).passed)

Stages: data (datasets, input scaling), training (train, export), formats
(model files, profiles, deployments, process specs), deploy (map, transfer,
audit, calibrate), simulation (fabricate chips, evaluate a fleet), backends (chips on stations).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_API: dict[str, str] = {
    # data
    "Dataset": "pnndeploy.data.datasets",
    "load_dataset": "pnndeploy.data.datasets",
    "InputScaling": "pnndeploy.data.scaling",
    # training and export
    "TrainConfig": "pnndeploy.training.config",
    "Method": "pnndeploy.training.methods.base",
    "get_method": "pnndeploy.training.methods",
    "load_config": "pnndeploy.training.config",
    "train": "pnndeploy.training.loop",
    "TrainResult": "pnndeploy.training.loop",
    "train_and_export": "pnndeploy.training.pipeline",
    "export_trained": "pnndeploy.training.pipeline",
    "TrainSummary": "pnndeploy.training.pipeline",
    "model_sharpness": "pnndeploy.training.sharpness",
    # model files
    "load_model": "pnndeploy.formats.onnx_io",
    "ExportedModel": "pnndeploy.formats.onnx_io",
    "onnx_logits": "pnndeploy.formats.onnx_io",
    # device profiles and simulated fleets
    "DeviceProfile": "pnndeploy.formats.profiles",
    "read_profile": "pnndeploy.formats.profiles",
    "write_profile": "pnndeploy.formats.profiles",
    "profile_summary": "pnndeploy.formats.profiles",
    "validate_profile": "pnndeploy.formats.profile_schema",
    "profiles_dir": "pnndeploy.formats.profile_folder",
    "list_profiles": "pnndeploy.formats.profile_folder",
    "resolve_device": "pnndeploy.formats.profile_folder",
    "load_process": "pnndeploy.formats.process_spec",
    "generate_chip": "pnndeploy.simulation.fabrication",
    "make_fleet": "pnndeploy.simulation.fabrication",
    # mapping and deployment files
    "map_model": "pnndeploy.deploy.mapping",
    "Deployment": "pnndeploy.formats.deployments",
    "write_deployment": "pnndeploy.formats.deployments",
    "read_deployment": "pnndeploy.formats.deployments",
    # evaluating a fleet, transfer and audit
    "SimulatedFleet": "pnndeploy.simulation.fleet",
    "Conditions": "pnndeploy.simulation.fleet",
    "stream_accuracy": "pnndeploy.simulation.fleet",
    "Compute": "pnndeploy.compute",
    "resolve_compute": "pnndeploy.compute",
    "prepare_fleet": "pnndeploy.deploy.transfer",
    "PreparedFleet": "pnndeploy.deploy.transfer",
    "transfer_report": "pnndeploy.deploy.transfer",
    "run_audit": "pnndeploy.deploy.audit",
    "SweepRange": "pnndeploy.deploy.audit",
    # spec-SAT's perturbation set and drift compensation at deployment
    "PerturbationSet": "pnndeploy.training.perturbation_set",
    "perturbation_set": "pnndeploy.training.perturbation_set",
    "DriftCompensation": "pnndeploy.simulation.compensation",
    "compensated_accuracy": "pnndeploy.simulation.compensation",
    "Compensation": "pnndeploy.simulation.compensation",
    "get_compensation": "pnndeploy.simulation.compensation",
    "PerturbationAxis": "pnndeploy.platforms.axes",
    # chips on stations: backends, calibration by measurement, in-situ training
    "ChipBackend": "pnndeploy.backends.base",
    "ChipInfo": "pnndeploy.backends.base",
    "LayerProgram": "pnndeploy.backends.base",
    "BackendError": "pnndeploy.backends.base",
    "open_backend": "pnndeploy.backends",
    "SimulatedChip": "pnndeploy.backends.simulated",
    "HardwareChip": "pnndeploy.deploy.hardware",
    "open_chip": "pnndeploy.deploy.hardware",
    "measure_calibration": "pnndeploy.deploy.calibration",
    "recalibrated": "pnndeploy.deploy.calibration",
    "InSituChip": "pnndeploy.training.in_situ",
    # errors
    "PnnError": "pnndeploy.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'pnndeploy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))

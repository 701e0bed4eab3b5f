"""`pnndeploy transfer`: map one model onto chips, write the deployments, report accuracy per chip and fleet."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pnndeploy.compute import CPU, Compute
from pnndeploy.data.datasets import load_dataset
from pnndeploy.deploy.mapping import map_models, repaired, uncalibrated
from pnndeploy.deploy.results import DeviceResult, FleetSummary, TransferReport, clipping_document, fault_document
from pnndeploy.deploy.stats import wilson_interval
from pnndeploy.errors import DatasetError, PnnError
from pnndeploy.deploy.executors import CHIPS_PER_TASK, fleet_accuracy, map_fleet
from pnndeploy.deploy.hardware import DEFAULT_TIMEOUT, HardwareChip, open_chip
from pnndeploy.formats.deployments import Deployment, deployment_path, write_deployment
from pnndeploy.formats.onnx_io import ExportedModel, load_model
from pnndeploy.formats.profile_folder import list_profiles, profiles_dir, resolve_device
from pnndeploy.formats.profiles import DeviceProfile, read_profile
from pnndeploy.platforms import get_platform
from pnndeploy.platforms.faults import faulty_mask
from pnndeploy.simulation.fleet import Conditions, SimulatedFleet


@dataclass
class EvaluationData:
    """The test split of the model's dataset, scaled as the model was trained."""

    name: str
    X: np.ndarray   # scaled to optical powers
    y: np.ndarray


@dataclass
class PreparedFleet:
    """A model mapped onto chips and ready to evaluate."""

    model: ExportedModel
    data: EvaluationData
    profiles: list[DeviceProfile]
    deployments: list[Deployment]
    deployment_files: list[str | None]
    #: The simulated chips among ``profiles`` (None when no chip is simulated here).
    fleet: SimulatedFleet | None
    #: Chips reached through their profile's backend, by device id (programmed and measured).
    hardware: dict[str, HardwareChip] = field(default_factory=dict)
    #: Where the deployments go once every chip has been measured (None: not written).
    save_dir: Path | None = None
    #: False when the chips were mapped through the nominal device (``transfer --uncalibrated``): blind to their
    #: calibration, faulty devices included.
    calibrated: bool = True

    @property
    def real_devices(self) -> list[str]:
        """Chips without a fabrication truth or a backend: mapped and written, but not evaluated."""
        return [p.device_id for p in self.profiles if not p.simulated and p.device_id not in self.hardware]

    @property
    def groups(self) -> list[SimulatedFleet | HardwareChip]:
        """Everything that can be evaluated: the simulated fleet, then each chip behind a backend."""
        return ([self.fleet] if self.fleet is not None else []) + list(self.hardware.values())

    def require_simulated(self, what: str) -> SimulatedFleet:
        """The simulated fleet, or a clear error when other chips are asked for ``what``."""
        others = self.real_devices + list(self.hardware)
        if others or self.fleet is None:
            raise PnnError(f"{what} needs simulated chips; {', '.join(others)} "
                           f"{'is a real chip' if len(others) == 1 else 'are real chips'}; leave "
                           f"{'it' if len(others) == 1 else 'them'} out for this")
        return self.fleet

    def require_measurable(self, what: str) -> None:
        """A clear error when some chip has neither a fabrication truth nor a backend."""
        if self.real_devices:
            raise PnnError(f"{what} needs chips it can measure; {', '.join(self.real_devices)} has no fabrication "
                           "truth and names no backend; connect it with `pnndeploy chip connect`, or leave it out")

    def write_deployments(self) -> None:
        """Write every chip's deployment file (after everything that could fail has succeeded)."""
        if self.save_dir is None:
            return
        for k, (profile, deployment) in enumerate(zip(self.profiles, self.deployments)):
            path = deployment_path(self.model.path, profile.device_id, self.save_dir)
            self.deployment_files[k] = str(write_deployment(deployment, path))
        self.save_dir = None

    def close(self) -> None:
        """Release every station."""
        for chip in self.hardware.values():
            chip.close()

    def __enter__(self) -> "PreparedFleet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def nominal_accuracy(self) -> float:
        return float((self.model.logits(self.data.X).argmax(1) == self.data.y).mean())


def load_evaluation_data(model: ExportedModel, dataset_spec: str | None = None) -> EvaluationData:
    """The model's test split (its dataset and seed from the metadata unless ``dataset_spec``)."""
    spec = dataset_spec or model.dataset
    try:
        dataset = load_dataset(spec, seed=model.metadata["seed"])   # the split the model was trained on
    except DatasetError as exc:
        if dataset_spec is not None:
            raise
        raise DatasetError(f"{exc} (model {model.path} was trained on {spec}; pass --dataset SPEC to "
                           "evaluate on another copy of it)") from None
    if dataset.n_features != model.n_features:
        raise DatasetError(f"dataset {spec}: {dataset.n_features} features but model {model.path} expects "
                           f"{model.n_features}; use the dataset the model was trained on")
    labels = [y for y in (dataset.y_train, dataset.y_test) if y.size]
    top = max((int(y.max()) for y in labels), default=-1)
    if top >= model.n_classes:
        # a class the model has no output for: the accuracy would silently count it as always wrong
        raise DatasetError(f"dataset {spec}: label {top} but model {model.path} knows "
                           f"{model.n_classes} classes (0..{model.n_classes - 1}); use the model's dataset")
    return EvaluationData(spec, model.scaling.apply(dataset.X_test), dataset.y_test)


def resolve_devices(devices: Sequence[str], use_fleet: bool, directory: Path) -> list[Path]:
    """Profile paths for ``--device`` names or every profile of ``--fleet``."""
    if use_fleet and devices:
        raise PnnError("give either --device NAME (repeatable) or --fleet, not both")
    if use_fleet:
        paths = list_profiles(directory)
        if not paths:
            raise PnnError(f"profiles folder {directory} holds no profiles; create a fleet with "
                           "`pnndeploy fleet make` or pass --profiles DIR")
        return paths
    if not devices:
        raise PnnError("no device given; pass --device NAME (repeatable) or --fleet")
    return [resolve_device(name, directory) for name in dict.fromkeys(devices)]


def prepare_fleet(model_path: str | Path, devices: Sequence[str], use_fleet: bool, profiles: Path | str | None,
                  dataset_spec: str | None = None, save_dir: Path | None = Path("deployments"),
                  on_device: Callable[[str], None] | None = None,
                  timeout: float = DEFAULT_TIMEOUT, stations: bool = True, insecure: bool = False,
                  compute: Compute = CPU, calibrated: bool = True, executor: str = "local",
                  address: str | None = None, chips_per_task: int = CHIPS_PER_TASK) -> PreparedFleet:
    """Load the model and profiles, map the model onto each chip, optionally write the deployments.

    ``profiles`` is the profiles folder; None: $PNNDEPLOY_PROFILES, else the default fleet of the model's
    platform (:func:`~pnndeploy.formats.profile_folder.profiles_dir`).  A chip whose profile names a
    backend is opened (``timeout`` s per exchange, ``insecure`` as in :func:`open_chip`), checked and programmed
    here; its deployment (and every other one) is then written only by :meth:`PreparedFleet.write_deployments`,
    after the measurement, so a station failing half-way leaves no deployment behind.  Close the result.
    ``stations=False`` leaves such chips out (the demo and sweeps work on simulated fleets only).  The
    simulated chips compute on ``compute`` (CPU threads or a CUDA device).  ``calibrated=False`` maps through the
    nominal device instead of each chip's calibration (the paper's in-silico transfer; nothing is saved then).
    ``executor="ray"`` maps the chips in Ray tasks of ``chips_per_task`` (:func:`map_fleet`), not in this process.
    """
    model = load_model(model_path)
    profiles = profiles_dir(profiles, model.platform)
    data = load_evaluation_data(model, dataset_spec)
    # read and check every input before writing anything, so a bad profile leaves no deployment behind
    profile_list: list[DeviceProfile] = []
    seen: dict[str, Path] = {}
    for path in resolve_devices(devices, use_fleet, profiles):
        profile = read_profile(path)
        if profile.backend is not None and not stations:
            continue
        if profile.device_id in seen:
            # two files of one chip would write the same deployment file and count the chip twice
            raise PnnError(f"profiles {seen[profile.device_id]} and {path} both hold device_id "
                           f"{profile.device_id!r}; remove the copy or regenerate one of them")
        seen[profile.device_id] = path
        profile_list.append(profile)
    with compute.running():       # --threads bounds the mapping too (a mesh maps batches of chips side by side)
        deployments = map_fleet(model, [profile if calibrated else uncalibrated(profile) for profile in profile_list],
                                executor, address, chips_per_task)
    if not calibrated:
        save_dir = None          # a deployment made blind to the chip is not one to program it with later
    # chips without truth or backend are mapped and written too (that is what a lab programs)
    simulated = [(p, d) for p, d in zip(profile_list, deployments) if p.simulated and p.backend is None]
    fleet = (SimulatedFleet(model, [p for p, _ in simulated], [d for _, d in simulated], compute)   # one array
             if simulated else None)
    prepared = PreparedFleet(model, data, profile_list, deployments, [None] * len(profile_list), fleet,
                             save_dir=None if save_dir is None else Path(save_dir), calibrated=calibrated)
    try:
        for profile, deployment in zip(profile_list, deployments):
            if profile.backend is not None:
                backend = open_chip(profile, timeout, insecure)
                try:
                    prepared.hardware[profile.device_id] = HardwareChip(model, profile, deployment, backend)
                except BaseException:
                    backend.close()
                    raise
            if on_device is not None:
                on_device(profile.device_id)
    except BaseException:
        prepared.close()
        raise
    if not prepared.hardware:
        prepared.write_deployments()        # nothing left that could fail
    return prepared


def accuracy_if_working(prepared: PreparedFleet, conditions: Conditions) -> dict[str, float]:
    """Each simulated chip with faulty devices, evaluated as if they worked (:func:`repaired`: the same chip
    otherwise), by device id: what `transfer` compares the chip with to say what its faults cost."""
    if prepared.fleet is None:
        return {}
    broken = [p for p in prepared.profiles if p.device_id in prepared.fleet.device_ids
              and faulty_mask(p.fabrication) is not None]
    if not broken:
        return {}
    twins = [repaired(p) for p in broken]
    with prepared.fleet.compute.running():
        mapped = map_models(prepared.model, twins if prepared.calibrated else [uncalibrated(p) for p in twins])
    fleet = SimulatedFleet(prepared.model, twins, mapped, prepared.fleet.compute)
    acc = fleet.accuracy(prepared.data.X, prepared.data.y, conditions)
    return {p.device_id: float(a) for p, a in zip(broken, acc)}


def _faults(prepared: PreparedFleet, profile: DeviceProfile, accuracy: float | None,
            if_working: float | None) -> dict[str, Any] | None:
    """The chip's faulty devices for its report (None when its calibration flags none)."""
    flagged = faulty_mask(profile.calibration)
    if flagged is None:
        return None
    platform = get_platform(profile.platform)
    per_weight = platform.linear and platform.held_weights(profile.calibration, profile.shape,
                                                           prepared.model.layers[0].shape) is not None
    # a ring bank places its outputs off them and its rows make up with the model's input moments (every layer
    # needs them); a mesh's fit works around them by itself; a mapping through the nominal device knows nothing
    moments = all(layer.name in prepared.model.input_moments for layer in prepared.model.layers)
    compensated = prepared.calibrated and (moments if per_weight else platform.faults_supported)
    return fault_document(profile.devices, int(flagged.sum()), compensated, accuracy, if_working)


def transfer_report(prepared: PreparedFleet, delta_T: float = 0.0, threshold: float = 0.9,
                    eval_seed: int = 0, executor: str = "local", address: str | None = None,
                    chips_per_task: int = CHIPS_PER_TASK) -> TransferReport:
    """A prepared fleet at a temperature offset (``to_json()``: the `transfer --json` document, DESIGN.md).

    ``executor="ray"`` evaluates the chips as Ray tasks of ``chips_per_task`` chips (the same numbers, bit
    for bit; :func:`~pnndeploy.deploy.executors.fleet_accuracy`).
    """
    measured: dict[str, float] = {}
    conditions = Conditions(delta_T=delta_T, eval_seed=eval_seed)
    if prepared.fleet is not None:
        acc = fleet_accuracy(prepared, conditions, executor, address, chips_per_task)
        measured = dict(zip(prepared.fleet.device_ids, (float(a) for a in acc)))
    invalid: dict[str, int] = {}
    for name, chip in prepared.hardware.items():
        a = float(chip.accuracy(prepared.data.X, prepared.data.y, conditions)[0])
        chip.restore()                      # the station back at its calibration temperature
        invalid[name] = chip.invalid
        measured[name] = None if np.isnan(a) else a
    prepared.write_deployments()            # every chip answered: now the deployments may be written
    working = accuracy_if_working(prepared, conditions)
    nominal = prepared.nominal_accuracy()
    n_all = int(prepared.data.y.size)
    devices = []
    for k, profile in enumerate(prepared.profiles):
        a = measured.get(profile.device_id)
        n = n_all - invalid.get(profile.device_id, 0)
        devices.append(DeviceResult(
            device=profile.device_id, simulated=profile.simulated,
            # where the accuracy comes from: the simulator, a backend's measurements, or nothing
            evaluated_by=(f"backend:{profile.backend.kind}" if profile.device_id in prepared.hardware
                          else "simulator" if profile.simulated else None),
            accuracy=a, ci95=list(wilson_interval(a, n)) if a is not None else None,
            delta_vs_nominal=a - nominal if a is not None else None,
            invalid_samples=invalid.get(profile.device_id, 0), clipped_weights=prepared.deployments[k].clipped,
            mapping_residual=[float(layer.residual) for layer in prepared.deployments[k].layers],
            deployment=prepared.deployment_files[k], calibration_measured_at=profile.calibration_measured_at,
            clipping=clipping_document(prepared.deployments[k]),
            faults=_faults(prepared, profile, a, working.get(profile.device_id))))
    evaluated = [d for d in devices if d.accuracy is not None]
    return TransferReport(
        model=str(prepared.model.path), model_sha256=prepared.model.sha256, method=prepared.model.method,
        dataset=prepared.data.name, samples=n_all, nominal_accuracy=nominal, temperature_delta_K=float(delta_T),
        devices=devices, fleet=FleetSummary.of([d.device for d in evaluated], [d.accuracy for d in evaluated],
                                               threshold) if evaluated else None)

"""Map a model's logical weights onto one chip, through that chip's calibration only.

The platform maps each on-chip layer (:meth:`~pnndeploy.platforms.base.Platform.map_layer`):
for a ring bank, per weight, the inverse transfer function with the calibrated
parameters, minus the measured offset, quantised to the DAC; for a mesh, a
decomposition of the target through the calibrated mesh model; both
pre-compensate the chip's known heater crosstalk.  Weights the chip cannot
reach, and settings beyond the heater range, are clipped and counted by cause
(:class:`~pnndeploy.platforms.base.Clipping`), and the residual ||W realised - W target|| of the calibrated model is
recorded per layer.  The mapper never reads the fabrication truth: that is
what the chip *is*, the calibration is what the lab *measured*.  The result is
a :class:`~pnndeploy.formats.deployments.Deployment`, which
:mod:`pnndeploy.formats.deployments` writes to a file.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from pnndeploy.errors import ProfileError
from pnndeploy.formats.deployments import Deployment, LayerDeployment
from pnndeploy.formats.onnx_io import ExportedModel
from pnndeploy.formats.profiles import DeviceProfile
from pnndeploy.platforms import get_platform, platform_for


def check_compatible(model: ExportedModel, profile: DeviceProfile) -> None:
    """Refuse a profile of another platform than the model's."""
    if profile.platform != model.platform:
        raise ProfileError(
            f"device {profile.device_id!r} is a {profile.platform} chip but model {model.path} was trained "
            f"for {model.platform}; use a {model.platform} profile or retrain for {profile.platform}")
    problem = platform_for(model.platform, model.platform_params).mismatch(profile.chip_platform, profile.shape)
    if problem:
        raise ProfileError(f"device {profile.device_id!r} cannot run model {model.path}: {problem}")


def map_model(model: ExportedModel, profile: DeviceProfile) -> Deployment:
    """Control settings realising ``model`` on ``profile``'s chip, from its calibration only."""
    return map_models(model, [profile])[0]


def map_models(model: ExportedModel, profiles: Sequence[DeviceProfile]) -> list[Deployment]:
    """:func:`map_model` for every chip of a fleet, in order: each layer mapped onto all chips of one layout at
    once (:meth:`~pnndeploy.platforms.base.Platform.map_fleet_layer`: a fitting platform solves them together)."""
    for profile in profiles:
        check_compatible(model, profile)
    platform = platform_for(model.platform, model.platform_params)
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, profile in enumerate(profiles):
        groups.setdefault(tuple(profile.shape), []).append(k)
    layers: list[list[LayerDeployment]] = [[] for _ in profiles]
    for shape, members in groups.items():
        chips = [profiles[k] for k in members]
        for layer in model.layers:
            mapped = platform.map_fleet_layer(layer.weight, layer.controls, [p.calibration for p in chips],
                                              [p.environment for p in chips], shape, model.platform_params,
                                              layer.shape)
            for k, m in zip(members, mapped):
                layers[k].append(LayerDeployment(layer.name, m.settings, m.clipped, m.residual, m.clipping))
    return [Deployment(device_id=p.device_id, model_sha256=model.sha256, model_path=str(model.path),
                       calibration_measured_at=p.calibration_measured_at, array=p.shape, layers=layers[k],
                       control_units=platform.control_units) for k, p in enumerate(profiles)]


def uncalibrated(profile: DeviceProfile) -> DeviceProfile:
    """The profile as a deployment that ignores the chip's measurements sees it: calibration = the drawing.

    Zero offsets, the platform's nominal device parameters and no crosstalk; the fabrication truth (and the
    environment a simulation uses) is kept, so evaluating the result shows what skipping calibration costs
    (the paper's in-silico transfer).
    """
    platform = get_platform(profile.platform)
    nominal = {platform.offset_name: np.zeros(platform.field_shape(platform.offset_name, profile.shape))}
    nominal.update({k: np.full(platform.field_shape(k, profile.shape), float(v)) for k, v in platform.nominal.items()})
    return dataclasses.replace(profile, calibration=nominal,
                               environment=dataclasses.replace(profile.environment, crosstalk=0.0))

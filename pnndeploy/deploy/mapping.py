"""Map a model's logical weights onto one chip, through that chip's calibration only.

The platform maps each on-chip layer (:meth:`~pnndeploy.platforms.base.Platform.map_layer`):
for a ring bank, per weight, the inverse transfer function with the calibrated
parameters, minus the measured offset, quantised to the DAC; for a mesh, a
decomposition of the target through the calibrated mesh model; both
pre-compensate the chip's known heater crosstalk.  Weights the chip cannot
reach, and settings beyond the heater range, are clipped and counted by cause
(:class:`~pnndeploy.platforms.base.Clipping`), and the residual ||W realised - W target|| of the calibrated model is
recorded per layer.  A device the calibration flags faulty is held at rest, and where each weight has its own
device the other weights of its row make up for it (:mod:`pnndeploy.deploy.fault_compensation`); the residual is
then measured against the compensated weights.  The mapper never reads the fabrication truth: that is
what the chip *is*, the calibration is what the lab *measured*.  The result is
a :class:`~pnndeploy.formats.deployments.Deployment`, which
:mod:`pnndeploy.formats.deployments` writes to a file.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from pnndeploy.deploy.fault_compensation import compensate_held, output_importance, place_rows
from pnndeploy.errors import ProfileError
from pnndeploy.formats.deployments import Deployment, LayerDeployment
from pnndeploy.formats.onnx_io import ExportedModel
from pnndeploy.formats.profiles import DeviceProfile
from pnndeploy.platforms import get_platform, platform_for
from pnndeploy.platforms.faults import faulty_mask, resting_truth


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
    once (:meth:`~pnndeploy.platforms.base.Platform.map_fleet_layer`: a fitting platform solves them together),
    except a chip whose faulty devices each hold one weight (a ring bank's), mapped around them on its own."""
    for profile in profiles:
        check_compatible(model, profile)
    platform = platform_for(model.platform, model.platform_params)
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, profile in enumerate(profiles):
        groups.setdefault(tuple(profile.shape), []).append(k)
    layers: list[list[LayerDeployment]] = [[] for _ in profiles]
    for shape, members in groups.items():
        for index, layer in enumerate(model.layers):
            together = []
            for k in members:                  # a chip with faulty devices of its own per weight: mapped around them
                held = platform.held_weights(profiles[k].calibration, shape, layer.shape) if platform.linear else None
                if held is not None:
                    layers[k].append(_map_around_faults(platform, model, index, profiles[k], held))
                else:
                    together.append(k)
            if not together:
                continue
            chips = [profiles[k] for k in together]
            mapped = platform.map_fleet_layer(layer.weight, layer.controls, [p.calibration for p in chips],
                                              [p.environment for p in chips], shape, model.platform_params,
                                              layer.shape)
            for k, m in zip(together, mapped):
                layers[k].append(LayerDeployment(layer.name, m.settings, m.clipped, m.residual, m.clipping))
    return [Deployment(device_id=p.device_id, model_sha256=model.sha256, model_path=str(model.path),
                       calibration_measured_at=p.calibration_measured_at, array=p.shape, layers=layers[k],
                       control_units=platform.control_units) for k, p in enumerate(profiles)]


def _map_around_faults(platform: Any, model: ExportedModel, k: int, profile: DeviceProfile,
                       held: tuple[np.ndarray, np.ndarray]) -> LayerDeployment:
    """Layer ``k`` on a chip whose calibration flags faulty devices under single weights (``held``: which, and what
    they give): its outputs placed on the rows where they cost least, each row's working weights making up for its
    faulty ones, then mapped."""
    layer = model.layers[k]
    weight, controls, rows, held = _placed(platform, model, k, profile, held)
    weight = compensate_held(weight, *held, model.input_moments.get(layer.name))
    shape = layer.shape if rows is None else weight.shape        # a placed layer: whole tiles of rows
    mapped = platform.map_layer(weight, controls, profile.calibration, profile.environment, profile.shape,
                                model.platform_params, shape)
    return LayerDeployment(layer.name, mapped.settings, mapped.clipped, mapped.residual, mapped.clipping, rows)


def _placed(platform: Any, model: ExportedModel, k: int, profile: DeviceProfile,
            held: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None,
                                                          tuple[np.ndarray, np.ndarray]]:
    """Layer ``k``'s weights and controls on the rows :func:`place_rows` gives its outputs on this chip (padding
    rows NaN: not programmed), those rows (None: as they are), and the faulty devices under the placed layer
    (``held``: those under the layer as it is)."""
    layer = model.layers[k]
    (out, n_in), period = layer.shape, platform.row_period(profile.shape)
    if not period:
        return layer.weight, layer.controls, None, held
    physical = -(-out // period) * period
    padded = platform.held_weights(profile.calibration, profile.shape, (physical, n_in))
    rows = place_rows(padded[0], model.input_moments.get(layer.name),
                      output_importance(model.layers, model.input_moments, k))
    if rows is None:
        return layer.weight, layer.controls, None, held
    weight = np.full((physical, n_in), np.nan)
    weight[rows] = layer.weight
    controls = np.zeros((physical, n_in), dtype=np.float32)
    controls[rows] = layer.controls
    return weight, controls, rows, padded


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


def repaired(profile: DeviceProfile) -> DeviceProfile:
    """A simulated chip as it would be had its faulty devices worked: the same chip otherwise (every other drawn
    number, its environment), each faulty device's truth without its fault and calibrated to its truth (the few
    devices a recalibration would then measure), and its neighbours' calibrated offsets without a stuck drive's
    heat.  What `transfer` compares a chip with to say what its faults cost."""
    platform = get_platform(profile.platform)
    faulty = faulty_mask(profile.fabrication)
    if faulty is None:
        return profile
    rest = resting_truth(platform, profile.fabrication, profile.environment.crosstalk, profile.shape)
    fabrication = {k: v for k, v in profile.fabrication.items() if k not in ("faulty", "stuck_setting")}
    calibration = {k: v for k, v in profile.calibration.items() if k != "faulty"}
    name = platform.offset_name
    calibration[name] = calibration[name] - (rest[name] - fabrication[name])      # no stuck drive, no spill
    for key in (name, *platform.param_units):
        calibration[key] = np.where(faulty if np.shape(faulty) == np.shape(fabrication[key]) else False,
                                    fabrication[key], calibration[key])
    return dataclasses.replace(profile, fabrication=fabrication, calibration=calibration)


def fault_blind(profile: DeviceProfile) -> DeviceProfile:
    """The profile as a mapper that ignores the calibration's faulty flags sees it (what mapping did before it
    knew of faulty devices): every device programmed as if it worked."""
    if "faulty" not in profile.calibration:
        return profile
    return dataclasses.replace(profile, calibration={k: v for k, v in profile.calibration.items() if k != "faulty"})

"""Map a model's logical weights onto one chip's devices, through that chip's calibration only.

Per weight (o, i) of an on-chip layer, on ring (o mod R, i mod C) of the R x C
array (a layer larger than the array is tiled onto it, reusing the rings over
time):

1. target control x* = inverse(W; calibrated device parameters), on the
   branch (sign) of the control training chose;
2. setting h = x* - measured offset (the heater must cancel the offset);
3. h quantised to the DAC over the heater range.

Weights the device cannot reach, and settings beyond the heater range, are
clipped and counted.  The mapper never reads the fabrication truth: that is
what the chip *is*, the calibration is what the lab *measured*.  The result is
a :class:`~pnndeploy.formats.deployments.Deployment`, which
:mod:`pnndeploy.formats.deployments` writes to a file.
"""

from __future__ import annotations

import numpy as np

from pnndeploy.errors import ProfileError
from pnndeploy.formats.deployments import Deployment, LayerDeployment
from pnndeploy.formats.onnx_io import ExportedModel
from pnndeploy.formats.profiles import DeviceProfile
from pnndeploy.platforms import get_platform
from pnndeploy.platforms.tiling import ring_index


def quantise(settings: np.ndarray, heater_range: tuple[float, float], bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Settings on the DAC grid of ``bits`` over ``heater_range``; returns (quantised, in-range mask)."""
    lo, hi = heater_range
    step = (hi - lo) / (2 ** bits - 1)
    inside = (settings >= lo) & (settings <= hi)
    codes = np.round((np.clip(settings, lo, hi) - lo) / step)
    return lo + codes * step, inside


def check_compatible(model: ExportedModel, profile: DeviceProfile) -> None:
    """Refuse a profile of another platform than the model's."""
    if profile.platform != model.platform:
        raise ProfileError(
            f"device {profile.device_id!r} is a {profile.platform} chip but model {model.path} was trained "
            f"for {model.platform}; use a {model.platform} profile or retrain for {profile.platform}")


def map_model(model: ExportedModel, profile: DeviceProfile) -> Deployment:
    """Heater settings realising ``model`` on ``profile``'s chip, from its calibration only."""
    check_compatible(model, profile)
    platform = get_platform(model.platform)
    env = profile.environment
    layers = []
    for layer in model.layers:
        ri, ci = ring_index(layer.weight.shape, profile.shape)
        params = {k: profile.calibration[k][ri, ci] for k in platform.param_units}
        sign = np.where(layer.controls < 0, -1.0, 1.0)
        # the heater range, not the training range, limits what the chip can reach
        target, reachable = platform.inverse(layer.weight.astype(np.float64), sign, np.inf, **params)
        raw = target - profile.calibration[platform.offset_name][ri, ci]
        settings, inside = quantise(raw, env.heater_range, env.dac_bits)
        layers.append(LayerDeployment(layer.name, settings, int((~(reachable & inside)).sum())))
    return Deployment(device_id=profile.device_id, model_sha256=model.sha256, model_path=str(model.path),
                      calibration_measured_at=profile.calibration_measured_at, array=profile.shape,
                      layers=layers, control_units=platform.control_units)

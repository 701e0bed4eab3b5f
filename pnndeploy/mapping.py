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
what the chip *is*, the calibration is what the lab *measured*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from pnndeploy import __version__
from pnndeploy.atomic import atomic_path
from pnndeploy.errors import PnnError, ProfileError
from pnndeploy.onnx_io import ExportedModel
from pnndeploy.platforms import get_platform
from pnndeploy.profiles import HDF5_LIBVER, DeviceProfile, check_device_name, h5_array_options

DEPLOYMENT_FORMAT = 1


def ring_index(shape: tuple[int, int], array: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the ring that holds each weight of a (out, in) layer."""
    out_f, in_f = shape
    rows, cols = array
    return np.arange(out_f)[:, None] % rows + np.zeros((1, in_f), dtype=np.int64), \
        np.zeros((out_f, 1), dtype=np.int64) + np.arange(in_f)[None, :] % cols


def quantise(settings: np.ndarray, heater_range: tuple[float, float], bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Settings on the DAC grid of ``bits`` over ``heater_range``; returns (quantised, in-range mask)."""
    lo, hi = heater_range
    step = (hi - lo) / (2 ** bits - 1)
    inside = (settings >= lo) & (settings <= hi)
    codes = np.round((np.clip(settings, lo, hi) - lo) / step)
    return lo + codes * step, inside


@dataclass
class LayerDeployment:
    """Heater settings for one on-chip layer, in the platform's control units."""

    name: str
    settings: np.ndarray   # (out, in) float64, quantised
    clipped: int           # weights unreachable by the device or by the heater


@dataclass
class Deployment:
    """What would be programmed into one chip for one model."""

    device_id: str
    model_sha256: str
    model_path: str
    calibration_measured_at: str
    array: tuple[int, int]
    layers: list[LayerDeployment]
    tool_version: str = __version__
    control_units: str = ""
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def clipped(self) -> int:
        return sum(layer.clipped for layer in self.layers)


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


def deployment_path(model_path: str | Path, device_id: str, directory: str | Path = "deployments") -> Path:
    """``deployments/MODEL@DEVICE.h5`` for a model file and a device name."""
    check_device_name(device_id)
    return Path(directory) / f"{Path(model_path).stem}@{device_id}.h5"


def write_deployment(deployment: Deployment, path: str | Path) -> Path:
    """Write the settings atomically (HDF5, one dataset per layer with units)."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w", libver=HDF5_LIBVER) as f:
                f.attrs["format_version"] = DEPLOYMENT_FORMAT
                f.attrs["device_id"] = deployment.device_id
                f.attrs["model_sha256"] = deployment.model_sha256
                f.attrs["model_path"] = deployment.model_path
                f.attrs["calibration_measured_at"] = deployment.calibration_measured_at
                f.attrs["tool_version"] = deployment.tool_version
                f.attrs["created"] = deployment.created
                f.attrs["array"] = np.asarray(deployment.array, dtype=np.int64)
                group = f.create_group("settings", track_order=True)
                for index, layer in enumerate(deployment.layers):
                    ds = group.create_dataset(layer.name, data=layer.settings,
                                              **h5_array_options(np.asarray(layer.settings)))
                    ds.attrs["units"] = deployment.control_units
                    ds.attrs["index"] = index
                    ds.attrs["clipped"] = layer.clipped
    except OSError as exc:
        raise PnnError(f"cannot write deployment {path}: {exc.strerror or exc}; check the folder "
                       "is writable or pass --no-save") from None
    return path


def read_deployment(path: str | Path) -> Deployment:
    """Read a deployment file written by :func:`write_deployment`."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            ordered = sorted(f["settings"].items(), key=lambda item: int(item[1].attrs["index"]))
            layers = [LayerDeployment(name, np.asarray(ds[()], dtype=np.float64), int(ds.attrs["clipped"]))
                      for name, ds in ordered]
            units = {str(ds.attrs["units"]) for ds in f["settings"].values()}
            return Deployment(
                device_id=str(f.attrs["device_id"]), model_sha256=str(f.attrs["model_sha256"]),
                model_path=str(f.attrs["model_path"]),
                calibration_measured_at=str(f.attrs["calibration_measured_at"]),
                array=tuple(int(v) for v in f.attrs["array"]), layers=layers,
                tool_version=str(f.attrs["tool_version"]), control_units=units.pop() if units else "",
                created=str(f.attrs["created"]))
    except (OSError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise PnnError(f"deployment {path}: cannot read it ({' '.join(str(exc).split())}); regenerate it with "
                       "`pnndeploy transfer`") from None

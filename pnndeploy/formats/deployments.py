"""Deployment files, ``deployments/MODEL@DEVICE.h5``: what would be programmed into one chip for one model.

One dataset per on-chip layer (the quantised control settings, with units), the
model's sha256, the profile's calibration time and the tool's version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pnndeploy import __version__
from pnndeploy.atomic import atomic_path
from pnndeploy.errors import PnnError
from pnndeploy.formats.hdf5 import HDF5_LIBVER, h5_array_options, open_hdf5
from pnndeploy.formats.profile_folder import check_device_name
from pnndeploy.platforms.base import CLIP_CAUSES, Clipping
from pnndeploy.untrusted import FileProblem, brief

DEPLOYMENT_FORMAT = 1
#: The format of a deployment with a placed layer (``rows``): a reader that does not know placement must refuse it
#: rather than read a layer's padding rows as outputs.
PLACED_FORMAT = 2


@dataclass
class LayerDeployment:
    """Control settings for one on-chip layer, in the platform's control units."""

    name: str
    settings: np.ndarray   # float64, quantised; (out, in) for a ring bank, per tile and phase for a mesh
    clipped: int           # weights unreachable by the device or by the heater
    #: ||W realised by the calibrated model - W target||_F (the mapping's own error, before drift and noise).
    residual: float = float("nan")
    #: ``clipped`` by cause (reach, range, faulty) out of the layer's devices; None from a file written before
    #: the causes were recorded.
    clipping: Clipping | None = None
    #: Where each logical output sits: the row of ``settings`` (the ring bank's row, tiled) that computes output i
    #: (distinct, int64); None: output i on row i.  Set when mapping moved outputs off faulty devices, and then
    #: ``settings`` may have more rows than the layer has outputs (the others are not programmed).
    rows: np.ndarray | None = None


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

    @property
    def clipping(self) -> Clipping | None:
        """The layers' clipping by cause, summed (None when a layer does not know its causes)."""
        causes = [layer.clipping for layer in self.layers]
        if not causes or any(c is None for c in causes):
            return None
        return sum(causes[1:], causes[0])


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
                placed = any(layer.rows is not None for layer in deployment.layers)
                f.attrs["format_version"] = PLACED_FORMAT if placed else DEPLOYMENT_FORMAT
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
                    if layer.clipping is not None:
                        ds.attrs["devices"] = layer.clipping.devices
                        for cause in CLIP_CAUSES:
                            ds.attrs[f"clipped_{cause}"] = getattr(layer.clipping, cause)
                    ds.attrs["residual"] = np.float64(layer.residual)
                    if layer.rows is not None:
                        ds.attrs["rows"] = np.asarray(layer.rows, dtype=np.int64)
    except OSError as exc:
        raise PnnError(f"cannot write deployment {path}: {exc.strerror or exc}; check the folder "
                       "is writable or pass --no-save") from None
    return path


def read_deployment(path: str | Path) -> Deployment:
    """Read a deployment file written by :func:`write_deployment`.

    The file may come from elsewhere: it is opened only if it is a regular file whose structure passes
    :func:`~pnndeploy.formats.hdf5.structure_problems` (values inside the file, bounded sizes, no links
    out), and a settings array is read only once its declared type is a number.
    """
    path = Path(path)
    fix = "regenerate it with `pnndeploy transfer`"
    try:
        with open_hdf5(path) as f:
            version = f.attrs.get("format_version", DEPLOYMENT_FORMAT)
            if not isinstance(version, (int, np.integer)) or not DEPLOYMENT_FORMAT <= int(version) <= PLACED_FORMAT:
                raise PnnError(f"deployment {path}: format_version {brief(version, 20)} is not one this pnndeploy "
                               f"reads ({DEPLOYMENT_FORMAT} or {PLACED_FORMAT}); upgrade pnndeploy or {fix}")
            settings = f["settings"]
            for name, ds in settings.items():
                if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fiu":
                    raise PnnError(f"deployment {path}: 'settings/{brief(name, 40, quote=False)}' is not an array "
                                   f"of numbers; {fix}")
            ordered = sorted(settings.items(), key=lambda item: int(item[1].attrs["index"]))
            layers = [LayerDeployment(name, np.asarray(ds[()], dtype=np.float64), int(ds.attrs["clipped"]),
                                      float(ds.attrs.get("residual", np.nan)), _clipping(ds.attrs),
                                      _rows(ds, path, fix))
                      for name, ds in ordered]
            units = {str(ds.attrs["units"]) for ds in settings.values()}
            return Deployment(
                device_id=str(f.attrs["device_id"]), model_sha256=str(f.attrs["model_sha256"]),
                model_path=str(f.attrs["model_path"]),
                calibration_measured_at=str(f.attrs["calibration_measured_at"]),
                array=tuple(int(v) for v in f.attrs["array"]), layers=layers,
                tool_version=str(f.attrs["tool_version"]), control_units=units.pop() if units else "",
                created=str(f.attrs["created"]))
    except FileNotFoundError:
        raise PnnError(f"deployment {path}: file not found; check the path or {fix}") from None
    except FileProblem as exc:
        raise PnnError(f"deployment {path}: {exc.text}; {fix}") from None
    except (OSError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise PnnError(f"deployment {path}: cannot read it ({brief(' '.join(str(exc).split()), 200, quote=False)}); "
                       f"{fix}") from None


def _rows(ds: Any, path: Path, fix: str) -> np.ndarray | None:
    """A layer's output placement (``rows`` attribute): distinct rows of its settings; None when it has none."""
    if "rows" not in ds.attrs:
        return None
    rows = np.asarray(ds.attrs["rows"])
    if rows.ndim != 1 or rows.dtype.kind not in "iu" or not len(ds.shape) or len(np.unique(rows)) != len(rows) \
            or (rows.size and (rows.min() < 0 or rows.max() >= ds.shape[0])):
        raise PnnError(f"deployment {path}: 'settings/{brief(ds.name.split('/')[-1], 40, quote=False)}' has a "
                       f"'rows' placement that is not distinct rows of its settings; {fix}")
    return rows.astype(np.int64)


def _clipping(attrs: Any) -> Clipping | None:
    """A layer's clipping by cause from its dataset's attributes; None for a file written before they were."""
    if "devices" not in attrs:
        return None
    return Clipping(int(attrs["devices"]), *(int(attrs.get(f"clipped_{cause}", 0)) for cause in CLIP_CAUSES))

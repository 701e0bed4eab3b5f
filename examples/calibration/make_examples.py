"""Make this folder's example files from the shipped chipB (run from the repository root).

    python examples/calibration/make_examples.py

* ``chipB_parameters.csv``: chipB's calibration as fitted parameters (``pnndeploy profile import chipB`` reads it
  back to the same calibration, bit for bit);
* ``chipB2x2.h5``: the top-left 2 x 2 rings of chipB as a profile of its own (truth, calibration, environment);
* ``chipB2x2_sweeps.csv``: a 64-point sweep of each of its rings from its truth, with 0.002 detector noise, as a lab
  would measure it (``pnndeploy profile import chipB2x2 ... --profiles examples/calibration`` fits it).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from pnndeploy.deploy.calibration import sweep_controls
from pnndeploy.deploy.calibration_import import parameters_csv
from pnndeploy.formats.profiles import read_profile, write_profile
from pnndeploy.platforms import get_platform

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def cut(profile, rows: int, cols: int):
    """The top-left rows x cols devices of ``profile`` as a profile of their own (no history)."""
    part = {k: np.ascontiguousarray(v[:rows, :cols]) for k, v in profile.calibration.items()}
    truth = {k: np.ascontiguousarray(v[:rows, :cols]) for k, v in profile.fabrication.items()}
    env = dataclasses.replace(profile.environment,
                              drift_coefficient=np.ascontiguousarray(profile.environment.drift_coefficient[:rows, :cols]))
    return dataclasses.replace(profile, device_id=f"{profile.device_id}{rows}x{cols}", shape=(rows, cols),
                               calibration=part, fabrication=truth, environment=env, calibration_history=[])


def sweep_csv(profile, points: int = 64, noise: float = 0.002, seed: int = 0) -> str:
    """``row,col,setting_nm,measured_1``: each device swept alone over the heater range, from its truth."""
    platform = get_platform(profile.platform)
    controls = sweep_controls(profile, points)
    rows, cols = (g.ravel() for g in np.indices(profile.shape))
    measured = platform.device_response(profile.fabrication, profile.environment.drift_coefficient, rows, cols,
                                        controls, 0.0)
    measured = measured + np.random.default_rng(seed).normal(0.0, noise, measured.shape)
    lines = ["row,col,setting_nm,measured_1"]
    for d, (r, c) in enumerate(zip(rows, cols)):
        lines += [f"{r},{c},{x:.6f},{w:.6f}" for x, w in zip(controls, measured[d])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    chip = read_profile(REPO / "device_profiles" / "chipB.h5")
    (HERE / "chipB_parameters.csv").write_text(parameters_csv(chip))
    small = cut(chip, 2, 2)
    write_profile(small, HERE / f"{small.device_id}.h5")
    (HERE / f"{small.device_id}_sweeps.csv").write_text(sweep_csv(small))
    print(f"wrote chipB_parameters.csv, {small.device_id}.h5, {small.device_id}_sweeps.csv in {HERE}")

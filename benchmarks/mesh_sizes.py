"""A fleet's mesh realisation at each mesh size: the coherent MZI mesh at 16, 32 and 64 modes and the paper's
64-mode mesh read by intensity, each chip's meshes realised again at a new drift (what an audit's sweep does).

    python benchmarks/mesh_sizes.py [--chips 128] [--repeats 3] [--mesh-kernel compiled|torch|auto] [--json]

Every chip of a size is the same drawn chip with the same random settings (the cost does not depend on their
values); the coherent layer is 128 x 128 (64 blocks of a 16-mode mesh, 16 of 32, 4 of 64), the intensity layer
64 -> 10 on one 64-mode mesh with 360 samples (the digits test set's size).  Figures are the best of
``--repeats``; run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pnndeploy.formats.process_spec import load_process  # noqa: E402
from pnndeploy.platforms import get_platform  # noqa: E402
from pnndeploy.platforms.base import ChipState  # noqa: E402
from pnndeploy.simulation.fabrication import generate_chip  # noqa: E402
from run import add_mesh_kernel_option, best_of, use_mesh_kernel  # noqa: E402

COHERENT_SHAPE = (128, 128)
INTENSITY_SHAPE = (10, 64)
SAMPLES = 360


def warm_best_of(fn: Callable[[], Any], repeats: int) -> float:
    """:func:`run.best_of` after one untimed call (first-call costs: imports, caches)."""
    fn()
    return best_of(fn, repeats)


def new_drifts() -> Callable[[], ChipState]:
    """A new temperature at every call: each evaluation realises every mesh again."""
    values = iter(np.arange(1, 10 ** 6) * 1e-3)
    return lambda: ChipState(torch.tensor(float(next(values))))


def coherent_row(n: int, chips: int, repeats: int) -> dict:
    spec = copy.deepcopy(load_process(ROOT / "device_profiles" / "mzi" / "process.yaml"))
    spec["array"] = {"rows": n, "cols": n}
    platform = get_platform("mzi").configure({"modes": n})
    chip = generate_chip(spec, "chipS0", seed=1)
    settings = np.random.default_rng(0).uniform(0, 2 * np.pi, platform.control_shape(COHERENT_SHAPE))
    state = platform.fleet_layer(COHERENT_SHAPE, [settings] * chips, [chip] * chips, chip.shape)
    drift = new_drifts()
    seconds = warm_best_of(lambda: platform.fleet_weights(state, slice(0, chips), drift()), repeats)
    meshes = chips * (COHERENT_SHAPE[0] // n) * (COHERENT_SHAPE[1] // n)
    return {"read_out": "coherent", "modes": n, "chips": chips, "layer": list(COHERENT_SHAPE), "seconds": seconds,
            "us_per_mesh": 1e6 * seconds / meshes}


def intensity_row(chips: int, repeats: int) -> dict:
    platform = get_platform("mzi").configure({"modes": 64, "detection": "intensity"})
    chip = generate_chip(load_process(ROOT / "examples" / "paper" / "mzi64-process.yaml"), "chipS0", seed=1)
    settings = np.random.default_rng(0).uniform(0, 2 * np.pi, platform.control_shape(INTENSITY_SHAPE))
    state = platform.fleet_layer(INTENSITY_SHAPE, [settings] * chips, [chip] * chips, chip.shape)
    x = torch.rand(INTENSITY_SHAPE[1], SAMPLES, generator=torch.Generator().manual_seed(0))
    drift = new_drifts()
    seconds = warm_best_of(lambda: platform.fleet_forward(state, slice(0, chips), x, drift()), repeats)
    return {"read_out": "intensity", "modes": 64, "chips": chips, "layer": list(INTENSITY_SHAPE), "seconds": seconds,
            "us_per_mesh": 1e6 * seconds / chips, "samples": SAMPLES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chips", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    add_mesh_kernel_option(parser)
    args = parser.parse_args()
    use_mesh_kernel(args.mesh_kernel)
    rows = [coherent_row(n, args.chips, args.repeats) for n in (16, 32, 64)] + [intensity_row(args.chips,
                                                                                             args.repeats)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(f"{r['read_out']:>9} {r['modes']:>3} modes, {r['chips']} chips, layer {r['layer'][0]} x "
              f"{r['layer'][1]}: {1000 * r['seconds']:7.1f} ms ({r['us_per_mesh']:.0f} us a mesh)")


if __name__ == "__main__":
    main()

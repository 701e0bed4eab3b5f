"""Shared, session-scoped fixtures: the digits data, a tiny slice of it, and one tiny exported model.

Everything is kept small (hidden width 8, 2 epochs) so the training-related test files stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from pnndeploy.data.datasets import Dataset, load_dataset

# The models here are tiny: intra-op threads buy nothing, and on a shared 2-core machine the OpenMP
# workers of a second thread spin-wait against other processes (a 1 s training then takes 20 s+).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    """The embedded digits set, split with seed 0."""
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="session")
def tiny_digits(digits: Dataset) -> Dataset:
    """160 training and 60 test samples of digits, with the full set's scaling."""
    return Dataset(
        name="digits-tiny",
        X_train=np.ascontiguousarray(digits.X_train[:160]),
        y_train=np.ascontiguousarray(digits.y_train[:160]),
        X_test=np.ascontiguousarray(digits.X_test[:60]),
        y_test=np.ascontiguousarray(digits.y_test[:60]),
        n_classes=digits.n_classes,
        scaling=digits.scaling,
    )


@dataclass
class TinyExport:
    path: Path
    summary: object
    result: object
    dataset: Dataset


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory, digits: Dataset) -> TinyExport:
    """A SAT model (hidden [8], 2 epochs, seed 0) exported alone into a fresh folder."""
    from pnndeploy.training.config import TrainConfig
    from pnndeploy.training.pipeline import train_and_export

    folder = tmp_path_factory.mktemp("tiny_export")
    path = folder / "model.onnx"
    summary, result = train_and_export(digits, TrainConfig(method="sat", epochs=2, hidden=[8], seed=0), path)
    return TinyExport(path=path, summary=summary, result=result, dataset=digits)


# ------------------------------------------------------------------ deployment, fleet and CLI helpers

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_PROFILES = REPO_ROOT / "device_profiles"
SHIPPED_PROCESS = SHIPPED_PROFILES / "process.yaml"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a long end-to-end run (deselect with -m 'not slow')")


@pytest.fixture(scope="session")
def shipped_process() -> dict:
    """The process spec of the shipped fleet (device_profiles/process.yaml), checked."""
    from pnndeploy.formats.process_spec import load_process

    return load_process(SHIPPED_PROCESS)


@pytest.fixture(scope="session")
def tiny_fleet_dir(tmp_path_factory: pytest.TempPathFactory, shipped_process: dict) -> Path:
    """A folder of 3 simulated chips (chipA..chipC, seed 1, the shipped process). Read it, never write it."""
    from pnndeploy.simulation.fabrication import make_fleet

    folder = tmp_path_factory.mktemp("tiny_fleet") / "profiles"
    make_fleet(shipped_process, 3, "chip", 1, folder)
    return folder


@pytest.fixture
def model_file(tmp_path: Path, tiny_export: TinyExport) -> Path:
    """A private copy of the tiny model, ``tmp_path/M.onnx`` (same bytes, so the same sha256)."""
    import shutil

    target = tmp_path / "M.onnx"
    shutil.copyfile(tiny_export.path, target)
    return target


@pytest.fixture
def cli():
    """Invoke ``pnndeploy ARGS...`` in-process; returns click's Result (stdout and stderr apart)."""
    from click.testing import CliRunner

    from pnndeploy.cli import main

    def invoke(*args: str, env: dict | None = None):
        return CliRunner().invoke(main, [str(a) for a in args], env=env)

    return invoke


@pytest.fixture
def one_line_error():
    """``check(result, *fragments)``: exit 2, one line 'pnndeploy: error: ...' on stderr naming the fragments,
    nothing on stdout, no traceback.  Returns the line."""

    def check(result, *fragments: str) -> str:
        assert result.exit_code == 2, (result.exit_code, result.output)
        assert "Traceback" not in result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("pnndeploy: error:"), result.stderr
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])
        assert result.stdout == ""
        return lines[0]

    return check


@pytest.fixture(scope="session")
def shipped_profiles_dir() -> Path:
    """The shipped 8-chip fleet (device_profiles/): read it, never write it."""
    return SHIPPED_PROFILES

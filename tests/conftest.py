"""Shared, session-scoped fixtures: the digits data, a tiny slice of it, and one tiny exported model.

Everything is kept small (hidden width 8, 2 epochs) so the training-related test files stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from pnndeploy.data import Dataset, load_dataset

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
    from pnndeploy.pipeline import train_and_export
    from pnndeploy.training import TrainConfig

    folder = tmp_path_factory.mktemp("tiny_export")
    path = folder / "model.onnx"
    summary, result = train_and_export(digits, TrainConfig(epochs=2, hidden=[8], seed=0), path)
    return TinyExport(path=path, summary=summary, result=result, dataset=digits)

"""Train, measure and export in one call: what `pnndeploy train` does, usable from Python."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from pnndeploy.compute import CPU, Compute
from pnndeploy.data.datasets import Dataset, load_dataset
from pnndeploy.errors import PnnError
from pnndeploy.formats.input_moments import MAX_MOMENT_SAMPLES, measure_input_moments, moments_json
from pnndeploy.formats.onnx_import import ImportedNetwork
from pnndeploy.formats.onnx_io import save_model
from pnndeploy.training.config import TrainConfig
from pnndeploy.training.loop import EpochRecord, TrainResult, evaluation_tensors, train
from pnndeploy.training.methods import get_method
from pnndeploy.training.in_situ import InSituChip
from pnndeploy.training.model import accuracy
from pnndeploy.training.sharpness import model_hessian_trace, model_sharpness


@dataclass
class TrainSummary:
    """What a training run reports (the `train --json` document)."""

    model: str
    model_sha256: str
    platform: str
    method: str
    dataset: str
    train_accuracy: float
    test_accuracy: float
    trained_test_accuracy: float
    sharpness: float
    hessian_trace: float
    seconds: float
    clipped_weights: int
    config: dict[str, Any]
    #: In-situ training only: the chip, and the time spent on it.
    in_situ: dict[str, Any] | None = None
    #: Where training computed: {"device": "cpu" | "cuda:N", "threads": N}.
    compute: dict[str, Any] | None = None
    #: ``--init-from`` only: the file (name, sha256), accuracies as read and mapped, onnxruntime's agreement.
    init_from: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()
                if k not in ("in_situ", "compute", "init_from") or v is not None}


def train_and_export(dataset: Dataset | str, config: TrainConfig, out: str | Path,
                     on_epoch: Callable[[EpochRecord], None] | None = None,
                     chip: InSituChip | None = None, compute: Compute = CPU,
                     init: ImportedNetwork | None = None) -> tuple[TrainSummary, TrainResult]:
    """Train with ``config`` on ``compute``, measure the sharpness, write the ONNX file atomically.

    ``dataset`` is a :class:`Dataset` or a spec such as ``"digits"`` (loaded with the
    config's seed).  ``init``: the ``config.init_from`` file already read.  Returns the `train --json` summary and
    the trained model.
    """
    if isinstance(dataset, str):
        dataset = load_dataset(dataset, seed=config.seed)
    _check_split_seed(dataset, config)
    result = train(dataset, config, on_epoch=on_epoch, chip=chip, compute=compute, init=init)
    return export_trained(result, dataset, out, compute), result


def _check_split_seed(dataset: Dataset, config: TrainConfig) -> None:
    if dataset.split_seed is not None and dataset.split_seed != config.seed:
        # the model records config.seed and transfer re-splits with it: a different split would put
        # training samples into the test set and inflate every accuracy reported later
        raise PnnError(f"dataset {dataset.name} was split with seed {dataset.split_seed} but the model is trained "
                       f"with seed {config.seed}; load the dataset with seed={config.seed}")


def _input_moments(layers: list, platform: Any, dataset: Dataset, digital: Any) -> dict[str, Any]:
    """The on-chip layers' input moments on the training set, for the mapper (:mod:`pnndeploy.formats.input_moments`)."""
    X = dataset.scaling.apply(dataset.X_train[:MAX_MOMENT_SAMPLES])
    features = digital.forward(X) if digital is not None else X
    return moments_json(measure_input_moments(layers, platform, platform.metadata(), features), len(X))


def export_trained(result: TrainResult, dataset: Dataset, out: str | Path, compute: Compute = CPU) -> TrainSummary:
    """Export a trained model as ONNX (atomically), with the figures measured on the nominal chip.

    What the file holds and every figure is measured on: the model on the nominal chip (for the
    baseline, W mapped through the inverse, weights beyond the control range clipped), which
    onnxruntime reproduces.  ``dataset`` must be the one ``result`` was trained on.  The figures are measured
    on the CPU, with the threads ``compute`` gave training (the same last bits in a CLI and a Ray worker).
    """
    config = result.config
    _check_split_seed(dataset, config)
    nominal = result.model.to_controls()
    X, y = evaluation_tensors(dataset)
    with Compute("cpu", compute.threads).running(nominal.step_macs(config.batch_size)):
        samples = result.model.platform.sharpness_samples
        sharpness = model_sharpness(nominal, X, y, max_samples=samples)
        trace = model_hessian_trace(nominal, X, y, max_samples=samples)
    layers = nominal.export_layers()
    clipped = sum(nominal.clipped)
    platform = result.model.platform
    X_test = torch.from_numpy(dataset.scaling.apply(dataset.X_test))
    train_acc, test_acc = accuracy(nominal, X, y), accuracy(nominal, X_test, torch.from_numpy(dataset.y_test))
    metrics = {"train_accuracy": train_acc, "test_accuracy": test_acc,
               "trained_test_accuracy": result.test_accuracy,
               "sharpness": sharpness, "hessian_trace": trace, "seconds": result.seconds,
               "clipped_weights": clipped}
    extra: dict[str, Any] = {"config": config.to_dict(), "n_classes": dataset.n_classes}
    records = get_method(config.method).model_records(config, result.learnt or {})
    rho = records.pop("rho")
    extra.update(records)
    if result.in_situ is not None:
        extra["in_situ"] = result.in_situ
    if result.init_from is not None:
        extra["init_from"] = result.init_from
    digital = nominal.front.export() if nominal.front is not None else None
    extra["input_moments"] = _input_moments(layers, platform, dataset, digital)
    sha = save_model(
        out, layers, dataset.scaling, platform=platform.name,
        platform_params=platform.metadata(),
        method=config.method, rho=rho,
        dataset=dataset.name, metrics=metrics, seed=config.seed, extra=extra,
        digital=digital,
    )
    return TrainSummary(model=str(out), model_sha256=sha, platform=platform.name, method=config.method,
                        dataset=dataset.name, train_accuracy=train_acc, test_accuracy=test_acc,
                        trained_test_accuracy=result.test_accuracy, sharpness=sharpness,
                        hessian_trace=trace, seconds=result.seconds, clipped_weights=clipped,
                        config=config.to_dict(), in_situ=result.in_situ, compute=result.compute,
                        init_from=result.init_from)

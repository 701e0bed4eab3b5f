"""`train --init-from`: a digital model someone else trained becomes a PNN, its last layers mapped onto the chip.

The file's digital layers become the front end as they are; its last ``--onchip`` linear layers go on the chip,
each weight matrix split into a per-row scale (the digital gain) and weights within the device's reach, which the
platform maps onto controls the way it maps the baseline's (``weights_to_controls``).  Before anything trains,
the network as read is run beside onnxruntime on the file: the two must agree, which shows the import is exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pnndeploy.data.datasets import Dataset
from pnndeploy.errors import ConfigError, ModelFileError
from pnndeploy.formats.digital import KERNEL
from pnndeploy.formats.onnx_import import ImportedNetwork
from pnndeploy.training.methods import get_method
from pnndeploy.training.model import PNN, FrontEnd, accuracy
from pnndeploy.untrusted import brief

#: Largest |weight| of each imported on-chip row after its scale moves into the gain: the bound the platforms'
#: random init uses, within every linear platform's reach (a ring reaches 0.993 at its largest detuning).
IMPORT_WEIGHT_BOUND = 0.9
#: Samples run through onnxruntime and through our model, and the largest difference allowed (relative to the
#: largest logit): float32 rounding of a few hundred products is about 1e-6.
CHECK_SAMPLES = 256
AGREEMENT = 1e-4
#: The settings that shape the network, which an imported model's file decides.
ARCHITECTURE = ("hidden", "conv", "kernel", "batch_norm")


def architecture_settings(net: ImportedNetwork, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` (what the command line and config gave) with the file's architecture; a conflicting one is a
    one-line error.  Batch norms are folded into the layers on import, so the run records none."""
    arch = net.architecture()
    where = f"--init-from {net.path}"
    has = {"hidden": arch["hidden"], "conv": arch["conv"], "kernel": arch["kernel"] or KERNEL,
           "batch_norm": arch["batch_norm"]}
    described = (f"conv {','.join(map(str, arch['conv'])) or 'none'}, kernel {arch['kernel'] or '-'}, hidden "
                 f"{','.join(map(str, arch['hidden'])) or 'none'}, batch norm {'yes' if arch['batch_norm'] else 'no'}")
    for key in ARCHITECTURE:
        if key in settings and settings[key] != has[key]:
            flag = f"--{key.replace('_', '-')}"
            raise ConfigError(f"{flag} {brief(settings[key])} conflicts with {where}, whose network is {described}; "
                              f"drop {flag}: the architecture comes from the file")
    onchip = settings.get("onchip", 0)
    if isinstance(onchip, int) and onchip > len(net.linears):
        raise ConfigError(f"--onchip {onchip}: {where} has {len(net.linears)} linear layers; give 1.."
                          f"{len(net.linears)}, or 0 for all")
    return {**settings, "hidden": has["hidden"], "conv": has["conv"], "kernel": has["kernel"], "batch_norm": False}


def imported_model(config: Any, dataset: Dataset, net: ImportedNetwork) -> tuple[PNN, dict[str, Any]]:
    """The PNN to fine-tune from ``net`` (weights for a method that trains them, mapped controls otherwise) and
    the record of the import: accuracies as read and as mapped onto the nominal chip, onnxruntime's agreement."""
    where = f"--init-from {net.path}"
    platform = config.chip_platform
    if not platform.linear:
        raise ConfigError(f"{where}: --platform {platform.name}'s layers are not weight matrices, so a model's "
                          f"weights cannot initialise them; use a linear platform ({', '.join(_linear_platforms())})")
    arch = net.architecture()
    if (config.conv, config.hidden) != (arch["conv"], arch["hidden"]) or config.onchip > len(net.linears):
        raise ConfigError(f"{where}: the run's --conv {config.conv}, --hidden {config.hidden}, --onchip "
                          f"{config.onchip} do not fit the file's network ({len(net.linears)} linear layers, conv "
                          f"{arch['conv']}, hidden {arch['hidden']}); take them from architecture_settings()")
    if net.n_features != dataset.n_features or int(net.linears[-1][0].shape[0]) != dataset.n_classes:
        raise ModelFileError(f"{where}: the model takes {net.n_features} features to {net.linears[-1][0].shape[0]} "
                             f"classes but dataset {dataset.name} has {dataset.n_features} features and "
                             f"{dataset.n_classes} classes; import a model trained on this dataset")
    convs, linears, affine, normalisation = _fold_input(net, dataset)
    onchip = config.onchip or len(linears)
    front = None
    if net.convs or len(linears) > onchip or affine is not None:
        front = _front_end(net, convs, linears[:len(linears) - onchip], affine)
    chip = linears[len(linears) - onchip:]
    sizes = [int(chip[0][0].shape[1]), *(int(w.shape[0]) for w, _ in chip)]
    model = PNN(sizes, platform, seed=config.seed, parameterisation="weights", front=front)
    with torch.no_grad():
        for layer, (w, b) in zip(model.layers, chip):
            scale = np.abs(w).max(axis=1) / IMPORT_WEIGHT_BOUND
            scale[scale == 0] = 1.0
            layer.W.copy_(torch.from_numpy(w / scale[:, None]).float())
            layer.gain.copy_(torch.from_numpy(scale).float())
            layer.bias.copy_(torch.from_numpy(b).float())
    model.eval()
    X_test, y_test = torch.from_numpy(dataset.scaling.apply(dataset.X_test)), torch.from_numpy(dataset.y_test)
    difference, samples = onnxruntime_difference(net, model, dataset)
    trains_weights = get_method(config.method).trains_weights
    # a method that trains W maps it at export, on the positive branch: the signs would not survive
    mapping = "positive" if trains_weights or config.init_mapping not in platform.import_mappings \
        else config.init_mapping
    mapped = _signed(model.to_controls(), model, dataset, mapping, config.seed)
    record = {"file": net.path.name, "sha256": net.sha256, "imported_test_accuracy": accuracy(model, X_test, y_test),
              "mapped_test_accuracy": accuracy(mapped, X_test, y_test), "onnxruntime_max_abs_diff": difference,
              "onnxruntime_samples": samples, "input_normalisation": normalisation,
              "batch_norms_folded": net.batch_norms,
              "mapping": mapping, "front_lr": config.front_lr_factor}
    return (model if trains_weights else mapped).train(), record


def _linear_platforms() -> list[str]:
    """The platforms whose layers are weight matrices (a model's weights can initialise them)."""
    from pnndeploy.platforms import PLATFORMS

    return [name for name, platform in PLATFORMS.items() if platform.linear]


Layers = list[tuple[np.ndarray, np.ndarray]]

#: Training samples whose mean input to each on-chip layer weighs the balanced mapping's drift sensitivities.
MEAN_SAMPLES = 2048


def _signed(mapped: PNN, model: PNN, dataset: Dataset, mapping: str, seed: int) -> PNN:
    """``mapped`` (the positive-branch controls of ``model``) with the controls ``mapping`` chooses among the
    equivalent ones (:meth:`~pnndeploy.platforms.base.LinearPlatform.import_controls`; layer k's random signs from
    ``seed + k``): the same nominal weights, another response to drift."""
    platform = model.platform
    if mapping == "positive":
        return mapped
    X = torch.from_numpy(dataset.scaling.apply(dataset.X_train[:MEAN_SAMPLES]))
    with torch.no_grad():
        x = model.front(X) if model.front is not None else X
        for k, (src, dst) in enumerate(zip(model.layers, mapped.layers)):
            controls, _, _ = platform.import_controls(src.W.detach().cpu().double().numpy(),
                                                      x.double().mean(dim=0).numpy(), mapping, seed + k)
            dst.controls.copy_(torch.from_numpy(controls).float())
            x = src(x)
            if k < len(model.layers) - 1:
                x = torch.relu(x)
    return mapped


def _fold_input(net: ImportedNetwork, dataset: Dataset) -> tuple[Layers, Layers, tuple[np.ndarray, np.ndarray] | None,
                                                                 str]:
    """The model's input normalisation composed with the inverse of our dataset scaling (the front end sees
    s = (raw - offset) * k, the model wants raw * scale + shift), folded into the first layer where that is exact:
    always into a linear layer, into a conv only without a shift (zero padding would pad the shifted image).
    Returns the conv and linear layers, the (scale, shift) the front end must apply (None: folded), what was done."""
    k, offset = np.asarray(dataset.scaling.scale, np.float64), np.asarray(dataset.scaling.offset, np.float64)
    a = np.broadcast_to(net.scale / k, (net.n_features,))
    b = np.broadcast_to(net.shift + net.scale * offset, (net.n_features,))
    convs, linears = list(net.convs), list(net.linears)
    if not convs:
        w, bias = linears[0]
        linears[0] = (w * a[None, :], bias + w @ b)
        return convs, linears, None, "folded into the first linear layer"
    channels = a.reshape(net.image_shape[0], -1)
    if not np.any(b) and not np.ptp(channels, axis=1).any():
        w, bias = convs[0]
        convs[0] = (w * channels[:, 0][None, :, None, None], bias)
        return convs, linears, None, "folded into the first convolution"
    return convs, linears, (a.copy(), b.copy()), "front end input stage"


def _front_end(net: ImportedNetwork, convs: Layers, dense: Layers,
               affine: tuple[np.ndarray, np.ndarray] | None) -> FrontEnd:
    """The torch front end holding the file's conv and digital dense layers (batch norms already folded)."""
    front = FrontEnd(net.image_shape, [int(w.shape[0]) for w, _ in convs], [int(w.shape[0]) for w, _ in dense],
                     net.n_features, kernel=net.kernel or KERNEL)
    with torch.no_grad():
        for module, (w, b) in zip([*front.convs, *front.denses], [*convs, *dense]):
            module.weight.copy_(torch.from_numpy(w).float())
            module.bias.copy_(torch.from_numpy(b).float())
    if affine is not None:
        front.set_input_affine(torch.from_numpy(affine[0]), torch.from_numpy(affine[1]))
    return front


def onnxruntime_difference(net: ImportedNetwork, model: PNN, dataset: Dataset) -> tuple[float, int]:
    """Largest |logit difference| between onnxruntime running the file on raw test samples and ``model`` on the
    same samples scaled; a difference beyond float32 rounding is refused (the import would not be the model).

    onnxruntime runs the file only after :func:`~pnndeploy.formats.onnx_import.read_network` accepted every node,
    so it executes nothing but the few operators read, on one thread."""
    import onnxruntime as ort

    # the raw values our scaling reproduces (it clips to the training range): both then see the same inputs
    scaled = dataset.scaling.apply(dataset.X_test[:CHECK_SAMPLES])
    raw = np.ascontiguousarray(scaled / np.asarray(dataset.scaling.scale, np.float32)
                               + np.asarray(dataset.scaling.offset, np.float32), dtype=np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(net.data, options, providers=["CPUExecutionProvider"])
        theirs = session.run(None, {net.input_name: raw.reshape(len(raw), *net.input_shape)})[0]
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise ModelFileError(f"--init-from {net.path}: onnxruntime cannot run it ({type(exc).__name__}: "
                             f"{brief(str(exc), quote=False)})") from None
    with torch.no_grad():
        ours = model(torch.from_numpy(scaled)).numpy()
    theirs = np.asarray(theirs, dtype=np.float64).reshape(len(raw), -1)
    difference = float(np.abs(theirs - ours).max()) if theirs.shape == ours.shape else float("inf")
    if not difference <= AGREEMENT * max(1.0, float(np.abs(theirs).max())):
        raise ModelFileError(f"--init-from {net.path}: the network as read differs from onnxruntime's run of the "
                             f"file by {difference:.3g} on {len(raw)} test samples; nothing was written (please "
                             "report it: the import is not exact for this model)")
    return difference, len(raw)

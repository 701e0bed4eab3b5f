"""Bring your own model (issue 27): `train --init-from` reads a plain ONNX classifier, exactly, and refuses the rest."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from pnndeploy.data.datasets import load_dataset
from pnndeploy.formats.onnx_import import read_network
from pnndeploy.formats.onnx_io import load_model, onnx_logits
from pnndeploy.training.config import TrainConfig
from pnndeploy.training.init_from import imported_model


@pytest.fixture(scope="module")
def digits28():
    return load_dataset("digits28", seed=0)


class _Normalised(nn.Module):
    """``body`` after the author's input normalisation (raw digits28 pixels 0..16)."""

    def __init__(self, body: nn.Module, image: bool, offset: float, scale: float) -> None:
        super().__init__()
        self.body, self.image, self.offset, self.scale = body, image, offset, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 28, 28) if self.image else x
        return self.body((x - self.offset) / self.scale)


def _export(module: nn.Module, path: Path, **options) -> Path:
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, torch.rand(2, 784) * 16, str(path), dynamo=False, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "batch"}}, **options)
    return path


def _batch_norm_statistics(body: nn.Module) -> None:
    """Batch norms far from their initial 0, 1, so folding them is visible."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for bn in (m for m in body.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.copy_(torch.rand(bn.num_features, generator=generator) - 0.5)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
            bn.weight.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=generator) * 0.1)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """An MLP (Gemm + Relu, Sub/Div at its input) and a small LeNet split (Sub/Div, Conv, BN, Relu, MaxPool,
    Flatten, Gemm), exported by torch.onnx.export; the LeNet keeps its BatchNormalization node."""
    folder = tmp_path_factory.mktemp("imported")
    torch.manual_seed(0)
    mlp = _Normalised(nn.Sequential(nn.Linear(784, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 10)),
                      False, 3.0, 5.0)
    lenet_body = nn.Sequential(nn.Conv2d(1, 3, 5, padding=2), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Flatten(), nn.Linear(3 * 14 * 14, 16), nn.ReLU(), nn.Linear(16, 10))
    _batch_norm_statistics(lenet_body)
    lenet = _Normalised(lenet_body, True, 4.0, 6.0)
    return {"mlp": _export(mlp, folder / "mlp.onnx"),
            "lenet": _export(lenet, folder / "lenet.onnx", do_constant_folding=False)}


@pytest.mark.parametrize("name, normalisation", [("mlp", "folded into the first linear layer"),
                                                 ("lenet", "front end input stage")])
def test_the_import_computes_what_onnxruntime_computes(models, digits28, name, normalisation) -> None:
    """On random inputs in the data's range, the network as read (front end and chip layers, in torch and as
    the written file's numpy front end) gives onnxruntime's logits of the author's file."""
    import onnxruntime as ort

    net = read_network(models[name])
    assert net.batch_norms == (1 if name == "lenet" else 0)
    arch = net.architecture()
    # the baseline keeps the weights as read: the digital model itself, before any mapping
    config = TrainConfig(method="standard", hidden=arch["hidden"], conv=arch["conv"], kernel=net.kernel or 3,
                         onchip=1, epochs=0, init_from=str(models[name]))
    digital, record = imported_model(config, digits28, net)
    assert digital.parameterisation == "weights"
    assert record["input_normalisation"] == normalisation and record["onnxruntime_max_abs_diff"] < 1e-4
    raw = np.random.default_rng(1).uniform(0, 16, (64, 784)).astype(np.float32)
    theirs = ort.InferenceSession(str(models[name]), providers=["CPUExecutionProvider"]).run(None, {"x": raw})[0]
    with torch.no_grad():
        ours = digital.eval()(torch.from_numpy(digits28.scaling.apply(raw))).numpy()
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * scale)
    if digital.front is not None:               # the file's numpy front end is the torch one
        front = digital.front.export()
        with torch.no_grad():
            want = digital.front(torch.from_numpy(digits28.scaling.apply(raw))).numpy()
        np.testing.assert_allclose(front.forward(digits28.scaling.apply(raw)), want, rtol=1e-5, atol=1e-5)


def test_epochs_0_maps_only_and_reports_each_accuracy(cli, tmp_path: Path, models, digits28) -> None:
    out = tmp_path / "mapped.onnx"
    result = cli("train", "--dataset", "digits28", "--init-from", models["lenet"], "--onchip", "2", "--epochs", "0",
                 "--out", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    record = doc["init_from"]
    assert record["file"] == "lenet.onnx" and len(record["sha256"]) == 64
    assert record["mapped_test_accuracy"] == pytest.approx(doc["test_accuracy"])      # nothing trained
    assert 0 <= record["imported_test_accuracy"] <= 1 and doc["config"]["epochs"] == 0
    assert doc["config"]["conv"] == [3] and doc["config"]["hidden"] == [16] and doc["config"]["kernel"] == 5
    model = load_model(out)
    assert model.metadata["init_from"]["sha256"] == record["sha256"]
    assert model.metadata["format_version"] == 2 and model.digital.input_affine is not None
    ours = model.logits(digits28.scaling.apply(digits28.X_test))
    np.testing.assert_allclose(onnx_logits(out, digits28.X_test), ours, rtol=1e-4, atol=1e-4)
    table = cli("train", "--dataset", "digits28", "--init-from", models["mlp"], "--epochs", "0", "--out", out)
    assert table.exit_code == 0 and "on the nominal chip, mapped" in table.stdout


def test_a_spec_sat_fine_tune_on_rings_runs_end_to_end(cli, tmp_path: Path, models, tiny_fleet_dir) -> None:
    out = tmp_path / "tuned.onnx"
    result = cli("train", "--dataset", "digits28", "--platform", "mrr", "--method", "spec-sat", "--init-from",
                 models["lenet"], "--onchip", "2", "--epochs", "1", "--batch-size", "64", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["method"] == "spec-sat" and doc["init_from"]["file"] == "lenet.onnx"
    report = cli("transfer", "--model", out, "--profiles", tiny_fleet_dir, "--fleet", "--json")
    assert report.exit_code == 0, report.output


# ---------------------------------------------------------------------------------------------- hostile files
def _mlp_graph(nodes: list, inits: dict[str, np.ndarray], features: int = 784, extra_inputs: list | None = None):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", features]),
                                           *(extra_inputs or [])],
                              [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, ["n", 10])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _dense(rows: int, cols: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"w1": rng.normal(size=(rows, cols)) * 0.05, "b1": np.zeros(rows), "w2": rng.normal(size=(10, rows)),
            "b2": np.zeros(10)}


def _two_gemms(middle: list | None = None, features: int = 784, **first) -> onnx.ModelProto:
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1", **first),
             helper.make_node("Relu", ["h"], ["r"], name="relu1"),
             *(middle or []),
             helper.make_node("Gemm", ["m" if middle else "r", "w2", "b2"], ["y"], transB=1, name="fc2")]
    return _mlp_graph(nodes, _dense(16, features), features)


def _conv(after: list | None = None, **attributes) -> onnx.ModelProto:
    """A conv on the reshaped input, with ``attributes`` (default 3x3, 'same' padding), then ``after``."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["img"], name="to_image"),
             helper.make_node("Conv", ["img", "cw", "cb"], ["c"], name="conv",
                              **({"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]} | attributes)), *(after or [])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 784])],
                              [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array([-1, 1, 28, 28], np.int64), "shape"),
                               numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "cw"),
                               numpy_helper.from_array(np.zeros(4, np.float32), "cb")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _huge() -> onnx.ModelProto:
    """An initializer that declares 2^40 values and holds none."""
    proto = _two_gemms()
    proto.graph.initializer[0].ClearField("dims")
    proto.graph.initializer[0].dims.extend([1 << 20, 1 << 20])
    return proto


def _with_nan(models) -> onnx.ModelProto:
    proto = onnx.load(str(models["mlp"]))
    tensor = next(t for t in proto.graph.initializer if t.dims and len(t.dims) == 2)
    values = numpy_helper.to_array(tensor).copy()
    values[0, 0] = np.nan
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    return proto


HOSTILE = {
    "softmax in the middle": (lambda m: _two_gemms([helper.make_node("Softmax", ["r"], ["m"], name="sm")]), (),
                              "node 'sm' (Softmax): operator not supported"),
    "LSTM": (lambda m: _two_gemms([helper.make_node("LSTM", ["r", "w1", "w1"], ["m"], name="rnn")]), (),
             "node 'rnn' (LSTM): operator not supported"),
    "conv groups": (lambda m: _conv(group=2), (), "node 'conv' (Conv): group=2 cannot be expressed"),
    "conv stride": (lambda m: _conv(strides=[2, 2]), (), "node 'conv' (Conv): strides=[2, 2] cannot be expressed"),
    "conv valid padding": (lambda m: _conv(pads=[0, 0, 0, 0]), (), "pads=[0, 0, 0, 0] cannot be expressed"),
    "average pool": (lambda m: _conv([helper.make_node("AveragePool", ["c"], ["p"], kernel_shape=[2, 2],
                                                       name="avg")]), (), "node 'avg' (AveragePool): operator"),
    "conv without relu and pool": (lambda m: _conv(), (), "the graph ends inside a conv stage"),
    "a branch": (lambda m: _two_gemms([helper.make_node("Add", ["r", "h"], ["m"], name="skip")]), (),
                 "node 'skip' (Add): input 'h' is neither a constant nor the layer's input"),
    "huge declared tensor": (lambda m: _huge(), (), "beyond the 16777216 values a tensor may hold"),
    "gemm transA": (lambda m: _two_gemms(transA=1), (), "node 'fc1' (Gemm): transA=1 cannot be expressed"),
    "NaN initializer": (_with_nan, (), "holds NaN or infinite values"),
    "width mismatch": (lambda m: _two_gemms(features=64), (), "takes 64 features"),
    "fewer linear layers than --onchip": (lambda m: _two_gemms(), ("--onchip", "3"), "has 2 linear layers"),
    "conflicting --hidden": (lambda m: _two_gemms(), ("--hidden", "32"), "--hidden [32] conflicts with"),
    "conflicting --conv": (lambda m: _two_gemms(), ("--conv", "4"), "--conv [4] conflicts with"),
    "conflicting --batch-norm": (lambda m: _two_gemms(), ("--batch-norm",), "--batch-norm True conflicts"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_or_unsupported_files_are_one_line(cli, one_line_error, tmp_path: Path, models, case) -> None:
    build, flags, fragment = HOSTILE[case]
    bad, out = tmp_path / "bad.onnx", tmp_path / "out.onnx"
    bad.write_bytes(build(models).SerializeToString())
    one_line_error(cli("train", "--dataset", "digits28", "--init-from", bad, *flags, "--epochs", "0", "--out", out),
                   fragment)
    assert not out.exists()


def test_a_truncated_file_is_one_line(cli, one_line_error, tmp_path: Path, models) -> None:
    bad, out = tmp_path / "cut.onnx", tmp_path / "out.onnx"
    data = models["lenet"].read_bytes()
    bad.write_bytes(data[:len(data) // 2])
    one_line_error(cli("train", "--dataset", "digits28", "--init-from", bad, "--epochs", "0", "--out", out),
                   "--init-from")
    assert not out.exists()


def test_epochs_0_without_a_model_to_map_is_refused() -> None:
    with pytest.raises(Exception, match="--epochs must be at least 1"):
        TrainConfig(epochs=0)


def _drift_sensitivity(model, digits28) -> list[np.ndarray]:
    """Per on-chip layer, each output row's sensitivity to a common thermal shift: sum over i of dW/dx * drift *
    the layer's mean input (training set), and the same sum of absolute values (every ring on one flank)."""
    X = torch.from_numpy(digits28.scaling.apply(digits28.X_train[:2048]))
    platform, out = model.platform, []
    with torch.no_grad():
        x = model.front(X) if model.front is not None else X
        for k, layer in enumerate(model.layers):
            mean = x.double().mean(dim=0).numpy()
            slope = platform.derivative(layer.controls.double().numpy(), **platform.nominal) * platform.nominal_drift
            out.append((slope * mean[None, :]).sum(axis=1))
            x = layer(x)
            if k < len(model.layers) - 1:
                x = torch.relu(x)
    return out


@pytest.mark.parametrize("name", ["mlp", "lenet"])
def test_the_import_mapping_signs_balance_drift_and_keep_the_weights(models, digits28, name) -> None:
    """MRR: W(x) is even, so the import may choose each detuning's sign.  Balanced and random give exactly the
    positive branch's nominal weights (and so its accuracy); balanced makes every row's summed drift sensitivity
    far smaller than the positive branch's, where every ring drifts the same way."""
    net = read_network(models[name])
    arch = net.architecture()
    mapped, sums = {}, {}
    for mapping in ("positive", "random", "balanced"):
        config = TrainConfig(method="spec-sat", platform="mrr", hidden=arch["hidden"], conv=arch["conv"],
                             kernel=net.kernel or 3, onchip=2, epochs=0, init_from=str(models[name]),
                             init_mapping=mapping)
        model, record = imported_model(config, digits28, net)
        assert model.parameterisation == "controls" and record["mapping"] == mapping
        mapped[mapping], sums[mapping] = model.eval(), _drift_sensitivity(model, digits28)
    platform = mapped["positive"].platform
    for k, layer in enumerate(mapped["positive"].layers):
        positive = layer.controls.detach()
        assert (positive >= 0).all()
        for other in ("random", "balanced"):
            controls = mapped[other].layers[k].controls.detach()
            assert torch.equal(controls.abs(), positive)                          # only the signs differ
            assert (controls < 0).any() and (controls > 0).any()
            assert torch.equal(platform.nominal_weights(controls), platform.nominal_weights(positive))
        worst_positive = np.abs(sums["positive"][k]).max()
        assert np.abs(sums["balanced"][k]).max() < 0.05 * worst_positive
        assert np.abs(sums["balanced"][k]).mean() < np.abs(sums["random"][k]).mean()
    X_test = torch.from_numpy(digits28.scaling.apply(digits28.X_test))
    with torch.no_grad():
        assert torch.equal(mapped["balanced"](X_test), mapped["positive"](X_test))
    # the baseline trains W and maps it at export on the positive branch: it says so rather than claim signs
    config = TrainConfig(method="standard", platform="mrr", hidden=arch["hidden"], conv=arch["conv"],
                         kernel=net.kernel or 3, onchip=2, epochs=0, init_from=str(models[name]))
    assert imported_model(config, digits28, net)[1]["mapping"] == "positive"


def test_the_default_import_mapping_is_balanced_and_recorded(cli, tmp_path: Path, models) -> None:
    out = tmp_path / "mapped.onnx"
    result = cli("train", "--dataset", "digits28", "--init-from", models["mlp"], "--epochs", "0", "--out", out,
                 "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["init_from"]["mapping"] == "balanced"
    assert load_model(out).metadata["init_from"]["mapping"] == "balanced"
    bad = cli("train", "--dataset", "digits28", "--init-from", models["mlp"], "--epochs", "0", "--init-mapping",
              "sideways", "--out", out)
    assert bad.exit_code == 2
    alone = cli("train", "--dataset", "digits28", "--init-mapping", "random", "--epochs", "1", "--out", out)
    assert alone.exit_code == 2 and "there is no --init-from" in alone.output


# ------------------------------------------------------------------------------------ the front end's learning rate
def _front_end_weights(path: Path) -> dict[str, np.ndarray]:
    """The digital front end's initializers of a written model (conv and dense layers before the chip)."""
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer
            if i.name.startswith("digital") and i.name != "digital.image_shape"}


def test_an_imported_front_end_fine_tunes_at_a_tenth_of_the_rate_and_says_so(cli, tmp_path: Path, models) -> None:
    """With --init-from the front end learns at 0.1 x --lr by default (recorded), --front-lr 0 leaves it exactly as
    imported while the chip's layers still train, and a larger factor moves it further."""
    common = ("train", "--dataset", "digits28", "--init-from", models["lenet"], "--onchip", "1", "--batch-size", "64",
              "--method", "noise-aware")
    mapped = tmp_path / "mapped.onnx"
    assert cli(*common, "--epochs", "0", "--out", mapped).exit_code == 0
    moved = {}
    for factor in ("0", "0.1", "1"):
        out = tmp_path / f"tuned-{factor}.onnx"
        flags = () if factor == "0.1" else ("--front-lr", factor)
        result = cli(*common, "--epochs", "1", *flags, "--out", out, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["init_from"]["front_lr"] == float(factor)
        before, after = _front_end_weights(mapped), _front_end_weights(out)
        moved[factor] = max(float(np.abs(after[k] - before[k]).max()) for k in before)
        chip = load_model(out).layers[0].controls
        assert not np.array_equal(chip, load_model(mapped).layers[0].controls)       # the chip's layer trained
    assert moved["0"] == 0.0 and 0 < moved["0.1"] < moved["1"]


def test_front_lr_needs_a_front_end(cli, tmp_path: Path) -> None:
    result = cli("train", "--front-lr", "0.1", "--epochs", "1", "--out", tmp_path / "m.onnx")
    assert result.exit_code == 2 and "--front-lr 0.1" in result.output and "there is none" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "m.onnx").exists()
    negative = cli("train", "--conv", "4", "--dataset", "digits28", "--front-lr", "-1", "--epochs", "1",
                   "--out", tmp_path / "m.onnx")
    assert negative.exit_code == 2 and "--front-lr" in negative.output

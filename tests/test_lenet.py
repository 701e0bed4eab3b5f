"""The paper's networks (issue 23): a front end's kernel size and batch norm, folded at export; the shipped configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pnndeploy.data.datasets import load_dataset
from pnndeploy.errors import ModelFileError
from pnndeploy.formats.onnx_io import load_model, onnx_logits
from pnndeploy.training.config import EXTRA_KEYS, TrainConfig, load_config
from pnndeploy.training.model import FrontEnd

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = sorted(p for p in (REPO / "examples" / "paper").glob("*.yaml") if not p.name.endswith("-process.yaml"))


@pytest.fixture(scope="module")
def digits28():
    return load_dataset("digits28", seed=0)


def _trained_statistics(module: FrontEnd, n_inputs: int) -> None:
    """Give the batch norms running statistics and affine parameters far from their initial 0, 1."""
    generator = torch.Generator().manual_seed(3)
    module.train()
    with torch.no_grad():
        for _ in range(5):
            module(torch.rand(16, n_inputs, generator=generator) * 3.0 + 0.5)
        for bn in [*module.conv_norms, *module.dense_norms]:
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=generator) * 2.0 + 0.2)
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=generator))
    module.eval()


def test_batch_norm_folds_into_the_layers_exactly() -> None:
    """Export folds each BN (running statistics) into the conv or dense layer before it: the numpy front end
    computes what the torch module computes in evaluation mode, to float32 rounding."""
    torch.manual_seed(0)
    module = FrontEnd((1, 12, 10), conv=[3, 4], dense=[7], n_inputs=120, kernel=5, batch_norm=True)
    _trained_statistics(module, 120)
    x = torch.rand(6, 120)
    with torch.no_grad():
        want = module(x).numpy()
    front = module.export()
    assert [layer.kind for layer in front.layers] == ["conv", "conv", "dense"]     # no new layer kinds
    assert front.layers[0].weight.shape == (3, 1, 5, 5)
    np.testing.assert_allclose(front.forward(x.numpy()), want, rtol=1e-5, atol=1e-5)


def test_without_batch_norm_the_front_end_is_todays() -> None:
    """No BN modules, no extra random draws: the same init, parameters and output as before batch norm existed."""
    torch.manual_seed(0)
    plain = FrontEnd((1, 12, 10), conv=[3], dense=[5], n_inputs=120)
    torch.manual_seed(0)
    normed = FrontEnd((1, 12, 10), conv=[3], dense=[5], n_inputs=120, batch_norm=True)
    assert plain.conv_norms is None and plain.dense_norms is None
    assert len(list(normed.parameters())) == len(list(plain.parameters())) + 4      # gamma, beta per BN
    for a, b in zip(plain.parameters(), normed.parameters()):
        assert torch.equal(a, b)
    assert plain.convs[0].padding == (1, 1) and plain.convs[0].kernel_size == (3, 3)


def test_sats_passes_on_one_batch_update_the_statistics_once() -> None:
    torch.manual_seed(0)
    once = FrontEnd(None, conv=[], dense=[4], n_inputs=6, batch_norm=True)
    twice = FrontEnd(None, conv=[], dense=[4], n_inputs=6, batch_norm=True)
    twice.load_state_dict(once.state_dict())
    x = torch.rand(8, 6) + 1.0
    once(x)
    with twice.one_statistics_update():
        first, second = twice(x), twice(x)         # the clean pass and the perturbed pass
    bn_once, bn_twice = once.dense_norms[0], twice.dense_norms[0]
    assert torch.equal(bn_once.running_mean, bn_twice.running_mean)
    assert torch.equal(bn_once.running_var, bn_twice.running_var)
    assert torch.allclose(first, second)          # both normalised by the batch's own statistics
    twice(x)                                      # outside the context: an ordinary training forward
    assert not torch.equal(bn_once.running_mean, bn_twice.running_mean)


def test_a_batch_of_one_trains_through_batch_norm() -> None:
    """The last batch of an epoch may hold one sample, which has no batch statistics: the running ones serve."""
    module = FrontEnd((1, 4, 4), conv=[2], dense=[3], n_inputs=16, batch_norm=True)
    module.train()
    out = module(torch.rand(1, 16))
    assert out.shape == (1, 3) and torch.all(torch.isfinite(out))


@pytest.fixture(scope="module")
def lenet_model(tmp_path_factory, digits28):
    """A small LeNet-like model: conv 4@5x5, BN, dense 16 with BN digital, 16 -> 10 on rings; one epoch of SAT."""
    from pnndeploy.training.pipeline import train_and_export

    path = tmp_path_factory.mktemp("lenet") / "lenet.onnx"
    config = TrainConfig(method="sat", conv=[4], kernel=5, batch_norm=True, hidden=[16, 12], onchip=2, epochs=1,
                         batch_size=64)
    summary, result = train_and_export(digits28, config, path)
    return path, summary, result


def test_the_exported_graph_is_the_torch_model_in_evaluation_mode(lenet_model, digits28) -> None:
    path, summary, result = lenet_model
    model = result.model.to_controls().eval()
    with torch.no_grad():
        want = model(torch.from_numpy(digits28.scaling.apply(digits28.X_test))).numpy()
    got = onnx_logits(path, digits28.X_test)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
    assert (got.argmax(1) == digits28.y_test).mean() == pytest.approx(summary.test_accuracy, abs=1 / 360)
    bn = result.model.front.conv_norms[0]
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))      # BN did something to fold


def test_kernel_5_round_trips_through_the_model_file(lenet_model, digits28) -> None:
    import onnx

    path, summary, result = lenet_model
    model = load_model(path)
    conv = model.digital.layers[0]
    assert conv.kind == "conv" and conv.kernel == 5 and conv.weight.shape == (4, 1, 5, 5)
    assert conv.describe() == {"name": "digital0", "kind": "conv", "in": 1, "out": 4, "kernel": 5, "padding": 2,
                               "pool": 2}
    exported = result.model.to_controls().front.export()
    for ours, file in zip(exported.layers, model.digital.layers):
        assert np.array_equal(ours.weight, file.weight) and np.array_equal(ours.bias, file.bias)
    node = next(n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv")
    attributes = {a.name: list(a.ints) for a in node.attribute}
    assert attributes["kernel_shape"] == [5, 5] and attributes["pads"] == [2, 2, 2, 2]
    np.testing.assert_allclose(model.logits(digits28.scaling.apply(digits28.X_test)),
                               onnx_logits(path, digits28.X_test), rtol=1e-4, atol=1e-4)
    assert summary.config["kernel"] == 5 and summary.config["batch_norm"] is True
    assert TrainConfig(**model.metadata["config"]).to_dict() == summary.config       # the recorded run reads back


def _with_digital(source: Path, target: Path, edit) -> Path:
    """A copy of ``source`` whose pnndeploy.digital metadata ``edit`` changed."""
    import onnx

    proto = onnx.load(str(source))
    for prop in proto.metadata_props:
        if prop.key == "pnndeploy.digital":
            doc = json.loads(prop.value)
            edit(doc)
            prop.value = json.dumps(doc)
    target.write_bytes(proto.SerializeToString())
    return target


@pytest.mark.parametrize("kernel, fragment", [
    (4, "has kernel 4, expected an odd size from 1 to 11"),
    (13, "has kernel 13, expected an odd size"),
    (True, "has kernel True"),
    ("5", "has kernel '5'"),
    (3, "contradict its description"),           # an odd size, but not the weights' 5 x 5
])
def test_a_bad_kernel_is_refused_with_one_line(lenet_model, tmp_path: Path, cli, one_line_error,
                                              kernel, fragment) -> None:
    def edit(doc):
        doc["layers"][0]["kernel"] = kernel

    bad = _with_digital(lenet_model[0], tmp_path / "bad.onnx", edit)
    with pytest.raises(ModelFileError, match="pnndeploy.digital") as caught:
        load_model(bad)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)
    one_line_error(cli("inspect", bad), "pnndeploy.digital", fragment)


def test_a_padding_that_does_not_keep_the_size_is_refused(lenet_model, tmp_path: Path) -> None:
    def edit(doc):
        doc["layers"][0]["padding"] = 1

    with pytest.raises(ModelFileError, match="contradict its description"):
        load_model(_with_digital(lenet_model[0], tmp_path / "bad.onnx", edit))


@pytest.mark.parametrize("args, fragment", [
    (("--conv", "4", "--kernel", "4"), "--kernel 4: give an odd size from 1 to 11"),
    (("--conv", "4", "--kernel", "13"), "--kernel 13"),
    (("--conv", "4", "--kernel", "0"), "--kernel must be at least 1"),
    (("--kernel", "5"), "give --conv too"),
    (("--batch-norm",), "--batch-norm normalises the digital front end's layers, and there are none"),
])
def test_bad_kernel_and_batch_norm_settings_are_one_line(cli, one_line_error, tmp_path: Path, args,
                                                         fragment) -> None:
    out = tmp_path / "m.onnx"
    one_line_error(cli("train", "--dataset", "digits28", *args, "--epochs", "1", "--out", out), fragment)
    assert not out.exists()


def test_train_with_kernel_and_batch_norm_end_to_end(cli, tmp_path: Path, tiny_fleet_dir: Path, digits28) -> None:
    """`pnndeploy train --kernel 5 --batch-norm` writes a model onnxruntime and `transfer` score."""
    out = tmp_path / "m.onnx"
    result = cli("train", "--dataset", "digits28", "--method", "standard", "--conv", "4", "--kernel", "5",
                 "--batch-norm", "--hidden", "16", "--onchip", "1", "--epochs", "1", "--batch-size", "64",
                 "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["config"]["kernel"] == 5 and summary["config"]["batch_norm"] is True
    assert summary["test_accuracy"] > 0.5
    logits = onnx_logits(out, digits28.X_test)
    assert (logits.argmax(1) == digits28.y_test).mean() == pytest.approx(summary["test_accuracy"], abs=1 / 360)
    report = cli("transfer", "--model", out, "--profiles", tiny_fleet_dir, "--fleet", "--json")
    assert report.exit_code == 0, report.output
    accuracies = [d["accuracy"] for d in json.loads(report.stdout)["devices"]]
    assert len(accuracies) == 3 and all(0.1 < a <= 1.0 for a in accuracies)


def test_every_paper_config_loads_and_builds_its_network(digits28) -> None:
    """Each shipped config in examples/paper/ is a valid `train --config` file, says what it reproduces and how
    to run it, and builds the network it claims."""
    from pnndeploy.training.loop import build_model

    assert {p.name for p in PAPER_CONFIGS} >= {"mrr-lenet5.yaml", "freespace.yaml"}
    expected = {"mrr-lenet5.yaml": ([6, 16], 5, True, [120], [120, 84, 10], "mrr"),
                "freespace.yaml": ([], 3, False, [], [784, 144, 10], "freespace"),
                "d2nn.yaml": ([], 3, False, [], [784, 10], "d2nn"),
                "mzi.yaml": ([6, 16], 5, True, [120, 64], [64, 10], "mzi"),
                "mrr-cifar10.yaml": ([32, 64, 128], 3, True, [256], [256, 128, 10], "mrr")}
    for path in PAPER_CONFIGS:
        text = path.read_text()
        assert text.startswith("#") and "PAPER.md" in text
        assert f"pnndeploy train --config examples/paper/{path.name}" in text
        settings = load_config(path)
        # every config trains on the shipped digits28, but the CIFAR-10 claim, which needs the user's CIFAR-10
        if path.name == "mrr-cifar10.yaml":
            assert settings.get("dataset", "").startswith("cifar10:")
            features, image_shape = 3 * 32 * 32, (3, 32, 32)
        else:
            assert settings.get("dataset") == "digits28"
            features, image_shape = digits28.n_features, digits28.image_shape
        config = TrainConfig(**{k: v for k, v in settings.items() if k not in EXTRA_KEYS})
        model = build_model(config, features, digits28.n_classes, image_shape)
        conv, kernel, batch_norm, dense, sizes, platform = expected[path.name]
        assert (config.conv, config.kernel, config.batch_norm, config.platform) == (conv, kernel, batch_norm, platform)
        assert model.sizes == sizes
        assert ([d.out_features for d in model.front.denses] if model.front else []) == dense
        for method in ("standard", "sat", "spec-sat"):          # the README's commands override the method
            TrainConfig(**{k: v for k, v in settings.items() if k not in EXTRA_KEYS} | {"method": method})

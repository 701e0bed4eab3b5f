"""A digital front end before the on-chip layers (issue 12): --conv, --onchip, digits28, file and fleet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pnndeploy.data.datasets import load_dataset
from pnndeploy.errors import ModelFileError
from pnndeploy.formats.digital import DigitalFrontEnd, DigitalLayer
from pnndeploy.formats.onnx_io import load_model, onnx_logits
from pnndeploy.training.config import TrainConfig
from pnndeploy.training.model import FrontEnd


@pytest.fixture(scope="module")
def digits28():
    return load_dataset("digits28", seed=0)


def test_digits28_is_digits_at_mnists_size(digits28, digits) -> None:
    assert digits28.n_features == 784 and digits28.image_shape == (1, 28, 28)
    assert digits.image_shape == (1, 8, 8)
    assert np.array_equal(digits28.y_test, digits.y_test)           # the same images, the same split
    assert digits28.X_train.min() >= 0 and digits28.X_train.max() <= 16
    # resampling keeps each image's mean brightness close (bilinear, no blur beyond the interpolation)
    small = digits.X_train.reshape(-1, 8, 8).mean(axis=(1, 2))
    big = digits28.X_train.reshape(-1, 28, 28).mean(axis=(1, 2))
    assert np.corrcoef(small, big)[0, 1] > 0.99


def test_numpy_front_end_matches_torch() -> None:
    torch.manual_seed(0)
    module = FrontEnd((1, 12, 10), conv=[3, 4], dense=[7], n_inputs=120)
    x = torch.rand(5, 120)
    want = module(x).detach().numpy()
    got = module.export().forward(x.numpy())
    assert got.shape == (5, 7) and module.out_features == 7
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # odd sizes pool like ONNX MaxPool: the last row/column is dropped
    assert module.export().output_size() == 7


def test_conv_only_front_end_flattens_the_pooled_image() -> None:
    torch.manual_seed(1)
    module = FrontEnd((2, 9, 6), conv=[3], dense=[], n_inputs=108)
    front = module.export()
    assert front.output_size() == 3 * 4 * 3 == module.out_features          # floor(9/2) x floor(6/2)
    x = torch.rand(4, 108)
    np.testing.assert_allclose(front.forward(x.numpy()), module(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_dense_only_front_end_needs_no_image() -> None:
    front = DigitalFrontEnd([DigitalLayer("digital0", "dense", np.eye(3, 4, dtype=np.float32),
                                          np.array([0.0, -1.0, 0.5], np.float32))])
    x = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    np.testing.assert_array_equal(front.forward(x), [[1.0, 1.0, 3.5]])     # ReLU after the layer
    assert front.input_size() == 4 and front.output_size() == 3


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory, digits28):
    from pnndeploy.training.pipeline import train_and_export

    path = tmp_path_factory.mktemp("conv") / "conv.onnx"
    config = TrainConfig(method="spec-sat", conv=[4, 8], hidden=[16], onchip=2, epochs=3)
    summary, result = train_and_export(digits28, config, path)
    return path, summary, result


def test_conv_model_exports_what_onnxruntime_runs(conv_model, digits28) -> None:
    path, summary, _ = conv_model
    model = load_model(path)
    assert model.digital is not None and model.digital.input_shape == (1, 28, 28)
    assert [layer.weight.shape for layer in model.layers] == [(16, 8 * 7 * 7), (10, 16)]   # on chip
    assert model.n_features == 784
    ours = model.logits(digits28.scaling.apply(digits28.X_test))
    theirs = onnx_logits(path, digits28.X_test)
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)
    assert (theirs.argmax(1) == digits28.y_test).mean() == pytest.approx(summary.test_accuracy, abs=1 / 360)
    assert summary.test_accuracy > 0.5


def test_conv_model_maps_and_runs_on_the_fleet(conv_model, tiny_fleet_dir) -> None:
    from pnndeploy.deploy.transfer import prepare_fleet, transfer_report

    path, summary, _ = conv_model
    prepared = prepare_fleet(path, [], True, tiny_fleet_dir, save_dir=None)
    report = transfer_report(prepared)
    accs = [d.accuracy for d in report.devices]
    assert len(accs) == 3 and all(0.1 < a <= 1.0 for a in accs)
    # only the on-chip layers are mapped
    deployment = prepared.deployments[0]
    assert len(deployment.layers) == 2


def test_onchip_splits_the_mlp(tmp_path: Path, digits) -> None:
    from pnndeploy.training.loop import build_model

    config = TrainConfig(method="sat", hidden=[24, 12], onchip=1)
    model = build_model(config, digits.n_features, digits.n_classes, digits.image_shape)
    assert [d.out_features for d in model.front.denses] == [24, 12]
    assert model.sizes == [12, 10]
    assert len(model.onchip_parameters()) == 1                     # SAT perturbs the chip only
    assert TrainConfig(hidden=[24, 12], onchip=0).layer_split() == ([], [24, 12])


def test_config_file_may_say_no_front_end(cli, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("method: sat\nconv: []\nonchip: 0\nhidden: 8\nepochs: 1\n")
    result = cli("train", "--config", config, "--out", tmp_path / "m.onnx", "--json")
    assert result.exit_code == 0, result.output
    assert load_model(tmp_path / "m.onnx").digital is None


@pytest.mark.parametrize("args, fragment", [
    (("--dataset", "iris", "--conv", "4"), "--conv needs image data"),
    (("--onchip", "3"), "--onchip 3"),
    (("--conv", "4,4,4,4"), "shrink"),
    (("--conv", "0"), "--conv must be positive"),
])
def test_bad_front_ends_are_one_line(cli, one_line_error, tmp_path: Path, args, fragment) -> None:
    out = tmp_path / "m.onnx"
    one_line_error(cli("train", "--method", "sat", *args, "--epochs", "1", "--out", out), fragment)
    assert not out.exists()


def test_a_damaged_front_end_is_refused(conv_model, tmp_path: Path) -> None:
    import onnx

    path = conv_model[0]
    proto = onnx.load(str(path))
    for prop in proto.metadata_props:
        if prop.key == "pnndeploy.digital":
            doc = json.loads(prop.value)
            original = prop.value
    for edit in ({"layers": 0, "out": 5}, {"layers": 0, "padding": True}, {"input_shape": [1, 28]}):
        doc = json.loads(original)
        if "layers" in edit:
            doc["layers"][0].update({k: v for k, v in edit.items() if k != "layers"})
        else:
            doc.update(edit)
        for prop in proto.metadata_props:
            if prop.key == "pnndeploy.digital":
                prop.value = json.dumps(doc)
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(proto.SerializeToString())
        with pytest.raises(ModelFileError, match="pnndeploy.digital"):
            load_model(bad)

"""ONNX export: one self-contained file that onnxruntime runs like the torch model, with full metadata."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from pnndeploy import __version__
from pnndeploy.data.datasets import load_dataset
from pnndeploy.errors import ModelFileError, PnnError
from pnndeploy.formats.onnx_io import load_model, onnx_logits
from pnndeploy.platforms import get_platform
from pnndeploy.training.config import TrainConfig
from pnndeploy.training.pipeline import train_and_export

MRR = get_platform("mrr")
DESIGN_KEYS = ("format_version", "platform", "platform_params", "method", "rho", "dataset", "input_scaling",
               "onchip", "metrics", "version", "seed")


def metadata(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def initializers(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_onnxruntime_matches_torch_on_raw_inputs(tiny_export):
    ds, model = tiny_export.dataset, tiny_export.result.model
    ort_logits = onnx_logits(tiny_export.path, ds.X_test)  # RAW inputs: the graph scales them
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(ds.scaling.apply(ds.X_test))).numpy()
    assert ort_logits.shape == torch_logits.shape == (len(ds.y_test), ds.n_classes)
    assert ort_logits.dtype == np.float32
    assert np.max(np.abs(ort_logits - torch_logits)) <= 1e-5
    acc_ort = float((ort_logits.argmax(1) == ds.y_test).mean())
    acc_torch = float((torch_logits.argmax(1) == ds.y_test).mean())
    assert acc_ort == acc_torch == pytest.approx(tiny_export.summary.test_accuracy, abs=1e-12)
    # the graph does its own scaling: raw inputs beyond the training range are clipped to [0, 1]
    wild = ds.X_test[:5] * 3.0 - 5.0
    with torch.no_grad():
        expected = model(torch.from_numpy(ds.scaling.apply(wild))).numpy()
    assert np.max(np.abs(onnx_logits(tiny_export.path, wild) - expected)) <= 1e-5


def test_one_self_contained_file(tiny_export):
    folder = tiny_export.path.parent
    assert sorted(p.name for p in folder.iterdir()) == [tiny_export.path.name]  # no side files, no temp files
    proto = onnx.load(str(tiny_export.path), load_external_data=False)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.initializer
    for t in proto.graph.initializer:
        assert t.data_location != onnx.TensorProto.EXTERNAL and not t.external_data, t.name
    opsets = {o.domain: o.version for o in proto.opset_import}
    assert opsets.get("", opsets.get("ai.onnx", 0)) >= 17
    # only the on-chip weights, gains, biases and scaling constants: every initializer is used
    used = {name for node in proto.graph.node for name in node.input}
    assert {t.name for t in proto.graph.initializer} <= used
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]


def test_metadata_keys_of_design(tiny_export):
    meta = metadata(tiny_export.path)
    for key in DESIGN_KEYS:
        assert f"pnndeploy.{key}" in meta, key
    s = tiny_export.summary
    assert json.loads(meta["pnndeploy.format_version"]) == 1
    assert meta["pnndeploy.platform"] == "mrr"
    assert meta["pnndeploy.method"] == "sat"
    assert json.loads(meta["pnndeploy.rho"]) == pytest.approx(0.1)
    assert meta["pnndeploy.dataset"] == "digits"
    assert meta["pnndeploy.version"] == __version__
    assert json.loads(meta["pnndeploy.seed"]) == 0
    pp = json.loads(meta["pnndeploy.platform_params"])
    assert pp["gamma"] == pytest.approx(0.15) and pp["a"] == pytest.approx(1.0)
    scaling = json.loads(meta["pnndeploy.input_scaling"])
    assert {"offset", "scale"} <= set(scaling)
    np.testing.assert_array_equal(np.float32(scaling["offset"]), tiny_export.dataset.scaling.offset)
    np.testing.assert_array_equal(np.float32(scaling["scale"]), tiny_export.dataset.scaling.scale)
    onchip = json.loads(meta["pnndeploy.onchip"])
    assert isinstance(onchip, list) and len(onchip) == 2
    assert set(onchip) <= set(initializers(tiny_export.path))
    metrics = json.loads(meta["pnndeploy.metrics"])
    assert metrics["test_accuracy"] == s.test_accuracy
    assert metrics["sharpness"] == s.sharpness and np.isfinite(metrics["sharpness"])
    config = json.loads(meta["pnndeploy.config"])
    assert config["hidden"] == [8] and config["epochs"] == 2


def test_load_model_round_trip(tiny_export):
    loaded = load_model(tiny_export.path)
    model = tiny_export.result.model
    assert len(loaded.layers) == len(model.layers) == 2
    assert loaded.n_features == 64 and loaded.n_classes == 10
    assert loaded.method == "sat" and loaded.platform == "mrr" and loaded.dataset == "digits"
    assert loaded.scaling == tiny_export.dataset.scaling
    assert loaded.sha256 == tiny_export.summary.model_sha256
    for got, layer in zip(loaded.layers, model.layers):
        controls = layer.controls.detach().numpy()
        assert got.controls.dtype == np.float32
        np.testing.assert_array_equal(got.controls, controls)  # exact float32 round trip via JSON
        np.testing.assert_allclose(got.weight, MRR.transfer(got.controls.astype(np.float64), **MRR.nominal),
                                   rtol=0, atol=1e-6)
        np.testing.assert_array_equal(got.gain, layer.gain.detach().numpy())
        np.testing.assert_array_equal(got.bias, layer.bias.detach().numpy())
    # the numpy logits of the loaded model agree with onnxruntime
    X = tiny_export.dataset.X_test[:50]
    np.testing.assert_allclose(loaded.logits(loaded.scaling.apply(X)), onnx_logits(tiny_export.path, X),
                               rtol=0, atol=1e-5)


def test_onnxruntime_loads_it_without_warnings(tiny_export, tmp_path, capfd):
    import onnxruntime as ort

    capfd.readouterr()
    ort.InferenceSession(str(tiny_export.path), providers=["CPUExecutionProvider"])
    err = capfd.readouterr().err
    assert "W:onnxruntime" not in err and "warn" not in err.lower(), err
    # the capture works: an unused initializer does make onnxruntime warn
    proto = onnx.load(str(tiny_export.path))
    proto.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "unused_thing"))
    noisy = tmp_path / "noisy.onnx"
    onnx.save(proto, str(noisy))
    ort.InferenceSession(str(noisy), providers=["CPUExecutionProvider"])
    assert "unused_thing" in capfd.readouterr().err


def test_same_seed_gives_identical_initializers(tiny_export, tmp_path):
    again = tmp_path / "again.onnx"
    train_and_export(tiny_export.dataset, TrainConfig(method="sat", epochs=2, hidden=[8], seed=0), again)
    a, b = initializers(tiny_export.path), initializers(again)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), name
    ma, mb = metadata(tiny_export.path), metadata(again)
    assert ma["pnndeploy.controls"] == mb["pnndeploy.controls"]
    other = tmp_path / "other.onnx"
    train_and_export(load_dataset("digits", seed=1), TrainConfig(method="sat", epochs=2, hidden=[8], seed=1), other)
    c = initializers(other)
    assert not np.array_equal(a["layer0.weight"], c["layer0.weight"])


def test_split_seed_must_match_the_model_seed(tmp_path):
    """The model records its seed and transfer re-splits with it: a mismatch would leak training data into the test."""
    with pytest.raises(PnnError, match="split with seed 0"):
        train_and_export(load_dataset("digits", seed=0), TrainConfig(epochs=1, hidden=[8], seed=3), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_standard_export_maps_weights_onto_controls(tiny_digits, tmp_path):
    path = tmp_path / "std.onnx"
    summary, result = train_and_export(tiny_digits, TrainConfig(method="standard", epochs=2, hidden=[8],
                                                                lr=0.3), path)
    loaded = load_model(path)
    assert loaded.method == "standard" and loaded.metadata["rho"] == 0.0
    clipped = 0
    for got, layer in zip(loaded.layers, result.model.layers):
        W = layer.W.detach().numpy().astype(np.float64)
        realised = MRR.transfer(got.controls.astype(np.float64), **MRR.nominal)
        np.testing.assert_allclose(got.weight, realised, atol=1e-6)
        reachable = W <= MRR.transfer(MRR.control_range[1], **MRR.nominal)
        np.testing.assert_allclose(realised[reachable], W[reachable], atol=1e-5)
        assert np.all(got.controls >= 0)  # the positive branch
        clipped += int((~reachable).sum())
    assert summary.clipped_weights == clipped == loaded.metrics["clipped_weights"]
    assert clipped > 0  # lr 0.3 pushes some W to +1, beyond the ring's reach
    # the reported accuracy is the file's: onnxruntime on raw inputs reproduces it exactly
    onnx_acc = float((onnx_logits(path, tiny_digits.X_test).argmax(1) == tiny_digits.y_test).mean())
    assert summary.test_accuracy == loaded.metrics["test_accuracy"] == pytest.approx(onnx_acc, abs=1e-12)
    assert loaded.metrics["trained_test_accuracy"] == result.test_accuracy


def test_refuses_files_it_should_not_read(tiny_export, tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ModelFileError, match="not found"):
        load_model(missing)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xfe this is not protobuf \x00\x01")
    with pytest.raises(ModelFileError):
        load_model(junk)
    # a valid ONNX model that pnndeploy did not write
    proto = onnx.load(str(tiny_export.path))
    del proto.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, str(foreign))
    with pytest.raises(ModelFileError, match="not written by pnndeploy"):
        load_model(foreign)
    # an initializer pointing at external data is never followed
    proto = onnx.load(str(tiny_export.path))
    t = proto.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    external = tmp_path / "external.onnx"
    external.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelFileError, match="external data"):
        load_model(external)
    # a missing required key
    proto = onnx.load(str(tiny_export.path))
    keep = [p for p in proto.metadata_props if p.key != "pnndeploy.metrics"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    lacking = tmp_path / "lacking.onnx"
    onnx.save(proto, str(lacking))
    with pytest.raises(ModelFileError, match="pnndeploy.metrics"):
        load_model(lacking)

"""Tests for pnndeploy.data: bundled datasets, IDX/MNIST and npz loading, input scaling."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from pnndeploy.data.datasets import Dataset, load_dataset, load_idx
from pnndeploy.data.scaling import InputScaling
from pnndeploy.errors import DatasetError, ModelFileError

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
             np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    """Write ``arr`` as an IDX file (big-endian header and data), optionally gzip-compressed."""
    arr = np.asarray(arr)
    code = IDX_CODES[arr.dtype]
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_mnist(folder: Path, n_train: int = 30, n_test: int = 12, gz: bool = False, dotted: bool = False):
    """Small MNIST-like data (28x28 ubyte images, labels 0..9) in the standard file names."""
    rng = np.random.default_rng(0)
    data = {
        "train-images": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train-labels": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "t10k-labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for stem, arr in data.items():
        kind = "idx3-ubyte" if arr.ndim == 3 else "idx1-ubyte"
        name = f"{stem}.{kind}" if dotted else f"{stem}-{kind}"
        write_idx(folder / name, arr, gz=gz)
    return data


def assert_one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg
    return msg


# ---------------------------------------------------------------------------
# digits / iris
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits", seed=0)


def test_digits_shapes_and_types(digits: Dataset) -> None:
    assert digits.name == "digits"
    assert digits.X_train.shape == (1437, 64)
    assert digits.X_test.shape == (360, 64)
    assert digits.y_train.shape == (1437,) and digits.y_test.shape == (360,)
    assert digits.n_features == 64
    assert digits.n_classes == 10
    for arr in (digits.X_train, digits.X_test):
        assert arr.dtype == np.float32 and arr.flags.c_contiguous
    for arr in (digits.y_train, digits.y_test):
        assert arr.dtype == np.int64 and arr.flags.c_contiguous
    assert set(np.unique(digits.y_train)) == set(range(10))
    # raw, unscaled pixels
    assert digits.X_train.max() == 16.0


def test_digits_split_is_stratified(digits: Dataset) -> None:
    y_all = np.concatenate([digits.y_train, digits.y_test])
    total = np.bincount(y_all, minlength=10)
    test_counts = np.bincount(digits.y_test, minlength=10)
    expected = total * len(digits.y_test) / len(y_all)
    assert np.all(np.abs(test_counts - expected) <= 1.0), (test_counts, expected)


def test_split_fixed_by_seed(digits: Dataset) -> None:
    again = load_dataset("digits", seed=0)
    np.testing.assert_array_equal(again.X_train, digits.X_train)
    np.testing.assert_array_equal(again.y_test, digits.y_test)
    other = load_dataset("digits", seed=1)
    assert not np.array_equal(other.X_train, digits.X_train)


def test_digits_scaling_maps_into_unit_interval(digits: Dataset) -> None:
    assert digits.scaling.to_json() == {"offset": 0.0, "scale": 1.0 / 16.0, "clip": [0.0, 1.0]}
    Z = digits.scaling.apply(digits.X_train)
    assert Z.dtype == np.float32 and Z.shape == digits.X_train.shape
    assert Z.min() == 0.0 and Z.max() == 1.0
    np.testing.assert_allclose(Z, digits.X_train / 16.0)


def test_scaling_json_round_trip_and_clip() -> None:
    s = InputScaling(offset=np.array([0.1, -2.0, 3.0]), scale=np.array([1 / 3, 0.5, 7.0]))
    text = json.dumps(s.to_json())
    back = InputScaling.from_json(json.loads(text))
    assert back == s and hash(back) == hash(s)
    assert back.to_json() == s.to_json()
    X = np.array([[0.1, -2.0, 3.0], [100.0, -100.0, 3.1], [0.4, 0.0, 2.0]])
    np.testing.assert_array_equal(back.apply(X), s.apply(X))
    out = s.apply(X)
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
    assert out[0].tolist() == [0.0, 0.0, 0.0]
    assert out[1, 0] == 1.0 and out[1, 1] == 0.0  # clipped
    np.testing.assert_allclose(out[2], [0.1, 1.0, 0.0], atol=1e-6)
    # the stored floats are exactly the float32 values
    assert s.to_json()["scale"][0] == float(np.float32(1 / 3))


def test_scaling_rejects_wrong_feature_count() -> None:
    s = InputScaling(offset=np.zeros(3), scale=np.ones(3))
    with pytest.raises(DatasetError) as exc:
        s.apply(np.zeros((2, 4)))
    assert "3" in assert_one_line(exc)


@pytest.mark.parametrize(
    "meta",
    [
        {"scale": 1.0},
        {"offset": 0.0},
        {"offset": 0.0, "scale": 0.0},
        {"offset": 0.0, "scale": -1.0},
        {"offset": "0", "scale": 1.0},
        {"offset": [0.0, float("nan")], "scale": 1.0},
        {"offset": [0.0, 1.0], "scale": [1.0, 1.0, 1.0]},
        {"offset": 0.0, "scale": 1.0, "clip": [0.0, 2.0]},
        "not a dict",
    ],
)
def test_scaling_from_json_rejects_bad_metadata(meta) -> None:
    with pytest.raises(ModelFileError) as exc:
        InputScaling.from_json(meta)
    assert_one_line(exc)


def test_iris_per_feature_scaling_uses_train_split() -> None:
    ds = load_dataset("iris", seed=2)
    assert ds.X_train.shape == (120, 4) and ds.X_test.shape == (30, 4) and ds.n_classes == 3
    X_all = np.concatenate([ds.X_train, ds.X_test])
    # with this seed the test split holds a feature's global min and another's max,
    # so scaling over all data would differ from scaling over the train split
    assert np.any(X_all.min(axis=0) < ds.X_train.min(axis=0))
    assert np.any(X_all.max(axis=0) > ds.X_train.max(axis=0))
    meta = ds.scaling.to_json()
    assert len(meta["offset"]) == 4 and len(meta["scale"]) == 4
    np.testing.assert_array_equal(np.array(meta["offset"], dtype=np.float32), ds.X_train.min(axis=0))
    Z = ds.scaling.apply(ds.X_train)
    np.testing.assert_allclose(Z.min(axis=0), 0.0, atol=0)
    np.testing.assert_allclose(Z.max(axis=0), 1.0, atol=1e-6)


# ---------------------------------------------------------------------------
# IDX / MNIST
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_load_idx_round_trip(tmp_path: Path, gz: bool, dtype) -> None:
    arr = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype) if dtype != np.uint8 else \
        np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    path = write_idx(tmp_path / "a-idx3", arr, gz=gz)
    back = load_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, arr)


def test_load_idx_truncated_and_trailing_bytes(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "t-idx3-ubyte", arr)
    full = path.read_bytes()
    path.write_bytes(full[:-5])
    with pytest.raises(DatasetError) as exc:
        load_idx(path)
    msg = assert_one_line(exc)
    assert str(path) in msg and str(len(full)) in msg and str(len(full) - 5) in msg
    path.write_bytes(full + b"\x00")
    with pytest.raises(DatasetError) as exc:
        load_idx(path)
    assert str(len(full) + 1) in assert_one_line(exc)
    path.write_bytes(full[:6])  # header cut short
    with pytest.raises(DatasetError):
        load_idx(path)


@pytest.mark.parametrize("magic", [b"\x01\x00\x08\x03", b"\x00\x00\x07\x03", b"\x00\x00\x08\x00", b"\x00\x00\x08\x05"])
def test_load_idx_bad_magic(tmp_path: Path, magic: bytes) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(magic + struct.pack(">3I", 1, 1, 1) + b"\x00")
    with pytest.raises(DatasetError) as exc:
        load_idx(path)
    assert str(path) in assert_one_line(exc)


def test_load_idx_broken_gzip_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 3) + b"\x01\x02\x03")[:-6])
    with pytest.raises(DatasetError) as exc:
        load_idx(path)
    assert "gzip" in assert_one_line(exc)
    with pytest.raises(DatasetError):
        load_idx(tmp_path / "nope")


@pytest.mark.parametrize("gz,dotted", [(False, False), (True, False), (False, True)])
def test_load_mnist(tmp_path: Path, gz: bool, dotted: bool) -> None:
    data = make_mnist(tmp_path, gz=gz, dotted=dotted)
    ds = load_dataset(f"mnist:{tmp_path}", seed=123)
    assert ds.name == f"mnist:{tmp_path}"
    assert ds.X_train.shape == (30, 784) and ds.X_test.shape == (12, 784)
    assert ds.X_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.n_classes == 10 and ds.n_features == 784
    np.testing.assert_array_equal(ds.X_train, data["train-images"].reshape(30, 784).astype(np.float32))
    np.testing.assert_array_equal(ds.y_test, data["t10k-labels"])
    assert ds.scaling.to_json()["offset"] == 0.0
    assert ds.scaling.to_json()["scale"] == float(np.float32(1 / 255))
    Z = ds.scaling.apply(ds.X_train)
    assert Z.min() >= 0.0 and Z.max() <= 1.0


def test_mnist_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as exc:
        load_dataset(f"mnist:{tmp_path}")
    msg = assert_one_line(exc)
    assert "train-images-idx3-ubyte" in msg and str(tmp_path) in msg
    make_mnist(tmp_path)
    # count mismatch between images and labels
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(11, dtype=np.uint8))
    with pytest.raises(DatasetError) as exc:
        load_dataset(f"mnist:{tmp_path}")
    assert "12" in assert_one_line(exc) and "11" in str(exc.value)
    # label out of range
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(12, 10, dtype=np.uint8))
    with pytest.raises(DatasetError):
        load_dataset(f"mnist:{tmp_path}")
    # truncated file found through load_dataset names the spec and the file
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(12, dtype=np.uint8))
    img = tmp_path / "train-images-idx3-ubyte"
    img.write_bytes(img.read_bytes()[:-1])
    with pytest.raises(DatasetError) as exc:
        load_dataset(f"mnist:{tmp_path}")
    assert str(img) in assert_one_line(exc) and "mnist:" in str(exc.value)
    with pytest.raises(DatasetError):
        load_dataset(f"mnist:{tmp_path / 'missing'}")


# ---------------------------------------------------------------------------
# npz
# ---------------------------------------------------------------------------


def test_npz_without_test_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 3)) * [1.0, 10.0, 100.0]
    y = np.repeat([0.0, 1.0, 2.0, 3.0, 4.0], 10)  # float labels that are exact integers
    path = tmp_path / "d.npz"
    np.savez(path, X=X, y=y)
    ds = load_dataset(f"npz:{path}", seed=5)
    assert ds.name == f"npz:{path}"
    assert ds.X_train.shape == (40, 3) and ds.X_test.shape == (10, 3)
    assert ds.X_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.n_classes == 5
    np.testing.assert_array_equal(np.bincount(ds.y_test), [2, 2, 2, 2, 2])  # stratified
    Z = ds.scaling.apply(ds.X_train)
    np.testing.assert_allclose(Z.min(axis=0), 0.0)
    np.testing.assert_allclose(Z.max(axis=0), 1.0, atol=1e-6)
    again = load_dataset(f"npz:{path}", seed=5)
    np.testing.assert_array_equal(again.y_train, ds.y_train)


def test_npz_with_test_arrays(tmp_path: Path) -> None:
    X = np.arange(12, dtype=np.int32).reshape(6, 2)
    y = np.array([0, 1, 0, 1, 0, 1])
    X_test = np.array([[100, -5]], dtype=np.int32)
    y_test = np.array([3])
    path = tmp_path / "d.npz"
    np.savez_compressed(path, X=X, y=y, X_test=X_test, y_test=y_test)
    ds = load_dataset(f"npz:{path}")
    np.testing.assert_array_equal(ds.X_train, X.astype(np.float32))  # order kept, no split
    np.testing.assert_array_equal(ds.y_test, [3])
    assert ds.n_classes == 4  # max label over train and test + 1
    assert ds.scaling.to_json()["offset"] == [0.0, 1.0]
    assert ds.scaling.apply(X_test).tolist() == [[1.0, 0.0]]


def test_npz_singleton_class_falls_back_to_plain_split(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, X=np.arange(20.0).reshape(10, 2), y=np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 2]))
    ds = load_dataset(f"npz:{path}", test_fraction=0.3)
    assert len(ds.y_train) + len(ds.y_test) == 10 and ds.n_classes == 3


@pytest.mark.parametrize(
    "arrays,needle",
    [
        ({"X": np.zeros((4, 2))}, "'y'"),
        ({"y": np.zeros(4)}, "'X'"),
        ({"X": np.zeros((4, 2)), "y": np.array([0, 1, 0])}, "rows"),
        ({"X": np.zeros(4), "y": np.array([0, 1, 0, 1])}, "2-D"),
        ({"X": np.array([[0.0], [np.nan], [1.0], [2.0]]), "y": np.array([0, 1, 0, 1])}, "NaN"),
        ({"X": np.zeros((4, 2)), "y": np.array([0, 1, 0, -1])}, "negative"),
        ({"X": np.zeros((4, 2)), "y": np.array([0, 1.5, 0, 1])}, "integer"),
        ({"X": np.zeros((4, 2)), "y": np.zeros(4)}, "one class"),
        ({"X": np.zeros((4, 2)), "y": np.array([0, 1, 0, 1]), "X_test": np.zeros((1, 2))}, "y_test"),
        ({"X": np.zeros((4, 2)), "y": np.array([0, 1, 0, 1]), "X_test": np.zeros((1, 3)), "y_test": np.array([0])},
         "features"),
        ({"X": np.array([["a", "b"]] * 4), "y": np.array([0, 1, 0, 1])}, "dtype"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict, needle: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError) as exc:
        load_dataset(f"npz:{path}")
    msg = assert_one_line(exc)
    assert needle in msg and str(path) in msg


def test_npz_not_an_archive_and_pickled_objects(tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip file at all")
    with pytest.raises(DatasetError) as exc:
        load_dataset(f"npz:{junk}")
    assert "npz" in assert_one_line(exc)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(DatasetError):
        load_dataset(f"npz:{single}")
    objs = tmp_path / "objs.npz"
    np.savez(objs, X=np.array([[1, None]], dtype=object), y=np.array([0]))
    with pytest.raises(DatasetError) as exc:
        load_dataset(f"npz:{objs}")
    assert "objects" in assert_one_line(exc)
    with pytest.raises(DatasetError):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")


# ---------------------------------------------------------------------------
# spec / argument errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["cifar10", "cifar10:", "", "mnist", "npz", "mnist:", "csv:/x"])
def test_unknown_or_incomplete_spec(spec: str) -> None:
    with pytest.raises(DatasetError) as exc:
        load_dataset(spec)
    assert_one_line(exc)


def test_unknown_spec_lists_accepted_forms() -> None:
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar100")
    msg = assert_one_line(exc)
    for form in ("digits", "iris", "mnist:DIR", "cifar10:DIR", "npz:PATH"):
        assert form in msg


@pytest.mark.parametrize("kwargs", [{"test_fraction": 0.0}, {"test_fraction": 1.0}, {"seed": -1}, {"seed": 1.5}])
def test_bad_seed_or_fraction(kwargs: dict) -> None:
    with pytest.raises(DatasetError):
        load_dataset("iris", **kwargs)

"""CIFAR-10 as ``cifar10:DIR`` (issue 23, section 4): its binary version only, on small synthetic files.

The files are written here in the distribution's exact format (3,073-byte records: a label byte, then the red,
green and blue 32x32 planes, each row-major), so nothing is downloaded and no data lives in the repository.
Every damaged or misnamed folder is one line naming the file and the fix, and exit status 2 from the CLI.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from pnndeploy.data import datasets
from pnndeploy.data.datasets import CIFAR10_RECORD, CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES, load_dataset
from pnndeploy.errors import DatasetError

FILES = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
N = 20          # records per synthetic file


def write_cifar10(folder: Path, n: int = N, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The six batch files in ``folder``: name -> (labels (n,), images (n, 3, 32, 32)), all uint8.

    Labels differ per file (an offset by the file's index), so the order of the files shows in y.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for k, name in enumerate(FILES):
        labels = ((np.arange(n) + k) % 10).astype(np.uint8)
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        records = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1)
        (folder / name).write_bytes(records.tobytes())
        written[name] = (labels, images)
    return written


def one_line(exc: pytest.ExceptionInfo, *fragments: str) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)
    return msg


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def test_shapes_scaling_and_labels(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    ds = load_dataset(f"cifar10:{tmp_path}")
    assert ds.name == f"cifar10:{tmp_path}"
    assert ds.X_train.shape == (5 * N, 3 * 32 * 32) and ds.X_test.shape == (N, 3 * 32 * 32)
    assert ds.X_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.n_classes == 10 and ds.n_features == 3072 and ds.image_shape == (3, 32, 32)
    assert ds.split_seed is None                     # the files fix the split
    assert ds.scaling.to_json()["offset"] == 0.0
    assert ds.scaling.to_json()["scale"] == float(np.float32(1 / 255))   # as MNIST's: raw bytes 0..255
    Z = ds.scaling.apply(np.concatenate([ds.X_train, ds.X_test]))
    assert Z.min() >= 0.0 and Z.max() <= 1.0 and Z.max() > 0.99
    # train is data_batch_1 .. data_batch_5 in that order, test is test_batch
    train = [written[name] for name in CIFAR10_TRAIN_FILES]
    np.testing.assert_array_equal(ds.y_train, np.concatenate([labels for labels, _ in train]))
    np.testing.assert_array_equal(ds.X_train, np.concatenate([images for _, images in train]).reshape(5 * N, -1))
    labels, images = written[CIFAR10_TEST_FILE]
    np.testing.assert_array_equal(ds.y_test, labels)
    np.testing.assert_array_equal(ds.X_test.reshape(N, 3, 32, 32), images)


def test_a_pixel_lands_in_its_channel_row_and_column(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    record = np.zeros(CIFAR10_RECORD, np.uint8)
    record[0] = 7
    red, green, blue = (3, 29), (17, 0), (31, 31)    # (row, col) in each plane
    record[1 + 0 * 1024 + red[0] * 32 + red[1]] = 200
    record[1 + 1 * 1024 + green[0] * 32 + green[1]] = 100
    record[1 + 2 * 1024 + blue[0] * 32 + blue[1]] = 50
    path = tmp_path / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:CIFAR10_RECORD] + record.tobytes() + path.read_bytes()[2 * CIFAR10_RECORD:])
    ds = load_dataset(f"cifar10:{tmp_path}")
    k = N + 1                                        # second record of the second batch
    assert ds.y_train[k] == 7
    x = ds.X_train[k]
    assert np.flatnonzero(x).tolist() == [3 * 32 + 29, 1024 + 17 * 32, 2048 + 31 * 32 + 31]
    image = x.reshape(ds.image_shape)                # what the conv front end sees
    assert image[0, 3, 29] == 200 and image[1, 17, 0] == 100 and image[2, 31, 31] == 50


def test_the_tarballs_own_folder_is_found(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path / "cifar-10-batches-bin")
    (tmp_path / "cifar-10-batches-bin" / "batches.meta.txt").write_text("airplane\nautomobile\n")
    ds = load_dataset(f"cifar10:{tmp_path}")
    np.testing.assert_array_equal(ds.y_test, written[CIFAR10_TEST_FILE][0])
    assert load_dataset(f"cifar10:{tmp_path / 'cifar-10-batches-bin'}").X_train.shape == (5 * N, 3072)


def test_files_are_read_through_links_like_mnists(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "real")
    (tmp_path / "linked").mkdir()
    for name in FILES:
        (tmp_path / "linked" / name).symlink_to(tmp_path / "real" / name)
    assert load_dataset(f"cifar10:{tmp_path / 'linked'}").X_test.shape == (N, 3072)


# ---------------------------------------------------------------------------
# Broken folders and files: one line each
# ---------------------------------------------------------------------------


def test_missing_files_are_named(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_3.bin").unlink()
    (tmp_path / "test_batch.bin").unlink()
    with pytest.raises(DatasetError) as exc:
        load_dataset(f"cifar10:{tmp_path}")
    msg = one_line(exc, "lacks data_batch_3.bin, test_batch.bin", str(tmp_path), "CIFAR-10 binary version")
    assert "data_batch_1.bin," not in msg.split("lacks")[1].split("(")[0]


def test_an_empty_folder_or_no_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as exc:
        load_dataset(f"cifar10:{tmp_path}")
    one_line(exc, "none of the CIFAR-10 binary files", "data_batch_1.bin", "suitable for C programs")
    with pytest.raises(DatasetError) as exc:
        load_dataset(f"cifar10:{tmp_path / 'gone'}")
    one_line(exc, "not found", "gone")
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(DatasetError) as exc:
        load_dataset(f"cifar10:{tmp_path / 'cifar-10-binary.tar.gz'}")
    one_line(exc, "is not a folder", "unpack it first")


@pytest.mark.parametrize("subfolder", ["", "cifar-10-batches-py"])
def test_the_pickled_version_is_refused_and_never_unpickled(tmp_path: Path, subfolder: str) -> None:
    folder = tmp_path / subfolder if subfolder else tmp_path
    folder.mkdir(exist_ok=True)
    sentinel = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))     # unpickling this would create the sentinel

    for name in ("data_batch_1", "data_batch_2", "test_batch", "batches.meta"):
        (folder / name).write_bytes(pickle.dumps(Trap()))
    with pytest.raises(DatasetError) as exc:
        load_dataset(f"cifar10:{tmp_path}")
    one_line(exc, "pickled Python version", "never reads", "'CIFAR-10 binary version (suitable for C programs)'",
             str(folder))
    assert not sentinel.exists()


@pytest.mark.parametrize("damage, fragments", [
    (lambda raw: raw[:-1], ("data_batch_4.bin", "not a whole number of 3,073-byte records", "19 whole records")),
    (lambda raw: raw + b"\0", ("data_batch_4.bin", "20 whole records and 1 bytes over")),
    (lambda raw: raw[:100], ("data_batch_4.bin", "0 whole records and 100 bytes over")),
    (lambda raw: b"", ("data_batch_4.bin", "is empty")),
    (lambda raw: raw[:5 * CIFAR10_RECORD] + b"\x0a" + raw[5 * CIFAR10_RECORD + 1:],
     ("data_batch_4.bin", "record 5 ", "label 10", "0..9")),
    (lambda raw: raw[:CIFAR10_RECORD * 19] + b"\xff" + raw[CIFAR10_RECORD * 19 + 1:], ("record 19 ", "label 255")),
], ids=["truncated", "trailing", "short", "empty", "label-10", "label-255"])
def test_damaged_files(tmp_path: Path, damage, fragments) -> None:
    write_cifar10(tmp_path)
    path = tmp_path / "data_batch_4.bin"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DatasetError) as exc:
        load_dataset(f"cifar10:{tmp_path}")
    one_line(exc, f"cifar10:{tmp_path}", *fragments)


def test_not_regular_files(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_5.bin").unlink()
    (tmp_path / "data_batch_5.bin").mkdir()
    with pytest.raises(DatasetError) as exc:
        load_dataset(f"cifar10:{tmp_path}")
    one_line(exc, "data_batch_5.bin is a folder, not a regular file")
    os.rmdir(tmp_path / "data_batch_5.bin")
    os.mkfifo(tmp_path / "data_batch_5.bin")         # refused from its stat: never opened, so never blocks
    with pytest.raises(DatasetError) as exc:
        load_dataset(f"cifar10:{tmp_path}")
    one_line(exc, "data_batch_5.bin is a FIFO (named pipe)")
    (tmp_path / "data_batch_5.bin").unlink()
    (tmp_path / "data_batch_5.bin").symlink_to(tmp_path / "nowhere.bin")
    with pytest.raises(DatasetError) as exc:
        load_dataset(f"cifar10:{tmp_path}")
    one_line(exc, "data_batch_5.bin not found")


def test_size_limits_are_checked_before_reading(tmp_path: Path, monkeypatch) -> None:
    write_cifar10(tmp_path)
    read = []
    monkeypatch.setattr(datasets, "read_bounded", lambda *a: read.append(a))   # nothing may be read
    monkeypatch.setattr(datasets, "MAX_DATASET_BYTES", 10 * CIFAR10_RECORD)     # one file: 20 records
    with pytest.raises(DatasetError) as exc:
        load_dataset(f"cifar10:{tmp_path}")
    one_line(exc, "data_batch_1.bin is 60.02 KiB, more than the 30.01 KiB such a file may hold")
    monkeypatch.setattr(datasets, "MAX_DATASET_BYTES", 100 * CIFAR10_RECORD)    # each file fits, six do not
    with pytest.raises(DatasetError) as exc:
        load_dataset(f"cifar10:{tmp_path}")
    one_line(exc, "the six files", "hold 360.1 KiB, more than the 300.1 KiB")
    assert read == []


@pytest.mark.parametrize("spec, fragment", [
    ("cifar10", "needs a folder: use cifar10:DIR"),
    ("cifar10:", "no folder given; use cifar10:DIR"),
    ("cifar10:  ", "no folder given"),
    ("cifar100:x", "unknown dataset"),
])
def test_incomplete_specs(spec: str, fragment: str) -> None:
    with pytest.raises(DatasetError) as exc:
        load_dataset(spec)
    one_line(exc, fragment)


def test_specs_list_cifar10_everywhere_they_are_listed() -> None:
    from click.testing import CliRunner

    from pnndeploy.cli import main

    assert "cifar10:DIR" in datasets.ACCEPTED_SPECS
    assert "cifar10:DIR" in CliRunner().invoke(main, ["train", "--help"]).output
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "`cifar10:DIR`" in readme and "CIFAR-10 binary version" in readme


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("break_it, fragments", [
    (lambda d: (d / "test_batch.bin").unlink(), ("lacks test_batch.bin",)),
    (lambda d: (d / "data_batch_2.bin").write_bytes(b"\1" * 3000), ("data_batch_2.bin", "3,073-byte records")),
    (lambda d: (d / "data_batch_1.bin").write_bytes(b"\x0b" + b"\0" * 3072), ("data_batch_1.bin", "label 11")),
    (lambda d: [(d / n).rename(d / n.removesuffix(".bin")) for n in FILES], ("pickled Python version",)),
], ids=["missing", "truncated", "label", "pickled-names"])
def test_cli_refuses_a_broken_folder_with_one_line(cli, one_line_error, tmp_path: Path, monkeypatch,
                                                    break_it, fragments) -> None:
    monkeypatch.chdir(tmp_path)
    write_cifar10(tmp_path / "cifar")
    break_it(tmp_path / "cifar")
    out = tmp_path / "m.onnx"
    one_line_error(cli("train", "--dataset", "cifar10:cifar", "--method", "sat", "--conv", "2", "--epochs", "1",
                       "--out", out), "dataset cifar10:cifar", *fragments)
    assert not out.exists()


def test_cli_trains_a_conv_model_on_cifar10(cli, tmp_path: Path, monkeypatch) -> None:
    from pnndeploy.formats.onnx_io import load_model, onnx_logits

    monkeypatch.chdir(tmp_path)
    write_cifar10(tmp_path / "cifar")
    out = tmp_path / "m.onnx"
    result = cli("train", "--dataset", "cifar10:cifar", "--platform", "mrr", "--conv", "2", "--hidden", "8",
                 "--onchip", "2", "--epochs", "1", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["dataset"] == "cifar10:cifar" and summary["platform"] == "mrr"
    model = load_model(out)
    assert model.digital is not None and model.digital.input_shape == (3, 32, 32)
    assert model.digital.layers[0].weight.shape == (2, 3, 3, 3)          # three input channels
    assert model.n_features == 3072
    assert [layer.weight.shape for layer in model.layers] == [(8, 2 * 16 * 16), (10, 8)]   # on chip
    ds = load_dataset("cifar10:cifar")
    np.testing.assert_allclose(onnx_logits(out, ds.X_test), model.logits(ds.scaling.apply(ds.X_test)),
                               rtol=1e-4, atol=1e-4)

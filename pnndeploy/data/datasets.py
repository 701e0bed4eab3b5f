"""Datasets for training physical neural networks: the bundled sets, MNIST IDX files, CIFAR-10 and ``.npz`` archives.

Every dataset carries the :class:`~pnndeploy.data.scaling.InputScaling` that maps
its raw features to optical powers in [0, 1].  Arrays are returned *raw*
(unscaled) so the same data can be re-scaled or inspected without undoing
anything.

Only numpy is used here (scikit-learn is imported lazily for the bundled data
sets and the split), nothing is downloaded, ``.npz`` files are read with
``allow_pickle=False`` and CIFAR-10 only from its binary version, so a data file can never run code.
"""

from __future__ import annotations

import math
import numbers
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pnndeploy.data.scaling import InputScaling, _data_error, _one_line
from pnndeploy.untrusted import FileProblem, brief, read_bounded, regular_file_problem, size_text

__all__ = ["Dataset", "load_dataset", "load_idx"]

ACCEPTED_SPECS = ("digits, digits28 (digits resampled to 28x28), iris, "
                  "mnist:DIR (folder with the four MNIST IDX files), "
                  "cifar10:DIR (folder with the six CIFAR-10 binary-version .bin files), "
                  "npz:PATH (arrays X, y[, X_test, y_test])")

#: Largest data file read, and most bytes an IDX or .npz file may inflate to (MNIST's training images: 45 MiB);
#: also the most CIFAR-10's six files may hold together (the real ones: 176 MiB).
MAX_DATASET_BYTES = 1 << 30

# Labels are class indices; a larger label is almost surely not an index (and
# would build an absurdly wide output layer), so refuse it with a clear message.
MAX_CLASSES = 100_000

_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_DTYPE_NAMES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "short", 0x0C: "int", 0x0D: "float", 0x0E: "double"}

#: CIFAR-10's binary version: five training batches (read in this order), one test batch.
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{k}.bin" for k in range(1, 6))
CIFAR10_TEST_FILE = "test_batch.bin"
#: One record: a label byte 0..9, then 1024 red, 1024 green and 1024 blue bytes, each plane row-major 32x32.
CIFAR10_SHAPE = (3, 32, 32)
CIFAR10_RECORD = 1 + math.prod(CIFAR10_SHAPE)
#: The folder the binary tarball (cifar-10-binary.tar.gz) unpacks to; cifar10:DIR may name it or its parent.
_CIFAR10_SUBFOLDER = "cifar-10-batches-bin"
#: What the pickled Python version holds (and its folder): recognised only to say it is not read.
_CIFAR10_PICKLES = ("data_batch_1", "test_batch", "batches.meta")
_CIFAR10_PICKLE_FOLDER = "cifar-10-batches-py"
_CIFAR10_FETCH = "the 'CIFAR-10 binary version (suitable for C programs)' (cifar-10-binary.tar.gz)"

_MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


# ---------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------


@dataclass
class Dataset:
    """Raw train/test data plus the scaling that turns it into optical powers.

    ``X_*`` are float32 raw features (N, F), ``y_*`` int64 labels in 0..n_classes-1;
    all C-contiguous.  ``name`` is the spec as the user wrote it, for messages and metadata.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    scaling: InputScaling
    #: Seed of the train/test split, None when the split is fixed by the files (MNIST, npz with X_test).
    #: A model records its seed and transfer re-derives its test split from it, so they must agree.
    split_seed: int | None = None
    #: (channels, rows, cols) when the features are an image in row-major order (a conv front end needs it).
    image_shape: tuple[int, int, int] | None = None

    @property
    def n_features(self) -> int:
        """Number of input features (= optical input channels the model needs)."""
        return int(self.X_train.shape[1])


def _minmax_scaling(X_train: np.ndarray, spec: str) -> InputScaling:
    """Per-feature min/max of the training split, so train data spans exactly [0, 1]."""
    lo = X_train.min(axis=0).astype(np.float64)
    hi = X_train.max(axis=0).astype(np.float64)
    rng = hi - lo
    with np.errstate(divide="ignore", over="ignore"):
        scale = np.where(rng > 0, 1.0 / np.where(rng > 0, rng, 1.0), 1.0)
    bad = np.flatnonzero(~np.isfinite(scale.astype(np.float32)) | (scale.astype(np.float32) <= 0))
    if bad.size:
        j = int(bad[0])
        raise _data_error(
            f"dataset {spec}: feature {j} has a range of {rng[j]:g} which cannot be scaled in float32; "
            "rescale that feature or drop it"
        )
    return InputScaling(offset=lo.astype(np.float32), scale=scale.astype(np.float32))


def _check_seed_fraction(seed: int, test_fraction: float) -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < 2**32:
        raise _data_error(f"seed {seed!r} is not valid; use an integer from 0 to {2**32 - 1}")
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, numbers.Real)
        or not (0.0 < float(test_fraction) < 1.0)
    ):
        raise _data_error(f"test fraction {test_fraction!r} is not valid; use a number strictly between 0 and 1, e.g. 0.2")


def _split(X: np.ndarray, y: np.ndarray, seed: int, test_fraction: float, spec: str):
    """Stratified split fixed by the seed; falls back to a plain shuffled split when
    stratification is impossible (a class with one member, or a split too small to
    hold every class)."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    counts = counts[counts > 0]
    attempts = [y, None] if counts.min() >= 2 else [None]
    last: Exception | None = None
    for stratify in attempts:
        try:
            X_tr, X_te, y_tr, y_te = train_test_split(
                X, y, test_size=float(test_fraction), random_state=int(seed), stratify=stratify
            )
        except ValueError as exc:
            last = exc
            continue
        if len(y_tr) and len(y_te):
            return X_tr, X_te, y_tr, y_te
    detail = f" ({_one_line(last)})" if last is not None else ""
    raise _data_error(
        f"dataset {spec}: cannot split {len(y)} samples with test fraction {test_fraction}{detail}; "
        "use more samples, a different test fraction, or provide X_test and y_test"
    )


def _finish(name, X_tr, y_tr, X_te, y_te, n_classes, scaling, split_seed: int | None = None,
            image_shape: tuple[int, int, int] | None = None) -> Dataset:
    return Dataset(
        image_shape=image_shape,
        name=name,
        X_train=np.ascontiguousarray(X_tr, dtype=np.float32),
        y_train=np.ascontiguousarray(y_tr, dtype=np.int64),
        X_test=np.ascontiguousarray(X_te, dtype=np.float32),
        y_test=np.ascontiguousarray(y_te, dtype=np.int64),
        n_classes=int(n_classes),
        scaling=scaling,
        split_seed=split_seed,
    )


def _load_sklearn(name: str, spec: str, seed: int, test_fraction: float) -> Dataset:
    from sklearn import datasets as skd

    loader = skd.load_iris if name == "iris" else skd.load_digits
    try:
        X, y = loader(return_X_y=True)  # bundled with scikit-learn: no download
    except OSError as exc:
        raise _data_error(
            f"dataset {spec}: cannot read the copy bundled with scikit-learn ({exc}); reinstall scikit-learn"
        ) from None
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    image = None
    if name == "digits28":
        X, image = _upsample_digits(X), (1, 28, 28)
    elif name == "digits":
        image = (1, 8, 8)
    X_tr, X_te, y_tr, y_te = _split(X, y, seed, test_fraction, spec)
    if name in ("digits", "digits28"):
        scaling = InputScaling(offset=0.0, scale=1.0 / 16.0)  # pixel values are 0..16
    else:
        scaling = _minmax_scaling(np.asarray(X_tr, dtype=np.float32), spec)
    return _finish(spec, X_tr, y_tr, X_te, y_te, int(y.max()) + 1, scaling, split_seed=int(seed),
                   image_shape=image)


def _upsample_digits(X: np.ndarray) -> np.ndarray:
    """8x8 digits resampled bilinearly onto 28x28 (MNIST's shape), values still in 0..16.

    Not MNIST: the same 1,797 images at MNIST's size, so the paper's 28x28 setting (a conv
    front end, then on-chip layers) runs without a download.
    """
    from scipy.ndimage import zoom

    images = X.reshape(-1, 8, 8)
    big = zoom(images, (1, 28 / 8, 28 / 8), order=1, mode="nearest", grid_mode=True)
    return np.clip(big, 0.0, 16.0).reshape(len(X), 28 * 28).astype(np.float32)


# ---------------------------------------------------------------------------
# IDX / MNIST
# ---------------------------------------------------------------------------


def _idx_declared_bytes(head: bytes) -> int | None:
    """Bytes an IDX file declares (header included), from its first 4 + 4*ndim bytes; None if not IDX."""
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_DTYPES or not 1 <= head[3] <= 4 \
            or len(head) < 4 + 4 * head[3]:
        return None
    dims = np.frombuffer(head, dtype=">u4", count=head[3], offset=4)
    return 4 + 4 * head[3] + math.prod(int(d) for d in dims) * _IDX_DTYPES[head[2]].itemsize


def _gunzip_idx(raw: bytes) -> bytes:
    """Inflate a gzip'd IDX file, never past what its header declares (one byte more, to notice a longer one).

    A few KiB of gzip inflate to gigabytes: the header is inflated first and a size beyond
    MAX_DATASET_BYTES refused (ValueError) before the rest is; the body is inflated at most to the
    declared size + 1, so a file inflating past its header costs that and is refused as too long.
    """
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    head = inflate.decompress(raw, 4)
    if len(head) == 4 and 1 <= head[3] <= 4:
        head += inflate.decompress(inflate.unconsumed_tail, 4 * head[3])
    declared = _idx_declared_bytes(head)
    if declared is None:
        return head                 # not IDX: the caller refuses it from these bytes alone
    if declared > MAX_DATASET_BYTES:
        raise ValueError(f"declares {declared} bytes once inflated, more than the {MAX_DATASET_BYTES >> 20} MiB "
                         "a data file may hold")
    limit = declared + 1
    body = inflate.decompress(inflate.unconsumed_tail, max(limit - len(head), 1))
    if not inflate.eof and len(head) + len(body) < limit:
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")
    return head + body


def _read_idx(path: Path, where: str) -> np.ndarray:
    """Parse one IDX file; ``where`` prefixes messages so they name the dataset spec."""
    fix = "re-download or re-extract the MNIST IDX files"
    try:
        raw = read_bounded(path, MAX_DATASET_BYTES)
    except FileNotFoundError:
        raise _data_error(f"{where}file {path} not found; check the path") from None
    except IsADirectoryError:
        raise _data_error(f"{where}{path} is a folder, not an IDX file; point at the file itself") from None
    except FileProblem as exc:
        raise _data_error(f"{where}{path} {exc.text}; point at the IDX file itself") from None
    except OSError as exc:
        raise _data_error(f"{where}cannot read {path} ({exc.strerror or exc}); check the file's permissions") from None
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            raw = _gunzip_idx(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise _data_error(f"{where}{path} is not a valid gzip file ({exc}); {fix}") from None
        except ValueError as exc:
            raise _data_error(f"{where}{path} {exc}; {fix}") from None
    if len(raw) < 4:
        raise _data_error(f"{where}{path} is {len(raw)} bytes, too short for an IDX header (4 bytes); {fix}")
    if raw[0] != 0 or raw[1] != 0:
        raise _data_error(
            f"{where}{path} is not an IDX file (magic starts with bytes 0x{raw[0]:02x} 0x{raw[1]:02x}, "
            f"expected 0x00 0x00); {fix}"
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise _data_error(
            f"{where}{path} has unknown IDX data type code 0x{code:02x} "
            "(known: 0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E); " + fix
        )
    if not 1 <= ndim <= 4:
        raise _data_error(f"{where}{path} declares {ndim} dimensions, expected 1 to 4; {fix}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _data_error(
            f"{where}{path} is truncated in its header: expected at least {header} bytes, got {len(raw)}; {fix}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise _data_error(
            f"{where}{path} is {what}: dims {'x'.join(map(str, dims))} of {_IDX_DTYPE_NAMES[code]} need "
            f"{expected} bytes in all, the file has {len(raw)}; {fix}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return np.ascontiguousarray(arr.astype(dtype.newbyteorder("=")))  # native order, writable copy


def load_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not) into a native-endian array of its declared shape.

    Every defect (missing, bad gzip, bad magic, truncated or trailing bytes) is a
    one-line DatasetError naming the file, because these files come from users.
    """
    return _read_idx(Path(path), "")


def _find_mnist_file(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        for candidate in (folder / name, folder / (name + ".gz")):
            if candidate.is_file():
                return candidate
    return None


def _load_mnist(folder_text: str, spec: str) -> Dataset:
    fix = "point mnist: at a folder with the four standard MNIST IDX files"
    folder = Path(folder_text).expanduser()
    if not folder.exists():
        raise _data_error(f"dataset {spec}: folder {folder} not found; {fix}")
    if not folder.is_dir():
        raise _data_error(f"dataset {spec}: {folder} is not a folder; {fix}")
    where = f"dataset {spec}: "
    arrays: dict[str, np.ndarray] = {}
    paths: dict[str, Path] = {}
    for key, names in _MNIST_FILES.items():
        found = _find_mnist_file(folder, names)
        if found is None:
            raise _data_error(f"{where}file {folder / names[0]}(.gz) not found; {fix}")
        paths[key] = found
        arrays[key] = _read_idx(found, where)
    for part in ("train", "test"):
        img, lab = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        ip, lp = paths[f"{part}_images"], paths[f"{part}_labels"]
        if img.dtype != np.uint8 or img.ndim != 3:
            raise _data_error(
                f"{where}{ip} holds {img.ndim}-D {img.dtype} data, expected 3-D unsigned-byte images (N x rows x cols); {fix}"
            )
        if lab.dtype != np.uint8 or lab.ndim != 1:
            raise _data_error(
                f"{where}{lp} holds {lab.ndim}-D {lab.dtype} data, expected 1-D unsigned-byte labels; {fix}"
            )
        if img.shape[0] == 0:
            raise _data_error(f"{where}{ip} holds no images; {fix}")
        if img.shape[0] != lab.shape[0]:
            raise _data_error(
                f"{where}{ip} has {img.shape[0]} images but {lp} has {lab.shape[0]} labels; "
                "use image and label files from the same release"
            )
        if lab.size and int(lab.max()) > 9:
            raise _data_error(f"{where}{lp} has label {int(lab.max())}, MNIST labels are 0..9; {fix}")
    tr, te = arrays["train_images"], arrays["test_images"]
    if tr.shape[1:] != te.shape[1:]:
        raise _data_error(
            f"{where}train images are {tr.shape[1]}x{tr.shape[2]} but test images are {te.shape[1]}x{te.shape[2]}; "
            "use train and test files from the same data set"
        )
    X_tr = tr.reshape(tr.shape[0], -1)
    X_te = te.reshape(te.shape[0], -1)
    scaling = InputScaling(offset=0.0, scale=1.0 / 255.0)  # raw pixel values 0..255
    return _finish(spec, X_tr, arrays["train_labels"], X_te, arrays["test_labels"], 10, scaling,
                   image_shape=(1, int(tr.shape[1]), int(tr.shape[2])))


# ---------------------------------------------------------------------------
# CIFAR-10 (binary version)
# ---------------------------------------------------------------------------


def _present(path: Path) -> bool:
    """Whether ``path`` names something (a broken link too); an unreadable one counts, so reading it says why."""
    try:
        path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def _cifar10_folder(folder: Path, where: str) -> Path:
    """The folder holding the six .bin files: DIR itself, or the cifar-10-batches-bin/ the tarball unpacks to.

    A folder of the pickled Python version is named as such: pnndeploy never unpickles (a pickle can run
    code), so the user needs the other download, not another path.
    """
    names = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    fetch = f"download {_CIFAR10_FETCH}, and point cifar10: at the folder it unpacks to"
    for candidate in (folder, folder / _CIFAR10_SUBFOLDER):
        present = [name for name in names if _present(candidate / name)]
        if present:
            missing = [name for name in names if name not in present]
            if missing:
                raise _data_error(f"{where}folder {candidate} lacks {', '.join(missing)} (CIFAR-10 needs all six "
                                  f"files: {', '.join(names)}); {fetch}")
            return candidate
    for candidate in (folder, folder / _CIFAR10_PICKLE_FOLDER):
        pickles = [name for name in _CIFAR10_PICKLES if _present(candidate / name)]
        if pickles:
            raise _data_error(f"{where}folder {candidate} holds the pickled Python version of CIFAR-10 "
                              f"({', '.join(pickles)}), which pnndeploy never reads (unpickling can run code); {fetch}")
    raise _data_error(f"{where}folder {folder} holds none of the CIFAR-10 binary files ({', '.join(names)}); {fetch}")


def _cifar10_records(size: int, path: Path, where: str) -> int:
    """Records in a batch file of ``size`` bytes: refuses an empty, truncated or other-format file."""
    fix = f"the file is truncated or not CIFAR-10's binary version: download {_CIFAR10_FETCH} again"
    if size == 0:
        raise _data_error(f"{where}{path} is empty; {fix}")
    if size % CIFAR10_RECORD:
        raise _data_error(f"{where}{path} is {size} bytes, not a whole number of {CIFAR10_RECORD:,}-byte records "
                          f"(a label byte, then 32x32 red, green and blue bytes): {size // CIFAR10_RECORD} whole "
                          f"records and {size % CIFAR10_RECORD} bytes over; {fix}")
    return size // CIFAR10_RECORD


def _cifar10_stat(path: Path, where: str) -> int:
    """Bytes of one batch file, checked from its stat before anything is read (kind, size limit, whole records)."""
    try:
        problem = regular_file_problem(path, MAX_DATASET_BYTES)
        size = path.stat().st_size
    except FileNotFoundError:
        raise _data_error(f"{where}file {path} not found (a broken link?); check the path") from None
    except OSError as exc:
        raise _data_error(f"{where}cannot read {path} ({exc.strerror or exc}); check the file's permissions") from None
    if problem is not None:
        raise _data_error(f"{where}{path} {problem}; point cifar10: at the folder of the binary version's .bin files")
    return _cifar10_records(size, path, where) * CIFAR10_RECORD


def _read_cifar10_batch(path: Path, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (N, 3072) uint8 in R, G, B plane order, labels (N,) uint8) of one batch file."""
    try:
        raw = read_bounded(path, MAX_DATASET_BYTES)
    except FileProblem as exc:
        raise _data_error(f"{where}{path} {exc.text}; point cifar10: at the folder of the binary version's .bin "
                          "files") from None
    except OSError as exc:
        raise _data_error(f"{where}cannot read {path} ({exc.strerror or exc}); check the file's permissions") from None
    n = _cifar10_records(len(raw), path, where)      # again: the file may have changed since its stat
    records = np.frombuffer(raw, dtype=np.uint8).reshape(n, CIFAR10_RECORD)
    labels = records[:, 0]
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        k = int(bad[0])
        raise _data_error(f"{where}{path}: record {k} (byte {k * CIFAR10_RECORD}) has label {int(labels[k])}, "
                          f"CIFAR-10 labels are 0..9; the file is damaged or not CIFAR-10's binary version: download "
                          f"{_CIFAR10_FETCH} again")
    return records[:, 1:], labels


def _load_cifar10(folder_text: str, spec: str) -> Dataset:
    """CIFAR-10 from its binary version: train = data_batch_1..5 in order, test = test_batch; (3, 32, 32) images.

    Every file is sized by stat first, so a damaged or oversized set is refused before a byte is read, and
    the six together may hold at most MAX_DATASET_BYTES (the real set: 176 MiB).
    """
    where = f"dataset {spec}: "
    fix = f"point cifar10: at the unpacked folder of {_CIFAR10_FETCH}"
    try:
        folder = Path(folder_text).expanduser()
    except RuntimeError:                             # ~user that does not exist
        raise _data_error(f"{where}cannot expand {brief(folder_text)} (no such user's home); give the path") from None
    if not _present(folder):
        raise _data_error(f"{where}folder {folder} not found; {fix}")
    if not folder.is_dir():
        unpack = " (unpack it first: tar xzf FILE)" if folder.name.endswith((".tar.gz", ".tgz", ".tar")) else ""
        raise _data_error(f"{where}{folder} is not a folder{unpack}; {fix}")
    folder = _cifar10_folder(folder, where)
    paths = [folder / name for name in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)]
    total = sum(_cifar10_stat(path, where) for path in paths)
    if total > MAX_DATASET_BYTES:
        raise _data_error(f"{where}the six files in {folder} hold {size_text(total)}, more than the "
                          f"{size_text(MAX_DATASET_BYTES)} a data set may hold (CIFAR-10: 176 MiB); {fix}")
    batches = [_read_cifar10_batch(path, where) for path in paths]
    X_tr = np.concatenate([pixels for pixels, _ in batches[:-1]])
    y_tr = np.concatenate([labels for _, labels in batches[:-1]])
    X_te, y_te = batches[-1]
    scaling = InputScaling(offset=0.0, scale=1.0 / 255.0)  # raw pixel values 0..255, as MNIST's
    return _finish(spec, X_tr, y_tr, X_te, y_te, 10, scaling, image_shape=CIFAR10_SHAPE)


# ---------------------------------------------------------------------------
# npz
# ---------------------------------------------------------------------------


def _npz_features(arr: np.ndarray, key: str, where: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise _data_error(f"{where}array {key} has dtype {arr.dtype}, expected numbers; save {key} as a float or int array")
    if arr.ndim != 2:
        raise _data_error(
            f"{where}array {key} has shape {arr.shape}, expected 2-D (samples, features); reshape it to (N, F)"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise _data_error(f"{where}array {key} has shape {arr.shape}, it needs at least one sample and one feature")
    with np.errstate(over="ignore", invalid="ignore"):
        X = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(X)):
        n_bad = int(np.count_nonzero(~np.isfinite(X)))
        raise _data_error(
            f"{where}array {key} has {n_bad} NaN, infinite or beyond-float32 values; remove or impute them"
        )
    return X


def _npz_labels(arr: np.ndarray, key: str, where: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise _data_error(f"{where}array {key} has dtype {arr.dtype}, expected integer class labels 0..K-1")
    if arr.ndim != 1:
        raise _data_error(f"{where}array {key} has shape {arr.shape}, expected 1-D labels; flatten it (e.g. y.ravel())")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise _data_error(f"{where}array {key} has non-integer labels; labels must be class indices 0..K-1")
    if arr.size and arr.min() < 0:
        raise _data_error(f"{where}array {key} has negative label {arr.min()}; labels must be class indices 0..K-1")
    if arr.size and arr.max() >= MAX_CLASSES:
        raise _data_error(
            f"{where}array {key} has label {arr.max()}, more than {MAX_CLASSES} classes; "
            "labels must be class indices 0..K-1, remap them"
        )
    return np.ascontiguousarray(arr, dtype=np.int64)


def _check_npz_sizes(loaded: np.lib.npyio.NpzFile, path: Path, where: str) -> None:
    """Refuse an archive whose arrays inflate past MAX_DATASET_BYTES, from the sizes its zip directory declares.

    zipfile never inflates a member past its declared size, so this bounds what reading the arrays costs.
    """
    declared = sum(info.file_size for info in loaded.zip.infolist())
    if declared > MAX_DATASET_BYTES:
        raise _data_error(f"{where}{path} declares {declared} bytes of arrays once inflated, more than the "
                          f"{MAX_DATASET_BYTES >> 20} MiB a data file may hold; split the data set")


def _load_npz(path_text: str, spec: str, seed: int, test_fraction: float) -> Dataset:
    where = f"dataset {spec}: "
    path = Path(path_text).expanduser()
    fmt_fix = "save it with np.savez(path, X=..., y=...)"
    if not path.exists():
        raise _data_error(f"{where}file {path} not found; check the path")
    if path.is_dir():
        raise _data_error(f"{where}{path} is a folder; point npz: at a .npz file")
    problem = regular_file_problem(path, MAX_DATASET_BYTES)   # before np.load opens it: a FIFO would block
    if problem is not None:
        raise _data_error(f"{where}{path} {problem}; point npz: at a .npz file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise _data_error(f"{where}cannot read {path} ({_one_line(exc)}); check the file") from None
    except (ValueError, EOFError, zipfile.BadZipFile):
        raise _data_error(f"{where}{path} is not an .npz archive; {fmt_fix}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise _data_error(f"{where}{path} holds a single array, not an .npz archive; {fmt_fix}")
    raw: dict[str, np.ndarray] = {}
    with loaded:
        names = set(loaded.files)
        for key in ("X", "y"):
            if key not in names:
                have = ", ".join(sorted(names)) or "none"
                raise _data_error(f"{where}{path} has no array '{key}' (arrays: {have}); {fmt_fix}")
        has_xt, has_yt = "X_test" in names, "y_test" in names
        if has_xt != has_yt:
            missing = "y_test" if has_xt else "X_test"
            raise _data_error(f"{where}{path} has {'X_test' if has_xt else 'y_test'} but no {missing}; provide both or neither")
        _check_npz_sizes(loaded, path, where)
        for key in ("X", "y", "X_test", "y_test"):
            if key not in names:
                continue
            try:
                raw[key] = loaded[key]
            except ValueError as exc:
                msg = _one_line(exc)
                if "pickle" in msg.lower() or "object" in msg.lower():
                    raise _data_error(
                        f"{where}array {key} in {path} holds Python objects, which are not loaded for safety; "
                        "save it as a numeric array"
                    ) from None
                raise _data_error(f"{where}array {key} in {path} cannot be read ({msg}); {fmt_fix}") from None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                raise _data_error(f"{where}array {key} in {path} is damaged ({_one_line(exc)}); {fmt_fix}") from None

    X = _npz_features(raw["X"], "X", where)
    y = _npz_labels(raw["y"], "y", where)
    if X.shape[0] != y.shape[0]:
        raise _data_error(f"{where}X has {X.shape[0]} rows but y has {y.shape[0]}; give one label per row of X")
    if "X_test" in raw:
        X_te = _npz_features(raw["X_test"], "X_test", where)
        y_te = _npz_labels(raw["y_test"], "y_test", where)
        if X_te.shape[0] != y_te.shape[0]:
            raise _data_error(
                f"{where}X_test has {X_te.shape[0]} rows but y_test has {y_te.shape[0]}; give one label per row"
            )
        if X_te.shape[1] != X.shape[1]:
            raise _data_error(
                f"{where}X has {X.shape[1]} features but X_test has {X_te.shape[1]}; both need the same columns"
            )
        X_tr, y_tr = X, y
        split_seed = None
    else:
        split_seed = int(seed)
        if np.unique(y).size < 2:
            raise _data_error(f"{where}y has only one class; a classifier needs at least 2 classes")
        X_tr, X_te, y_tr, y_te = _split(X, y, seed, test_fraction, spec)
    if np.unique(y_tr).size < 2:
        raise _data_error(
            f"{where}the training labels hold only one class; a classifier needs at least 2 classes"
        )
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    scaling = _minmax_scaling(X_tr, spec)
    return _finish(spec, X_tr, y_tr, X_te, y_te, n_classes, scaling, split_seed=split_seed)


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


#: Specs that name a path: kind -> (what, placeholder, what it must hold).
_PATH_SPECS = {
    "mnist": ("folder", "DIR", "with the four MNIST IDX files in DIR"),
    "cifar10": ("folder", "DIR", "with CIFAR-10's binary version in DIR (data_batch_1.bin ... test_batch.bin)"),
    "npz": ("file", "PATH", "with arrays X and y"),
}


def load_dataset(spec: str, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """Load the dataset a user named on the command line.

    ``seed`` and ``test_fraction`` fix the stratified split for digits, iris and
    npz without test arrays; MNIST, CIFAR-10 and npz with test arrays keep their own split.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise _data_error(f"dataset {brief(spec)} is not valid; use one of: {ACCEPTED_SPECS}")
    _check_seed_fraction(seed, test_fraction)
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    kind_l = kind.strip().lower()
    if not sep and kind_l in ("digits", "digits28", "iris"):
        return _load_sklearn(kind_l, spec, seed, test_fraction)
    if kind_l in _PATH_SPECS:
        what, placeholder, holds = _PATH_SPECS[kind_l]
        if not sep:
            raise _data_error(f"dataset {spec} needs a {what}: use {kind_l}:{placeholder} {holds}")
        if not rest.strip():
            raise _data_error(f"dataset {spec}: no {what} given; use {kind_l}:{placeholder}")
        if kind_l == "mnist":
            return _load_mnist(rest, spec)
        if kind_l == "cifar10":
            return _load_cifar10(rest, spec)
        return _load_npz(rest, spec, seed, test_fraction)
    raise _data_error(f"unknown dataset {brief(spec)}; use one of: {ACCEPTED_SPECS}")

"""How pnndeploy writes and reads HDF5: file-format bounds, checksummed datasets, typed attribute readers,
and the structure check every file passes before any value is read.

Shared by every HDF5 file the tool writes (device profiles, deployments), so a
damaged or hostile file is refused the same way wherever it is read.  A file
from someone else can declare a dataset far larger than its bytes (a chunked
"fill-value bomb"), keep its values in another local file (external storage, a
virtual dataset, an external link), or inflate a tiny compressed chunk to
gigabytes; :func:`structure_problems` walks every link and object without
following any link out of the file and refuses all of these from what the file
*declares*, before a single value is read.
"""

from __future__ import annotations

import contextlib
import math
import os
from datetime import datetime
from typing import Any, Iterator

import h5py
import numpy as np

from pnndeploy.untrusted import FileProblem, brief, regular_file_problem, size_text

#: HDF5 file-format bounds of written files: 1.10 formats carry checksums of the file's internal
#: structure, so most damaged files give a clean error instead of confusing the HDF5 library
#: (readable by HDF5 >= 1.10, h5dump and HDFView included).
HDF5_LIBVER = ("v110", "v110")


#: Limits on an HDF5 file pnndeploy reads (a 16x16 profile is 25 KiB, a free-space one 180 KiB).
MAX_FILE_BYTES = 256 << 20
#: Most bytes one dataset may declare (8 M float64 values), and all datasets together.
MAX_DATASET_BYTES = 64 << 20
MAX_TOTAL_BYTES = 256 << 20
#: Most links in the whole file (a profile has about 40), attributes per object, bytes per attribute.
MAX_LINKS = 4096
MAX_ATTRIBUTES = 256
MAX_ATTRIBUTE_BYTES = 64 << 10
#: The only filter read: what pnndeploy writes.  Decompression filters inflate a small chunk without
#: bound inside the HDF5 library (and an unknown filter makes it load a plugin), so they are refused.
READABLE_FILTERS = {h5py.h5z.FILTER_FLETCHER32}
READABLE_LAYOUTS = {h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED}
REWRITE_HINT = "write the file again with every array stored inside it, without links"


def h5_array_options(array: np.ndarray) -> dict[str, Any]:
    """Dataset options for an array: a Fletcher-32 checksum (one chunk) so damaged values are refused."""
    if array.ndim == 0 or array.size == 0:
        return {}
    # one chunk for ordinary arrays; HDF5 limits a chunk to 4 GiB, so let it split huge ones
    return {"chunks": array.shape if array.nbytes <= 2**26 else True, "fletcher32": True}


def attr_str(obj: h5py.HLObject, name: str) -> str | None:
    """A text attribute as str; None when it is missing, not text, or not valid UTF-8."""
    value = obj.attrs.get(name)
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "OSU":
        value = value[()]
    return _decode(value)


def _decode(value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # h5py decodes bad bytes to lone surrogates, which nothing can print
        except UnicodeEncodeError:
            return None
        return value
    return None


def _attr_number(obj: h5py.HLObject, name: str) -> Any:
    """A numeric scalar attribute (a 1-element array counts), or None; booleans are not numbers."""
    value = obj.attrs.get(name)
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        value = value.reshape(())[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return value


def attr_int(obj: h5py.HLObject, name: str) -> int | None:
    value = _attr_number(obj, name)
    return int(value) if isinstance(value, (int, np.integer)) else None


def attr_float(obj: h5py.HLObject, name: str) -> float | None:
    value = _attr_number(obj, name)
    return None if value is None else float(value)


def parse_time(text: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return t if t.tzinfo is not None else None


# --------------------------------------------------------------------------- reading files from outside


def hdf5_path_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` must not be opened as HDF5 (a FIFO, a device, a folder, over MAX_FILE_BYTES), else None.

    Checked with ``os.stat`` before h5py opens anything: opening a FIFO blocks, a device never ends.
    FileNotFoundError propagates.
    """
    return regular_file_problem(path, MAX_FILE_BYTES)


@contextlib.contextmanager
def open_hdf5(path: str | os.PathLike[str]) -> Iterator[h5py.File]:
    """Open an HDF5 file from outside for reading, checked (FileProblem naming every refusal otherwise).

    The path must be a regular file within MAX_FILE_BYTES, and :func:`structure_problems` must find
    nothing, so whatever the caller then reads is bounded and inside the file.
    """
    problem = hdf5_path_problem(path)
    if problem is not None:
        raise FileProblem(problem)
    with h5py.File(path, "r") as f:
        problems = structure_problems(f)
        if problems:
            raise FileProblem("; ".join(problems))
        yield f


def _where(name: str) -> str:
    return brief(name.strip("/") or "/", 80, quote=False)


def structure_problems(f: h5py.File) -> list[str]:
    """What makes ``f`` unsafe to read, found from its declarations alone (empty list: safe).

    Every link is visited without being followed: external, soft and user-defined links are refused
    (they lead out of the file or to a name chosen by its author); every object reached by a hard link
    has its attributes bounded, every dataset its storage (inside the file, no filter but Fletcher-32)
    and its declared size.  At most MAX_LINKS links are visited, so a link cycle or a million empty
    groups cost bounded time.
    """
    problems = _attribute_problems(f, "/")
    seen = {f.id.__hash__()}
    groups, links, declared = [f], 0, 0
    while groups and len(problems) < 8:
        group = groups.pop()
        links += group.id.get_num_objs()
        if links > MAX_LINKS:
            return problems + [f"it holds more than {MAX_LINKS} links (a profile holds about 40); {REWRITE_HINT}"]
        for name in group:                          # link names only: nothing is resolved
            where = _where(f"{group.name.rstrip('/')}/{name}")
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                problems.append(f"'{where}' is an external link to {brief(link.filename, 80, tail=True)}; pnndeploy "
                                f"never follows a link out of the file: {REWRITE_HINT}")
                continue
            if isinstance(link, h5py.SoftLink):
                problems.append(f"'{where}' is a soft link (to {brief(link.path, 80, tail=True)}); {REWRITE_HINT}")
                continue
            if not isinstance(link, h5py.HardLink):
                problems.append(f"'{where}' is a link of an unknown kind; {REWRITE_HINT}")
                continue
            obj = group[name]
            if obj.id.__hash__() in seen:            # a second hard link to an object already checked
                continue
            seen.add(obj.id.__hash__())
            problems += _attribute_problems(obj, where)
            if isinstance(obj, h5py.Group):
                groups.append(obj)
            elif isinstance(obj, h5py.Dataset):
                problem, nbytes = dataset_storage_problem(obj, where)
                declared += nbytes
                if problem:
                    problems.append(problem)
    if declared > MAX_TOTAL_BYTES and not problems:
        problems.append(f"its datasets declare {size_text(declared)} in all, more than the "
                        f"{size_text(MAX_TOTAL_BYTES)} a file may hold")
    return problems


def dataset_storage_problem(ds: h5py.Dataset, where: str) -> tuple[str | None, int]:
    """(why reading ``ds`` is unsafe or None, the bytes it declares), from its creation properties only."""
    plist = ds.id.get_create_plist()
    itemsize = ds.id.get_type().get_size()
    nbytes = math.prod(ds.shape) * itemsize if ds.shape else itemsize
    if plist.get_external_count() > 0:
        name = plist.get_external(0)[0]
        name = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        return (f"'{where}' keeps its values in another file ({brief(name, 80, tail=True)}); pnndeploy never reads "
                f"a file that a profile or deployment names: {REWRITE_HINT}"), nbytes
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        return (f"'{where}' is a virtual dataset (its values come from other files); pnndeploy never reads a "
                f"file that a profile or deployment names: {REWRITE_HINT}"), nbytes
    if layout not in READABLE_LAYOUTS:
        return f"'{where}' has a storage layout ({layout}) this pnndeploy does not read; {REWRITE_HINT}", nbytes
    for k in range(plist.get_nfilters()):
        code, _, _, fname = plist.get_filter(k)
        if code not in READABLE_FILTERS:
            shown = brief(fname.decode("utf-8", "replace") if isinstance(fname, bytes) else fname, 40)
            return (f"'{where}' is stored through the filter {code} ({shown}), e.g. compressed; pnndeploy reads "
                    "uncompressed arrays only (a Fletcher-32 checksum is fine): rewrite it with "
                    "`h5repack -f NONE IN.h5 OUT.h5`"), nbytes
    if nbytes > MAX_DATASET_BYTES:
        shape = brief(ds.shape, 60)
        return (f"'{where}' declares shape {shape} of {itemsize}-byte values ({size_text(nbytes)}), more than "
                f"the {size_text(MAX_DATASET_BYTES)} a dataset may hold"), nbytes
    if ds.chunks is not None and math.prod(ds.chunks) * itemsize > MAX_DATASET_BYTES:
        return (f"'{where}' declares chunks of {size_text(math.prod(ds.chunks) * itemsize)}, more than the "
                f"{size_text(MAX_DATASET_BYTES)} a dataset may hold"), nbytes
    return None, nbytes


def _attribute_problems(obj: h5py.HLObject, where: str) -> list[str]:
    """Attributes bounded in number and size before anything reads them (variable-length ones measured)."""
    count = h5py.h5o.get_info(obj.id).num_attrs
    if count > MAX_ATTRIBUTES:
        return [f"'{where}' has {count} attributes, more than the {MAX_ATTRIBUTES} an object may have"]
    problems = []
    for name in obj.attrs:
        aid = obj.attrs.get_id(name)
        size = aid.get_storage_size()
        dtype = aid.dtype
        if size <= MAX_ATTRIBUTE_BYTES and (h5py.check_vlen_dtype(dtype) is not None
                                           or (h5py.check_string_dtype(dtype) is not None
                                               and h5py.check_string_dtype(dtype).length is None)):
            value = np.asarray(obj.attrs[name], dtype=object).ravel()   # variable length: measure what it holds
            size = sum(len(v) if isinstance(v, (bytes, str)) else getattr(v, "nbytes", 8) for v in value)
        if size > MAX_ATTRIBUTE_BYTES:
            problems.append(f"attribute {brief(name, 40)} of '{where}' holds {size_text(size)}, more than the "
                            f"{size_text(MAX_ATTRIBUTE_BYTES)} an attribute may hold")
    return problems

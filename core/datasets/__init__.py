"""Real image classification data, read from disk; nothing is downloaded at run time.

* ``digits``: the UCI optical handwritten digits (1,797 8x8 images), shipped in this
  package (``digits.csv.gz``; citation and licence in ``DIGITS.md``).
* ``mnist`` and ``fashion-mnist``: the four IDX files (optionally gzipped) in
  ``data.path``.
* ``cifar10``: the python pickle batches (``data_batch_1`` .. ``data_batch_5``,
  ``test_batch``) in ``data.path`` or its ``cifar-10-batches-py`` folder, unpickled by a
  reader that accepts nothing but the numpy arrays, lists and bytes those files hold.

``load(kind, path)`` returns the official splits as uint8 pixels and int64 labels; the
data module subsamples, scales and corrupts them.
"""

from __future__ import annotations

import functools
import gzip
import io
import pickle
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

from theoryscope.core.errors import SpecError

HERE = Path(__file__).parent
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


class Splits(NamedTuple):
    x_train: np.ndarray  # uint8 [n, features]
    y_train: np.ndarray  # int64 [n]
    x_test: np.ndarray
    y_test: np.ndarray
    scale: float         # the largest pixel value (16 for digits, 255 otherwise)


@functools.lru_cache(maxsize=4)
def load(kind: str, path: str = "") -> Splits:
    """The official splits of a data set (digits has one set: both splits hold it all)."""
    if kind == "digits":
        table = np.loadtxt(HERE / "digits.csv.gz", delimiter=",", dtype=np.int64)
        x, y = table[:, :-1].astype(np.uint8), table[:, -1]
        return Splits(x, y, x, y, 16.0)
    if kind in ("mnist", "fashion-mnist"):
        files = [_find(path, name, kind, IDX_FILES) for name in IDX_FILES]
        images, labels, test_images, test_labels = (read_idx(f) for f in files)
        flat = lambda a: a.reshape(a.shape[0], -1)  # noqa: E731
        return Splits(flat(images), labels.astype(np.int64), flat(test_images), test_labels.astype(np.int64), 255.0)
    if kind == "cifar10":
        root = Path(path)
        if (root / "cifar-10-batches-py").is_dir():
            root = root / "cifar-10-batches-py"
        batches = [read_cifar_batch(_find(str(root), name, kind, CIFAR_FILES)) for name in CIFAR_FILES]
        x = np.concatenate([b[0] for b in batches[:5]])
        y = np.concatenate([b[1] for b in batches[:5]])
        return Splits(x, y, batches[5][0], batches[5][1], 255.0)
    raise ValueError(f"no loader for {kind!r}")


def check_files(kind: str, path: str) -> None:
    """Raise ``SpecError`` naming the files expected if ``kind`` needs files not in ``path``."""
    if kind in ("mnist", "fashion-mnist"):
        for name in IDX_FILES:
            _find(path, name, kind, IDX_FILES)
    elif kind == "cifar10":
        root = Path(path) / "cifar-10-batches-py" if (Path(path) / "cifar-10-batches-py").is_dir() else Path(path)
        for name in CIFAR_FILES:
            _find(str(root), name, kind, CIFAR_FILES)


def _find(path: str, name: str, kind: str, expected: tuple[str, ...]) -> Path:
    for candidate in (Path(path) / name, Path(path) / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise SpecError(f"data.path: {path!r} has no {name}[.gz]; {kind} expects the files "
                    f"{', '.join(expected)} there (nothing is downloaded)")


def _open(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.suffix == ".gz" else raw


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format): magic 0x0000 0800 | type, then big-endian int32
    dimensions, then the data; only unsigned bytes (type 0x08) occur in (fashion-)MNIST."""
    data = _open(path)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise SpecError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}i", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise SpecError(f"{path}: expected {int(np.prod(dims))} values for shape {dims}, found {body.size}")
    return body.reshape(dims)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR batches without running arbitrary code: only numpy's array
    reconstruction is allowed as a global."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: uint8 images ``[n, 3072]`` and int64 labels."""
    try:
        batch = _ArraysOnly(io.BytesIO(_open(path)), encoding="bytes").load()
        data, labels = batch[b"data"], batch[b"labels"]
    except (pickle.UnpicklingError, KeyError, TypeError, EOFError, ValueError) as exc:
        raise SpecError(f"{path}: not a CIFAR-10 python batch ({exc})") from None
    return np.asarray(data, dtype=np.uint8).reshape(len(labels), -1), np.asarray(labels, dtype=np.int64)

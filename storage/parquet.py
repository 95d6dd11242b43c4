"""Atomic Parquet files in the results tree.

A file is written under a temporary name beside its destination, flushed to disk and
renamed into place, so a reader sees either nothing or the whole file, and writing the
same file twice (a retried family) replaces it instead of adding a second copy.
Temporary names end in ``.tmp-<pid>-<random>`` and never match ``*.parquet``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import StorageError


def partition_dir(results: Path, table: str, sweep: str) -> Path:
    return Path(results) / table / f"sweep={sweep}"


def table_path(results: Path, table: str, sweep: str, key: str) -> Path:
    """Where the file of ``key`` (a family id, or a spec hash for ``sweeps``) lives."""
    return partition_dir(results, table, sweep) / f"{key}.parquet"


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` so that ``path`` is either absent or complete."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create {path.parent}: {exc.strerror}") from None
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle, compression="zstd")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def read_column(results: Path, table: str, sweep: str, column: str) -> list:
    """One column of every file of a sweep's partition (empty if there is none)."""
    directory = partition_dir(results, table, sweep)
    if not directory.is_dir():
        return []
    values: list = []
    for path in sorted(directory.glob("*.parquet")):
        values.extend(pq.read_table(path, columns=[column]).column(column).to_pylist())
    return values

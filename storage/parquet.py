"""Atomic Parquet files in the results tree, and telling complete files from debris.

A file is written under a temporary name beside its destination, flushed to disk and
renamed into place, so a reader sees either nothing or the whole file, and writing the
same file twice (a retried family) replaces it instead of adding a second copy.
Temporary names end in ``.tmp-<host>-<pid>-<random>`` and never match ``*.parquet``.

Readers only ever read *complete* files (``scan``): a ``*.parquet`` file that is not a
whole Parquet file (copied in half, cut by a full disk, written by another tool) is
damaged; a temporary file is the leftover of an interrupted write. ``clean`` removes
both; ``launch`` and ``resume`` call it, read-only commands only report them.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import dataclass, field
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
    tmp = path.with_name(f"{path.name}.tmp-{_host()}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle, compression="zstd")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
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


def _host() -> str:
    return socket.gethostname().replace("-", "_")


MAGIC = b"PAR1"
# A temporary file this old is a leftover even if its writer might be on another host.
STALE_SECONDS = 3600.0


def is_complete(path: Path) -> bool:
    """Whether ``path`` is a whole Parquet file: magic bytes at both ends and a footer
    that parses."""
    try:
        with open(path, "rb") as handle:
            if handle.read(4) != MAGIC:
                return False
            handle.seek(-4, os.SEEK_END)
            if handle.read(4) != MAGIC:
                return False
        pq.read_metadata(path)
    except (OSError, pa.ArrowException):
        return False
    return True


@dataclass
class Scan:
    """The files of one table (all sweeps, or one): complete, damaged, leftover."""

    complete: list[Path] = field(default_factory=list)
    damaged: list[Path] = field(default_factory=list)
    leftovers: list[Path] = field(default_factory=list)

    def __iadd__(self, other: Scan) -> Scan:
        self.complete += other.complete
        self.damaged += other.damaged
        self.leftovers += other.leftovers
        return self


def scan(results: Path, table: str, sweep: str | None = None) -> Scan:
    root = Path(results) / table
    directories = [partition_dir(results, table, sweep)] if sweep else sorted(root.glob("sweep=*"))
    found = Scan()
    for directory in directories:
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if path.name.endswith(".parquet"):
                (found.complete if is_complete(path) else found.damaged).append(path)
            elif ".tmp-" in path.name:
                found.leftovers.append(path)
    return found


def _writer_gone(path: Path) -> bool:
    """A temporary file whose writer cannot still be writing it."""
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return False
    if age > STALE_SECONDS:
        return True
    host, _, rest = path.name.rpartition(".tmp-")[2].partition("-")
    pid = rest.partition("-")[0]
    if host != _host() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def clean(found: Scan) -> list[Path]:
    """Remove damaged files and leftovers whose writer is gone; return what was removed."""
    removed = []
    for path in found.damaged + [p for p in found.leftovers if _writer_gone(p)]:
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def read_column(results: Path, table: str, sweep: str, column: str) -> list:
    """One column of every complete file of a sweep's partition (empty if none)."""
    values: list = []
    for path in scan(results, table, sweep).complete:
        values.extend(pq.read_table(path, columns=[column]).column(column).to_pylist())
    return values

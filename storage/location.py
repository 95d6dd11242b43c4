"""Where results live: a local directory, or a directory in any filesystem pyarrow opens
from a URI (``s3://bucket/dir``, ``gs://bucket/dir``, ``hdfs://...``; ``file:///dir`` is
the local directory), so a cluster without a shared disk still has one place for results
and checkpoints.

Local results are ``pathlib.Path`` objects, and so is every file below them. Anything
else is a ``StorePath``: a path inside a pyarrow filesystem together with the URI of the
results root it was reached from. It holds strings only, so it pickles to Ray workers,
which open the filesystem again from the URI with the credentials of their own
environment (for S3: ``AWS_*`` variables, a profile or the instance's role). The URI's
query options travel with it, e.g. ``s3://bucket/dir?region=eu-west-1`` or
``?endpoint_override=host:9000&scheme=http`` for an S3-compatible store.

The functions here do the few file operations the results tree needs on either kind of
path. Writing is atomic on both: bytes go to a temporary name beside the destination and
are moved into place (a rename locally; on object stores a server-side copy, which
publishes the whole object or nothing), so a reader sees either no file or a whole one.
Temporary names end in ``.tmp-<host>-<pid>-<random>`` (``storage.parquet`` finds and
removes the leftovers of interrupted writes by that suffix).
"""

from __future__ import annotations

import functools
import os
import posixpath
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Union

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from theoryscope.core.errors import StorageError, first_line


@functools.lru_cache(maxsize=16)
def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem a URI names and the path inside it (opened once per process)."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise StorageError(f"--results {uri}: {first_line(exc)}") from None


@dataclass(frozen=True, order=True)
class StorePath:
    """A file or directory in the filesystem of the results root ``root_uri``."""

    root_uri: str
    path: str

    @property
    def fs(self) -> pafs.FileSystem:
        return filesystem(self.root_uri)[0]

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def parent(self) -> StorePath:
        return StorePath(self.root_uri, posixpath.dirname(self.path))

    def __truediv__(self, part: str) -> StorePath:
        return StorePath(self.root_uri, f"{self.path}/{part}")

    def with_name(self, name: str) -> StorePath:
        return self.parent / name

    def __str__(self) -> str:
        return f"{self.root_uri.partition('://')[0]}://{self.path}"


FilePath = Union[Path, StorePath]
# What functions taking a results root accept: a path, a URI, or a root already opened.
ResultsLike = Union[str, os.PathLike, StorePath]


def results_root(results: ResultsLike) -> FilePath:
    """The results root that ``results`` (a path, a URI or a root already) names.
    Local roots come back absolute, so workers on other processes find them too."""
    if isinstance(results, StorePath):
        return results
    text = os.fspath(results)
    if "://" not in text:
        return Path(text).expanduser().resolve()
    fs, path = filesystem(text)
    if isinstance(fs, pafs.LocalFileSystem):
        return Path(path).resolve()
    return StorePath(text, path.rstrip("/"))


def root_text(root: FilePath) -> str:
    """The results root as ``--results`` takes it: what workers, resume hints and
    submitted jobs are given."""
    return root.root_uri if isinstance(root, StorePath) else str(root)


def check_root(root: FilePath) -> None:
    """Refuse a results root that is a file, or a store that cannot be reached."""
    if isinstance(root, Path):
        if root.exists() and not root.is_dir():
            raise StorageError(f"--results {root} is a file; give a directory (it is created if missing)")
        return
    if _store_entry(root) == pafs.FileType.File:
        raise StorageError(f"--results {root} is a file; give a directory (it is created if missing)")


def _store_entry(root: StorePath) -> pafs.FileType:
    """What a results URI names; a store that cannot be reached is refused."""
    try:
        return root.fs.get_file_info(root.path).type
    except (pa.ArrowException, OSError) as exc:
        raise StorageError(f"--results {root}: cannot reach it: {first_line(exc)}") from None


RESULTS_FIX = "pass --results DIR or set THEORYSCOPE_RESULTS"


def existing_root(results: ResultsLike) -> FilePath:
    """The results root that a read-only command reads: a local one must be a directory
    already, so a mistyped path is named instead of read as empty (and nothing is
    created). In an object store a missing prefix is only an empty one; a file or a
    store that cannot be reached is refused."""
    root = results_root(results)
    if isinstance(root, Path):
        try:
            if root.is_dir():
                return root
            there = root.exists()
        except OSError as exc:
            raise StorageError(f"cannot read results directory {root}: {exc.strerror or exc}") from None
        if there:
            raise StorageError(f"--results {root} is a file, not a results directory ({RESULTS_FIX})")
        raise StorageError(f"results directory {root} does not exist (launch a sweep first, or {RESULTS_FIX})")
    if _store_entry(root) == pafs.FileType.File:
        raise StorageError(f"--results {root} is a file, not a results directory ({RESULTS_FIX})")
    return root


def host() -> str:
    return socket.gethostname().replace("-", "_")


def temporary_name(name: str) -> str:
    return f"{name}.tmp-{host()}-{os.getpid()}-{secrets.token_hex(4)}"


def write_file_atomic(path: FilePath, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` with a binary stream whose bytes end up at ``path`` all at once:
    ``path`` is absent or complete at every moment, and an existing file is replaced."""
    if isinstance(path, StorePath):
        _write_store(path, write)
    else:
        _write_local(path, write)


def _write_local(path: Path, write: Callable[[BinaryIO], None]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create {path.parent}: {exc.strerror}") from None
    tmp = path.with_name(temporary_name(path.name))
    try:
        with open(tmp, "wb") as handle:
            write(handle)
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


def _write_store(path: StorePath, write: Callable[[BinaryIO], None]) -> None:
    fs = path.fs
    tmp = path.with_name(temporary_name(path.name))
    try:
        fs.create_dir(path.parent.path, recursive=True)
        # Closing the stream publishes the temporary object even after an error inside
        # the block; it is removed below. A killed writer never completes its upload.
        with fs.open_output_stream(tmp.path) as stream:
            write(stream)
        fs.move(tmp.path, path.path)
    except (pa.ArrowException, OSError) as exc:
        remove(tmp)
        raise StorageError(f"cannot write {path}: {first_line(exc)}") from None
    except BaseException:
        remove(tmp)
        raise


def remove(path: FilePath) -> bool:
    """Delete a file; whether it was there."""
    if isinstance(path, Path):
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True
    try:
        path.fs.delete_file(path.path)
    except FileNotFoundError:
        return False
    except (pa.ArrowException, OSError) as exc:
        if path.fs.get_file_info(path.path).type == pafs.FileType.NotFound:
            return False
        raise StorageError(f"cannot remove {path}: {first_line(exc)}") from None
    return True


def is_file(path: FilePath) -> bool:
    if isinstance(path, Path):
        return path.is_file()
    return path.fs.get_file_info(path.path).type == pafs.FileType.File


def read_bytes(path: FilePath) -> bytes:
    if isinstance(path, Path):
        return path.read_bytes()
    with path.fs.open_input_stream(path.path) as stream:
        return stream.read()


def open_binary(path: FilePath) -> BinaryIO:
    """A seekable binary reader (close it)."""
    if isinstance(path, Path):
        return open(path, "rb")
    return path.fs.open_input_file(path.path)


def age_seconds(path: FilePath) -> float | None:
    """Seconds since ``path`` was last modified (None if it is gone)."""
    try:
        if isinstance(path, Path):
            return time.time() - path.stat().st_mtime
        info = path.fs.get_file_info(path.path)
    except OSError:
        return None
    if info.type == pafs.FileType.NotFound or info.mtime is None:
        return None
    return time.time() - info.mtime.timestamp()


def list_partitions(directory: FilePath, partition: str | None = None) -> list[FilePath]:
    """The files in ``directory/<partition>/`` (every ``sweep=*`` partition when
    ``partition`` is None), sorted."""
    if isinstance(directory, Path):
        folders = [directory / partition] if partition else sorted(directory.glob("sweep=*"))
        return [p for folder in folders if folder.is_dir() for p in sorted(folder.iterdir()) if p.is_file()]
    base = directory / partition if partition else directory
    selector = pafs.FileSelector(base.path, recursive=partition is None, allow_not_found=True)
    found = []
    for info in base.fs.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        folder, _, name = posixpath.relpath(info.path, directory.path).rpartition("/")
        if (folder == partition) if partition else (folder.startswith("sweep=") and "/" not in folder):
            found.append(StorePath(directory.root_uri, info.path))
    return sorted(found)


def read_parquet(path: FilePath, columns: list[str] | None = None) -> pa.Table:
    if isinstance(path, Path):
        return pq.read_table(path, columns=columns)
    return pq.read_table(path.path, filesystem=path.fs, columns=columns)

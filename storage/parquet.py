"""Atomic Parquet files in the results tree, and telling complete files from debris.

A file is written under a temporary name beside its destination and moved into place
(``storage.location.write_file_atomic``), so a reader sees either nothing or the whole file,
and writing the same file twice (a retried family) replaces it instead of adding a second
copy. Temporary names end in ``.tmp-<host>-<pid>-<random>`` and never match ``*.parquet``.
The results root is a local directory or a pyarrow filesystem URI (``storage.location``);
every function here works on both.

Readers only ever read *complete* files (``scan``): a ``*.parquet`` file that is not a
whole Parquet file (copied in half, cut by a full disk, written by another tool) is
damaged; a temporary file is the leftover of an interrupted write. ``clean`` removes
both; ``launch`` and ``resume`` call it, read-only commands only report them.

A group of files published together (a family's files: one per table, all under the
same name) ends with a *mark* file whose key-value metadata lists the other tables of
the group (``mark_published``); ``publications`` reads the marks back and tells whole
groups from groups with a file missing or damaged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from theoryscope.storage.location import (
    FilePath, ResultsLike, StorePath, age_seconds, host, list_partitions, open_binary, read_parquet, remove,
    results_root, write_file_atomic,
)


def partition_dir(results: ResultsLike, table: str, sweep: str) -> FilePath:
    return results_root(results) / table / f"sweep={sweep}"


def table_path(results: ResultsLike, table: str, sweep: str, key: str) -> FilePath:
    """Where the file of ``key`` (a family id, or a spec hash for ``sweeps``) lives."""
    return partition_dir(results, table, sweep) / f"{key}.parquet"


def write_atomic(table: pa.Table, path: FilePath) -> None:
    """Write ``table`` to ``path`` so that ``path`` is either absent or complete."""
    write_file_atomic(path, lambda stream: pq.write_table(table, stream, compression="zstd"))


MAGIC = b"PAR1"
# A temporary file this old is a leftover even if its writer might be on another host.
STALE_SECONDS = 3600.0


def is_complete(path: FilePath) -> bool:
    """Whether ``path`` is a whole Parquet file: magic bytes at both ends and a footer
    that parses."""
    try:
        with open_binary(path) as handle:
            if handle.read(4) != MAGIC:
                return False
            handle.seek(-4, os.SEEK_END)
            if handle.read(4) != MAGIC:
                return False
            handle.seek(0)
            pq.read_metadata(handle)
    except (OSError, pa.ArrowException):
        return False
    return True


@dataclass
class Scan:
    """The files of one table (all sweeps, or one): complete, damaged, leftover."""

    complete: list[FilePath] = field(default_factory=list)
    damaged: list[FilePath] = field(default_factory=list)
    leftovers: list[FilePath] = field(default_factory=list)

    def __iadd__(self, other: Scan) -> Scan:
        self.complete += other.complete
        self.damaged += other.damaged
        self.leftovers += other.leftovers
        return self


# Footers read at once when the files are in an object store (each read is a request).
STORE_READERS = 16


def scan(results: ResultsLike, table: str, sweep: str | None = None) -> Scan:
    root = results_root(results)
    paths = list_partitions(root / table, f"sweep={sweep}" if sweep else None)
    files = [p for p in paths if p.name.endswith(".parquet")]
    if isinstance(root, StorePath) and len(files) > 1:
        with ThreadPoolExecutor(min(STORE_READERS, len(files))) as pool:
            whole = list(pool.map(is_complete, files))
    else:
        whole = [is_complete(p) for p in files]
    return Scan(complete=[p for p, ok in zip(files, whole) if ok],
                damaged=[p for p, ok in zip(files, whole) if not ok],
                leftovers=[p for p in paths if not p.name.endswith(".parquet") and ".tmp-" in p.name])


def _writer_gone(path: FilePath) -> bool:
    """A temporary file whose writer cannot still be writing it."""
    age = age_seconds(path)
    if age is None:
        return False
    if age > STALE_SECONDS:
        return True
    writer, _, rest = path.name.rpartition(".tmp-")[2].partition("-")
    pid = rest.partition("-")[0]
    if writer != host() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def clean(found: Scan) -> list[FilePath]:
    """Remove damaged files and leftovers whose writer is gone; return what was removed."""
    return [path for path in found.damaged + [p for p in found.leftovers if _writer_gone(p)] if remove(path)]


def read_column(results: ResultsLike, table: str, sweep: str, column: str) -> list:
    """One column of every complete file of a sweep's partition (empty if none)."""
    values: list = []
    for path in scan(results, table, sweep).complete:
        values.extend(read_parquet(path, columns=[column]).column(column).to_pylist())
    return values


# Key-value metadata of a mark file: the JSON list of the tables whose files, under the
# mark's own name, were published before it.
PUBLISHED_KEY = b"theoryscope.tables"


def mark_published(table: pa.Table, tables: Iterable[str]) -> pa.Table:
    """``table`` recording in its schema metadata that its group published ``tables``."""
    metadata = {**(table.schema.metadata or {}), PUBLISHED_KEY: json.dumps(sorted(tables)).encode()}
    return table.replace_schema_metadata(metadata)


def published_tables(table: pa.Table) -> tuple[str, ...] | None:
    """What ``mark_published`` recorded in ``table`` (as read back), or None when nothing
    was (files written before marks recorded their group)."""
    recorded = (table.schema.metadata or {}).get(PUBLISHED_KEY)
    if recorded is None:
        return None
    try:
        tables = json.loads(recorded)
    except ValueError:
        return None
    if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
        return None
    return tuple(tables)


@dataclass(frozen=True)
class Publication:
    """A complete mark file and the files its group owes beside it."""

    mark: FilePath
    rows: pa.Table  # the mark file's rows (the columns asked for)
    owed: tuple[str, ...]  # tables with a file of the mark's name in the same partition
    missing: tuple[str, ...]  # owed tables whose file is absent or not complete

    @property
    def complete(self) -> bool:
        return not self.missing


def publications(results: ResultsLike, mark: str, sweep: str, columns: Sequence[str] | None = None,
                 unrecorded: Callable[[pa.Table], Iterable[str]] = lambda rows: ()) -> list[Publication]:
    """Every complete file of table ``mark`` in ``sweep``'s partition, with whether each
    table it owes has a complete file of the same name there. ``unrecorded(rows)`` says
    what a mark file without recorded tables owes (``rows`` read with ``columns``)."""
    complete: dict[str, set[str]] = {}

    def whole(table: str) -> set[str]:  # one scan per owed table, not one read per file
        if table not in complete:
            complete[table] = {p.name for p in scan(results, table, sweep).complete}
        return complete[table]

    found = []
    for path in scan(results, mark, sweep).complete:
        rows = read_parquet(path, columns=None if columns is None else list(columns))
        owed = published_tables(rows)
        owed = tuple(unrecorded(rows)) if owed is None else owed
        found.append(Publication(path, rows, owed, tuple(t for t in owed if path.name not in whole(t))))
    return found

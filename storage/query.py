"""SQL over the results directory: DuckDB views named like the tables.

Each view reads every complete ``<results>/<table>/sweep=*/*.parquet`` file (damaged
files and leftovers of interrupted writes are skipped; ``storage.parquet.scan``) with hive
partitioning (the ``sweep`` column always a string) and ``union_by_name``, so files
written by older versions with fewer columns still read, their missing columns null. A
table with no files yet is an empty view with the table's columns. Storage knows rows,
not measures: which tables exist, with which columns, and the views computed from them
come in as a ``Views`` (``sweeps.tables`` gathers them from the measures and experiments).

Local results are read by DuckDB itself. Results in an object store (a ``--results``
URI) are read through pyarrow: each table's files become an Arrow dataset registered
with the connection, so DuckDB needs no extension and no credentials of its own, and the
locked-down connection reaches no file at all.

DuckDB spills to its ``temp_directory`` and allows SQL to read there whatever
``allowed_directories`` says; its default is ``<cwd>/.tmp/``, where the user's own files
may be. Each connection spills instead to a fresh private directory (``tempfile.mkdtemp``,
mode 0700) that holds nothing but its own spill files and is removed when it closes.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads

from theoryscope.core.errors import QueryError, first_line
from theoryscope.storage.limits import DEFAULT_TIMEOUT, MEMORY_LIMIT, THREADS
from theoryscope.storage.location import ResultsLike, StorePath, existing_root, results_root
from theoryscope.storage.parquet import Scan, scan

_DUCKDB_TYPES = {
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
}


def _duckdb_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    if pa.types.is_list(t):
        return f"{_duckdb_type(t.value_type)}[]"
    return _DUCKDB_TYPES[t]


def sql_string(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Views:
    """What a connection shows: one view per table (``tables``: name -> the columns of
    its view while it has no files), ``enriched`` tables whose view wraps the files' rows
    (SQL with ``{stored}`` for them) and ``derived`` views computed from the others."""

    tables: Mapping[str, pa.Schema]
    derived: Mapping[str, str] = field(default_factory=dict)
    enriched: Mapping[str, str] = field(default_factory=dict)


def view_sql(con: duckdb.DuckDBPyConnection, results: ResultsLike, table: str, schema: pa.Schema) -> str:
    """The SQL of ``table``'s view over its complete files (registering their Arrow
    dataset with ``con`` when they are in an object store); with no files, an empty
    relation with ``schema``'s columns."""
    root = results_root(results)
    files = scan(root, table).complete
    if files and isinstance(root, StorePath):
        dataset = pads.dataset(
            [f.path for f in files], filesystem=root.fs, format="parquet", schema=schema,
            partitioning=pads.partitioning(pa.schema([("sweep", pa.string())]), flavor="hive"),
            partition_base_dir=(root / table).path)
        con.register(f"stored_{table}", dataset)
        return f"SELECT * FROM stored_{table}"
    if files:
        listed = ", ".join(sql_string(str(p)) for p in files)
        return (f"SELECT * FROM read_parquet([{listed}], hive_partitioning = true, "
                f"union_by_name = true, hive_types = {{'sweep': 'VARCHAR'}})")
    columns = ", ".join(f"CAST(NULL AS {_duckdb_type(f.type)}) AS {f.name}" for f in schema)
    return f"SELECT {columns} LIMIT 0"


def debris(results: ResultsLike, tables: Iterable[str]) -> Scan:
    """Damaged and leftover files across ``tables`` and the checkpoints (complete ones
    not listed)."""
    found = Scan()
    for table in (*tables, "checkpoints"):
        found += scan(results, table)
    found.complete = []
    return found


@contextlib.contextmanager
def connect(results: ResultsLike, views: Views) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB connection with one view per table of ``views``, and its derived views,
    spilling to a private directory of its own; closed and that directory removed on
    exit. ``results`` must exist (``existing_root``): reading creates nothing."""
    root = existing_root(results)
    try:
        spill = tempfile.mkdtemp(prefix="theoryscope-duckdb-")
    except OSError as exc:
        raise QueryError(f"cannot make a spill directory in {tempfile.gettempdir()} (set TMPDIR): "
                         f"{exc.strerror or exc}") from None
    try:
        con = duckdb.connect(":memory:", config={"temp_directory": spill})
        try:
            for table, schema in views.tables.items():
                stored = view_sql(con, root, table, schema)
                sql = views.enriched[table].format(stored=stored) if table in views.enriched else stored
                con.execute(f"CREATE VIEW {table} AS {sql}")
            for view, sql in views.derived.items():
                con.execute(f"CREATE VIEW {view} AS {sql}")
            yield con
        finally:
            con.close()
    finally:
        shutil.rmtree(spill, ignore_errors=True)


READ_ONLY = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def check_read_only(sql: str) -> None:
    """Accept one read statement (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN, FROM);
    refuse everything else (COPY, ATTACH, INSTALL/LOAD, SET/RESET, PRAGMA, CALL, CREATE,
    INSERT, DROP, EXPORT, ...) with one line."""
    if not sql.strip():
        raise QueryError("query failed: the SQL is empty")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"query failed: {first_line(exc)}") from None
    if len(statements) != 1:
        raise QueryError(f"query refused: one statement at a time, got {len(statements)}")
    try:
        kind = statements[0].type
    except ValueError:  # a statement type this duckdb's Python API has no name for: not a read
        kind = None
    if kind not in READ_ONLY:
        raise _refused(statements[0].query)


def _refused(statement: str) -> QueryError:
    """The refusal of a statement, named as written (DuckDB files INSTALL under LOAD)."""
    words = statement.split()
    keyword = " ".join(words[:2] if words[0].upper() == "FORCE" else words[:1]).upper()
    return QueryError(
        f"query refused: {keyword} statements are not allowed; queries are read-only "
        f"(SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN); write results with --format csv|json|parquet --out FILE")


def lock_down(con: duckdb.DuckDBPyConnection, results: ResultsLike, memory_limit: str = MEMORY_LIMIT,
              threads: int = THREADS) -> None:
    """After the views exist: files only under ``results`` (none at all for results in
    an object store, which the views read through Arrow) and in the connection's private
    spill directory (DuckDB allows its ``temp_directory`` by itself), no extensions
    fetched or loaded, bounded memory and threads, and settings locked so SQL cannot undo
    any of it."""
    root = results_root(results)
    allowed = "" if isinstance(root, StorePath) else sql_string(str(root) + "/")
    for setting in (f"allowed_directories = [{allowed}]", "enable_external_access = false",
                    "autoinstall_known_extensions = false", "autoload_known_extensions = false",
                    f"memory_limit = {sql_string(memory_limit)}", f"threads = {threads}", "lock_configuration = true"):
        con.execute(f"SET {setting}")


def run_query(results: ResultsLike, sql: str, views: Views, timeout: float = DEFAULT_TIMEOUT) -> pa.Table:
    """Run one read-only statement against ``views`` in a locked-down DuckDB; anything
    refused, failing or running past ``timeout`` seconds raises ``QueryError``."""
    check_read_only(sql)
    with connect(results, views) as con:
        lock_down(con, results)
        timer = threading.Timer(timeout, con.interrupt)
        timer.start()
        try:
            relation = con.sql(sql)
            # DuckDB 2 names it to_arrow_table; 1.x returns a Table from arrow().
            to_arrow = getattr(relation, "to_arrow_table", None) or relation.arrow
            return to_arrow()
        except duckdb.InterruptException:
            raise QueryError(f"query stopped after {timeout:g} s (--timeout)") from None
        except duckdb.Error as exc:
            raise QueryError(f"query failed: {first_line(exc)}") from None
        finally:
            timer.cancel()


def describe_views(results: ResultsLike, views: Views) -> dict[str, list[tuple[str, str]]]:
    """Each view's columns as (name, DuckDB type)."""
    with connect(results, views) as con:
        return {view: [(row[0], row[1]) for row in con.execute(f"DESCRIBE {view}").fetchall()]
                for view in (*views.tables, *views.derived)}

"""SQL over the results directory: DuckDB views named like the tables.

Each view reads every complete ``<results>/<table>/sweep=*/*.parquet`` file (damaged
files and leftovers of interrupted writes are skipped; ``storage.parquet.scan``) with hive
partitioning (the ``sweep`` column always a string) and ``union_by_name``, so files
written by older versions with fewer columns still read, their missing columns null. A
table with no files yet is an empty view with the table's columns.

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
from collections.abc import Iterator

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads

from core.errors import QueryError, first_line
from storage.location import ResultsLike, StorePath, existing_root, results_root
from storage.parquet import Scan, scan
from storage.schemas import TABLES

_DUCKDB_TYPES = {
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
}


def _duckdb_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    return _DUCKDB_TYPES[t]


def sql_string(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def view_sql(con: duckdb.DuckDBPyConnection, results: ResultsLike, table: str) -> str:
    """The SQL of ``table``'s view over its complete files (registering their Arrow
    dataset with ``con`` when they are in an object store)."""
    root = results_root(results)
    files = scan(root, table).complete
    if files and isinstance(root, StorePath):
        dataset = pads.dataset(
            [f.path for f in files], filesystem=root.fs, format="parquet", schema=TABLES[table],
            partitioning=pads.partitioning(pa.schema([("sweep", pa.string())]), flavor="hive"),
            partition_base_dir=(root / table).path)
        con.register(f"stored_{table}", dataset)
        return f"SELECT * FROM stored_{table}"
    if files:
        listed = ", ".join(sql_string(str(p)) for p in files)
        return (f"SELECT * FROM read_parquet([{listed}], hive_partitioning = true, "
                f"union_by_name = true, hive_types = {{'sweep': 'VARCHAR'}})")
    columns = ", ".join(f"CAST(NULL AS {_duckdb_type(f.type)}) AS {f.name}" for f in TABLES[table])
    return f"SELECT {columns} LIMIT 0"


def debris(results: ResultsLike) -> Scan:
    """Damaged and leftover files across every table (complete ones not listed)."""
    found = Scan()
    for table in (*TABLES, "checkpoints"):
        found += scan(results, table)
    found.complete = []
    return found


# Views computed from the tables. overtraining: per run, where each test curve is best
# (the earliest step with the lowest value), its final value, the gap between them and
# whether early stopping would have helped (Advani & Saxe 2017; Nakkiran et al. 2019); it
# agrees with core.measures.overtraining.summarize.
DERIVED = {
    "overtraining": """
        WITH best AS (
            SELECT sweep, run_id, max(step) AS last_step, min(test_loss) AS best_test_loss,
                   min(test_error) AS best_test_error, min(theory_test_loss) AS theory_best_test_loss
            FROM curves GROUP BY sweep, run_id)
        SELECT sweep, run_id,
               min(step) FILTER (WHERE test_loss = best_test_loss) AS best_step,
               any_value(best_test_loss) AS best_test_loss,
               any_value(test_loss) FILTER (WHERE step = last_step) AS final_test_loss,
               any_value(test_loss) FILTER (WHERE step = last_step) - any_value(best_test_loss) AS overtraining_gap,
               any_value(test_loss) FILTER (WHERE step = last_step) > any_value(best_test_loss)
                   AS early_stopping_helps,
               min(step) FILTER (WHERE test_error = best_test_error) AS best_error_step,
               any_value(best_test_error) AS best_test_error,
               any_value(test_error) FILTER (WHERE step = last_step) AS final_test_error,
               any_value(test_error) FILTER (WHERE step = last_step) - any_value(best_test_error)
                   AS error_overtraining_gap,
               min(step) FILTER (WHERE theory_test_loss = theory_best_test_loss) AS theory_best_step,
               any_value(theory_best_test_loss) AS theory_best_test_loss,
               any_value(theory_test_loss) FILTER (WHERE step = last_step) AS theory_final_test_loss
        FROM curves JOIN best USING (sweep, run_id)
        GROUP BY sweep, run_id""",
}


# Tables whose view adds columns computed across families: the SQL wraps the files' rows
# (``stored``). acceleration: each run's speed-up over the depth-1 run with the same data,
# seed, init scale and training settings (Arora, Cohen & Hazan 2018's ratio); where the
# depth-1 run never reached the target, ratio_at_least = train_steps / steps_to_target.
ENRICHED = {
    "acceleration": """
        WITH stored AS ({stored}),
        baseline AS (SELECT sweep, baseline_key, any_value(steps_to_target) AS depth1_steps
                     FROM stored WHERE depth = 1 GROUP BY sweep, baseline_key)
        SELECT stored.*, CAST(baseline.depth1_steps AS DOUBLE) / stored.steps_to_target AS ratio_vs_depth1,
               baseline.depth1_steps,
               CASE WHEN baseline.baseline_key IS NOT NULL AND baseline.depth1_steps IS NULL AND stored.reached
                    THEN CAST(stored.train_steps AS DOUBLE) / stored.steps_to_target END AS ratio_at_least
        FROM stored LEFT JOIN baseline USING (sweep, baseline_key)""",
}


@contextlib.contextmanager
def connect(results: ResultsLike) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB connection with one view per table, and the derived views,
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
            for table in TABLES:
                stored = view_sql(con, root, table)
                sql = ENRICHED[table].format(stored=stored) if table in ENRICHED else stored
                con.execute(f"CREATE VIEW {table} AS {sql}")
            for view, sql in DERIVED.items():
                con.execute(f"CREATE VIEW {view} AS {sql}")
            yield con
        finally:
            con.close()
    finally:
        shutil.rmtree(spill, ignore_errors=True)


READ_ONLY = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
DEFAULT_TIMEOUT = 300.0
MEMORY_LIMIT = "4GB"
THREADS = 2


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
    kind = statements[0].type
    if kind not in READ_ONLY:
        raise QueryError(
            f"query refused: {kind.name} statements are not allowed; queries are read-only "
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


def run_query(results: ResultsLike, sql: str, timeout: float = DEFAULT_TIMEOUT) -> pa.Table:
    """Run one read-only statement against the views of a locked-down DuckDB; anything
    refused, failing or running past ``timeout`` seconds raises ``QueryError``."""
    check_read_only(sql)
    with connect(results) as con:
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


def describe_views(results: ResultsLike) -> dict[str, list[tuple[str, str]]]:
    """Each view's columns as (name, DuckDB type)."""
    with connect(results) as con:
        return {view: [(row[0], row[1]) for row in con.execute(f"DESCRIBE {view}").fetchall()]
                for view in (*TABLES, *DERIVED)}

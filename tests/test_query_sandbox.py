"""`query` is read-only and confined: hostile statements are refused, nothing is written,
the data stay intact."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from helpers import SMALL_SPEC
from theoryscope.cli import app
from theoryscope.core.errors import QueryError
from theoryscope.sweeps.dispatch import LocalBackend
from theoryscope.sweeps.launch import launch, prepare
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.tables import run_query


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("sandbox")
    results = root / "results"
    launch(prepare(parse_spec(SMALL_SPEC), results), results, LocalBackend())
    return results


def fingerprint(directory) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


HOSTILE = [
    ("SELECT * FROM read_csv('/etc/passwd')", "passwd"),
    ("SELECT * FROM read_text('/etc/hostname')", "hostname"),
    ("SELECT * FROM glob('/etc/*')", "/etc"),
    ("SELECT * FROM read_parquet('{outside}/*.parquet')", "outside"),
    ("COPY (SELECT * FROM runs) TO '{results}/stolen.csv'", "COPY"),
    ("COPY runs TO '{outside}/stolen.parquet' (FORMAT parquet)", "COPY"),
    ("EXPORT DATABASE '{outside}/dump'", "EXPORT"),
    ("ATTACH '{outside}/evil.db' AS evil", "ATTACH"),
    ("INSTALL httpfs", "LOAD"),
    ("LOAD httpfs", "LOAD"),
    ("SET enable_external_access = true", "SET"),
    ("RESET lock_configuration", "SET"),
    ("PRAGMA enable_profiling", "PRAGMA"),
    ("CALL pragma_version()", "CALL"),
    ("CREATE TABLE t AS SELECT 1", "CREATE"),
    ("DROP VIEW runs", "DROP"),
    ("INSERT INTO runs SELECT * FROM runs", "INSERT"),
    ("SELECT 1; DROP VIEW runs", "one statement"),
    ("SELECT * FROM read_csv('https://example.com/x.csv')", "example.com"),
]


@pytest.mark.parametrize("sql,fragment", HOSTILE, ids=[h[0][:40] for h in HOSTILE])
def test_hostile_statements_are_refused_and_write_nothing(results, tmp_path, sql, fragment):
    outside = tmp_path / "outside"
    outside.mkdir()
    pq.write_table(pq.read_table(next((results / "runs").rglob("*.parquet"))), outside / "copy.parquet")
    before, before_outside = fingerprint(results.parent), fingerprint(outside)
    with pytest.raises(QueryError) as info:
        run_query(results, sql.format(results=results, outside=outside))
    message = str(info.value)
    assert "\n" not in message and message.startswith(("query refused", "query failed"))
    assert fingerprint(results.parent) == before and fingerprint(outside) == before_outside
    assert run_query(results, "SELECT count(*) AS n FROM runs").to_pylist() == [{"n": 8}]


@pytest.mark.parametrize("sql", ["SELECT count(*) FROM runs", "WITH x AS (SELECT 1 AS a) SELECT * FROM x",
                                 "DESCRIBE runs", "SHOW TABLES", "SUMMARIZE runs", "EXPLAIN SELECT * FROM curves",
                                 "FROM overtraining LIMIT 1", "SELECT current_setting('threads') AS t"])
def test_read_statements_are_allowed(results, sql):
    assert run_query(results, sql).num_rows >= 1


def test_a_long_query_is_stopped(results):
    with pytest.raises(QueryError, match="stopped after 0.5 s"):
        run_query(results, "SELECT count(*) FROM range(1000000) a, range(1000000) b", timeout=0.5)


def test_exports_are_written_by_theoryscope(results, tmp_path):
    runner = CliRunner()
    out = tmp_path / "answer.parquet"
    done = runner.invoke(app, ["query", "SELECT depth, count(*) AS n FROM runs GROUP BY depth ORDER BY depth",
                               "--results", str(results), "--format", "parquet", "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert pq.read_table(out).to_pylist() == [{"depth": 1, "n": 4}, {"depth": 2, "n": 4}]
    refused = runner.invoke(app, ["query", "SELECT 1", "--results", str(results), "--format", "parquet"])
    assert refused.exit_code == 1 and "--format parquet needs --out" in refused.stderr
    hostile = runner.invoke(app, ["query", f"COPY runs TO '{tmp_path}/x.csv'", "--results", str(results),
                                  "--format", "json", "--out", str(tmp_path / "y.json")])
    assert hostile.exit_code == 1 and "query refused: COPY" in hostile.stderr
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "y.json").exists()
    assert json.loads(runner.invoke(app, ["query", "SELECT 1 AS one", "--results", str(results),
                                          "--format", "json"]).stdout) == [{"one": 1}]


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A secret where DuckDB's default temp directory is (``<cwd>/.tmp/``, which DuckDB
    adds to ``allowed_directories`` by itself), and one in the system temp directory
    (where the private spill directories are made)."""
    cwd = tmp_path / "cwd"
    (cwd / ".tmp").mkdir(parents=True)
    (cwd / ".tmp" / "s.csv").write_text("secret,1\n")
    monkeypatch.chdir(cwd)
    system = Path(tempfile.mkdtemp(prefix="theoryscope-test-"))
    (system / "s.csv").write_text("secret,2\n")
    yield {"cwd": cwd, "tmp": Path(tempfile.gettempdir()), "system": system}
    shutil.rmtree(system)


PLANTED = [
    "SELECT * FROM read_csv('{cwd}/.tmp/s.csv')",
    "SELECT * FROM read_csv('.tmp/s.csv')",
    "SELECT * FROM read_text('{cwd}/.tmp/s.csv')",
    "SELECT * FROM read_blob('.tmp/s.csv')",
    "SELECT * FROM glob('{cwd}/.tmp/*')",
    "SELECT * FROM glob('.tmp/*')",
    "SELECT * FROM read_csv('{system}/s.csv')",
    "SELECT * FROM read_text('{system}/s.csv')",
    "SELECT * FROM glob('{tmp}/*')",
]


@pytest.mark.parametrize("sql", PLANTED, ids=[p[14:50] for p in PLANTED])
def test_files_in_temp_directories_are_out_of_reach(results, planted, sql):
    with pytest.raises(QueryError) as info:
        run_query(results, sql.format(**planted))
    assert "secret" not in str(info.value) and str(info.value).startswith("query failed")


def test_the_cli_refuses_a_file_in_the_cwd_temp_directory(results, planted):
    done = CliRunner().invoke(app, ["query", "SELECT * FROM read_csv('.tmp/s.csv')", "--results", str(results),
                                    "--format", "csv"])
    assert done.exit_code == 1 and "secret" not in done.output and "Traceback" not in done.output
    assert [line for line in done.stderr.splitlines() if line.strip()] == [done.stderr.strip()]
    assert "query failed" in done.stderr


def test_spill_files_go_to_a_fresh_private_directory_that_is_removed(results, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    row = run_query(results, "SELECT current_setting('temp_directory') AS d, "
                             "(SELECT count(*) FROM glob(current_setting('temp_directory') || '/*')) AS n").to_pylist()
    spill = Path(row[0]["d"])
    assert spill.is_absolute() and row[0]["n"] == 0  # nothing in it for SQL to read but its own spill files
    assert tmp_path not in spill.parents and results not in spill.parents
    assert not spill.exists() and list(tmp_path.iterdir()) == []  # removed; no .tmp in the cwd


def test_a_query_larger_than_memory_spills_under_the_lock(results, tmp_path, monkeypatch):
    from theoryscope.storage.query import lock_down
    from theoryscope.sweeps.tables import connect

    monkeypatch.chdir(tmp_path)
    with connect(results) as con:
        lock_down(con, results, memory_limit="128MB", threads=1)  # one thread: a steady footprint under load
        spill = Path(con.execute("SELECT current_setting('temp_directory')").fetchone()[0])
        assert stat.S_IMODE(spill.stat().st_mode) == 0o700
        sql = "SELECT count(DISTINCT m) FROM (SELECT md5(i::VARCHAR) AS m FROM range(3000000) t(i) ORDER BY m)"
        assert con.execute(sql).fetchone() == (3000000,)
    assert not spill.exists() and list(tmp_path.iterdir()) == []

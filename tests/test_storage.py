"""Atomic Parquet files and the DuckDB views over them."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from theoryscope.core.config import RUN_SECTIONS, DataSpec, Experiment, ModelSpec, RunSpec, TrainSpec, is_hashed
from theoryscope.core.errors import QueryError, StorageError
from theoryscope.storage import schemas
from theoryscope.storage.parquet import read_column, table_path, write_atomic
from theoryscope.sweeps.records import check_runs_schema, config_column_names, config_columns
from theoryscope.sweeps.tables import describe_views, run_query


def curve_rows(sweep: str, run_id: str, steps: int) -> pa.Table:
    return pa.Table.from_pylist(
        [{"sweep": sweep, "run_id": run_id, "step": s, "train_loss": 1.0 / (s + 1), "test_loss": 2.0,
          "train_error": None, "test_error": None, "theory_test_loss": None} for s in range(steps)],
        schema=schemas.CURVES)


def test_write_atomic_leaves_only_the_final_file(tmp_path):
    path = table_path(tmp_path, "curves", "s", "fam")
    write_atomic(curve_rows("s", "r", 3), path)
    assert [p.name for p in path.parent.iterdir()] == ["fam.parquet"]
    assert pq.read_table(path).num_rows == 3


def test_rewriting_replaces_instead_of_adding(tmp_path):
    path = table_path(tmp_path, "curves", "s", "fam")
    write_atomic(curve_rows("s", "r", 3), path)
    write_atomic(curve_rows("s", "r", 5), path)
    assert len(list(path.parent.iterdir())) == 1
    assert run_query(tmp_path, "SELECT count(*) AS n FROM curves").column("n").to_pylist() == [5]


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    path = table_path(tmp_path, "curves", "s", "fam")

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", explode)
    with pytest.raises(StorageError, match="cannot write .*fam.parquet: disk full"):
        write_atomic(curve_rows("s", "r", 3), path)
    assert list(path.parent.iterdir()) == []


def test_empty_results_give_empty_views_with_the_schema_columns(tmp_path):
    (tmp_path / "nothing-here").mkdir()
    views = describe_views(tmp_path / "nothing-here")
    assert set(views) == {"sweeps", "runs", "curves", "layers", "bounds", "valleys", "acceleration", "modes",
                          "overtraining", "weights", "attenuation", "complexity", "rankings", "rankings_axes",
                          "rankings_environments", "invertibility"}
    assert [c for c, _ in views["runs"]] == schemas.RUNS.names
    assert dict(views["runs"])["finished_at"] == "TIMESTAMP WITH TIME ZONE"
    assert run_query(tmp_path, "SELECT count(*) AS n FROM runs").column("n").to_pylist() == [0]


def test_views_union_sweeps_and_keep_numeric_sweep_names_as_text(tmp_path):
    write_atomic(curve_rows("2024", "a", 2), table_path(tmp_path, "curves", "2024", "f1"))
    older = curve_rows("other", "b", 3).drop_columns(["theory_test_loss"])  # a file from an older version
    write_atomic(older, table_path(tmp_path, "curves", "other", "f2"))
    table = run_query(tmp_path, "SELECT sweep, count(*) AS n, count(theory_test_loss) AS t FROM curves "
                                "GROUP BY sweep ORDER BY sweep")
    assert table.to_pylist() == [{"sweep": "2024", "n": 2, "t": 0}, {"sweep": "other", "n": 3, "t": 0}]
    assert table.schema.field("sweep").type == pa.string()


def test_temporary_files_are_not_read(tmp_path):
    path = table_path(tmp_path, "curves", "s", "fam")
    write_atomic(curve_rows("s", "r", 2), path)
    (path.parent / "other.parquet.tmp-123-abcd").write_bytes(b"half a file")
    assert run_query(tmp_path, "SELECT count(*) AS n FROM curves").column("n").to_pylist() == [2]
    assert read_column(tmp_path, "curves", "s", "run_id") == ["r", "r"]


@pytest.mark.parametrize("sql,fragment", [
    ("SELEC 1", "syntax error"),
    ("SELECT nope FROM runs", "nope"),
    ("SELECT * FROM no_such_table", "no_such_table"),
])
def test_bad_sql_is_one_line(tmp_path, sql, fragment):
    with pytest.raises(QueryError) as info:
        run_query(tmp_path, sql)
    assert "\n" not in str(info.value) and fragment in str(info.value)


def test_every_config_field_is_a_runs_column():
    """Anything a grid can sweep must be a column of ``runs`` (a new spec field needs one)."""
    run = RunSpec(Experiment.TRAIN, DataSpec(), ModelSpec(), TrainSpec())
    columns = config_columns(run)
    n_fields = sum(sum(map(is_hashed, dataclasses.fields(cls))) for cls in RUN_SECTIONS.values()) + 2  # + experiment, seed
    assert len(columns) == n_fields
    assert set(columns) <= set(schemas.RUNS.names)


def test_a_spec_field_without_a_runs_column_is_refused():
    names = config_column_names()
    check_runs_schema(schemas.RUNS, names)
    with pytest.raises(TypeError, match="new_field"):
        check_runs_schema(schemas.RUNS, [*names, "new_field"])

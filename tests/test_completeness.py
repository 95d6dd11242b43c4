"""A run is done only when every table its family owes has its complete file: a damaged
or missing curves or measure file makes its family's runs planned again, ``status`` says
so, and ``resume`` runs exactly that family, leaving one row per run in every table."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from helpers import SMALL_SPEC
from theoryscope.storage.location import results_root
from theoryscope.storage.parquet import PUBLISHED_KEY, scan, table_path
from theoryscope.sweeps.dispatch import LocalBackend
from theoryscope.sweeps.execute import published_families
from theoryscope.sweeps.launch import done_runs, launch, prepare, prepare_resume
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.plan import plan_sweep
from theoryscope.sweeps.status import sweep_status
from theoryscope.sweeps.tables import run_query

# Two families (depth 1 and 2) of two runs, measured: layers and bounds beside curves.
MEASURED_SPEC = """
name = "measured"
[data]
kind = "gaussian-mixture"
n_train = 48
n_test = 32
input_dim = 6
n_classes = 3
class_sep = 5.0
[train]
lr = 0.2
steps = 20
log_every = 10
[grid]
depth = [1, 2]
seed = [0, 1]
[model]
width = 8
[measure]
cushions = { max_samples = 16, compression_k = 8, draws = 2 }
"""

CURVES = "SELECT run_id, step, train_loss, test_loss, test_error FROM curves ORDER BY run_id, step"
RUNS = "SELECT run_id, status, train_loss, test_loss FROM runs ORDER BY run_id"


def launched(results, text: str = SMALL_SPEC):
    spec = parse_spec(text)
    summary = launch(prepare(spec, results), results, LocalBackend())
    assert summary.total("n_failed") == 0
    return spec


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def remaining(results, sweep: str) -> int:
    return sweep_status(results, sweep)[0].remaining


def one_row_per_run(results, table: str, n_runs: int) -> None:
    rows = run_query(results, f"SELECT count(*) AS n, count(DISTINCT run_id) AS d FROM {table}").to_pylist()
    assert rows == [{"n": n_runs, "d": n_runs}], table


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same sweeps run once without accidents, for comparison."""
    made = {}

    def get(text: str):
        if text not in made:
            made[text] = tmp_path_factory.mktemp("reference") / "results"
            launched(made[text], text)
        return made[text]

    return get


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_a_damaged_or_missing_curves_file_makes_its_family_run_again(results, reference, damage):
    spec = launched(results)
    victim = plan_sweep(spec).families[0]
    path = table_path(results, "curves", "small", victim.family_id)
    truncate(path) if damage == "truncated" else path.unlink()

    status = sweep_status(results, "small")[0]
    assert (status.done, status.remaining) == (4, 4)  # not "complete"
    plan = prepare_resume(results, "small")
    assert [f.family_id for f in plan.families] == [victim.family_id]
    summary = launch(plan, results, LocalBackend())
    assert [o.family_id for o in summary.outcomes] == [victim.family_id] and summary.total("n_ok") == 4

    assert remaining(results, "small") == 0
    one_row_per_run(results, "runs", 8)
    assert run_query(results, CURVES) == run_query(reference(SMALL_SPEC), CURVES)  # every curve whole
    assert prepare_resume(results, "small").families == ()


def test_a_damaged_measure_file_makes_its_family_run_again(results, reference):
    spec = launched(results, MEASURED_SPEC)
    victim = plan_sweep(spec).families[1]
    truncate(table_path(results, "layers", "measured", victim.family_id))

    assert remaining(results, "measured") == victim.size
    assert [f.family_id for f in prepare_resume(results, "measured").families] == [victim.family_id]
    launch(prepare_resume(results, "measured"), results, LocalBackend())

    assert remaining(results, "measured") == 0
    one_row_per_run(results, "runs", 4)
    ref = reference(MEASURED_SPEC)
    for sql in (CURVES, "SELECT run_id, step, layer, layer_cushion FROM layers ORDER BY ALL",
                "SELECT run_id, step FROM bounds ORDER BY ALL"):
        assert run_query(results, sql) == run_query(ref, sql), sql


def test_runs_files_record_the_tables_their_family_published(results):
    spec = launched(results, MEASURED_SPEC)
    family = plan_sweep(spec).families[0]
    metadata = pq.read_schema(table_path(results, "runs", "measured", family.family_id)).metadata
    assert metadata[PUBLISHED_KEY] == b'["attenuation", "bounds", "curves", "layers", "weights"]'
    assert [(f.owed, f.missing) for f in published_families(results, "measured")] == \
        [(("attenuation", "bounds", "curves", "layers", "weights"), ())] * 2


def test_a_failed_family_owes_no_other_table(results, fail_families):
    heal = fail_families(2, "CUDA out of memory")
    launch(prepare(parse_spec(SMALL_SPEC), results), results, LocalBackend())
    heal()
    owed = sorted(f.owed for f in published_families(results, "small"))
    assert owed == [(), ("curves", "weights")]
    assert len(done_runs(results, "small")) == 8 and remaining(results, "small") == 0


def test_runs_files_of_older_versions_owe_curves_unless_failed(results, fail_families):
    heal = fail_families(2, "boom")
    spec = parse_spec(SMALL_SPEC)
    launch(prepare(spec, results), results, LocalBackend())
    heal()
    for path in scan(results, "runs", "small").complete:  # as every earlier version wrote them
        pq.write_table(pq.read_table(path).replace_schema_metadata(None), path)
    assert all(f.complete for f in published_families(results, "small"))
    assert len(done_runs(results, "small")) == 8

    trained, failed = plan_sweep(spec).families
    assert trained.exemplar.model.depth == 1 and failed.exemplar.model.depth == 2
    table_path(results, "curves", "small", trained.family_id).unlink()
    assert done_runs(results, "small") == frozenset(r.run_id for r in failed.runs)  # failed: nothing owed
    launch(prepare_resume(results, "small"), results, LocalBackend())
    one_row_per_run(results, "runs", 8)
    assert run_query(results, "SELECT count(DISTINCT run_id) AS n FROM curves").to_pylist() == [{"n": 4}]


@pytest.mark.parametrize("damage", ["measure", "runs"])
def test_an_unfinished_family_packed_differently_leaves_no_second_row(results, reference, damage):
    """The family's leftover files (its runs and curves files when a measure file is
    damaged; its curves and measure files when its runs file never came) are removed
    before its runs train again in families of another size, under other ids."""
    spec = launched(results, MEASURED_SPEC)
    victim = plan_sweep(spec).families[0]
    table = "bounds" if damage == "measure" else "runs"
    table_path(results, table, "measured", victim.family_id).unlink()
    smaller = parse_spec(MEASURED_SPEC + "[resources]\nmax_family_size = 1\n")  # the same experiment
    plan = prepare(smaller, results)
    assert sorted(r.run_id for f in plan.families for r in f.runs) == sorted(r.run_id for r in victim.runs)
    assert victim.family_id not in {f.family_id for f in plan.families} and len(plan.families) == 2
    launch(plan, results, LocalBackend())

    for name in ("runs", "bounds"):
        one_row_per_run(results, name, 4)
    assert not table_path(results, "curves", "measured", victim.family_id).exists()
    assert not (results / "weights" / "sweep=measured" / f"{victim.family_id}.safetensors").exists()
    kept = run_query(results, "SELECT run_id, step, count(*) AS n FROM weights GROUP BY ALL").to_pylist()
    assert {r["n"] for r in kept} == {1} and len({r["run_id"] for r in kept}) == 4
    ref = reference(MEASURED_SPEC)  # the same points; values may round differently in a smaller family
    for sql in ("SELECT run_id, step FROM curves ORDER BY ALL",
                "SELECT run_id, step, layer FROM layers ORDER BY ALL"):
        assert run_query(results, sql) == run_query(ref, sql), sql
    assert remaining(results, "measured") == 0


def test_status_and_resume_agree_on_what_is_done(results):
    spec = launched(results)
    a, b = plan_sweep(spec).families
    truncate(table_path(results, "curves", "small", a.family_id))
    (table_path(results, "runs", "small", b.family_id)).unlink()
    status = sweep_status(results, "small")[0]
    assert (status.ok, status.done, status.remaining, status.last_progress) == (0, 0, 8, None)
    assert done_runs(results, "small") == frozenset()
    assert len(prepare_resume(results, "small").families) == 2


@pytest.mark.slow  # starts a moto S3 server
def test_an_object_store_tells_unfinished_families_too(s3_server):
    root = results_root(s3_server("completeness"))
    spec = launched(root)
    victim = plan_sweep(spec).families[1]
    path = table_path(root, "curves", "small", victim.family_id)
    path.fs.delete_file(path.path)
    assert remaining(root, "small") == 4
    assert [f.family_id for f in prepare_resume(root, "small").families] == [victim.family_id]
    launch(prepare_resume(root, "small"), root, LocalBackend())
    assert remaining(root, "small") == 0
    one_row_per_run(root, "runs", 8)
    assert run_query(root, "SELECT count(DISTINCT run_id) AS n FROM curves").to_pylist() == [{"n": 8}]


"""Whole sweeps through the library: planning against disk, both backends, failures."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from helpers import SMALL_SPEC
from theoryscope.core.errors import TheoryscopeError
from theoryscope.sweeps.dispatch import LocalBackend, RayBackend
from theoryscope.sweeps.launch import launch, prepare
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.tables import run_query


def run_local(spec_text, results, sweep=None):
    spec = parse_spec(spec_text)
    return launch(prepare(spec, results, sweep), results, LocalBackend())


def test_every_run_has_one_row_and_a_curve(results):
    summary = run_local(SMALL_SPEC, results)
    assert summary.planned == 8 and summary.total("n_ok") == 8 and summary.families == 2
    runs = run_query(results, "SELECT * FROM runs ORDER BY depth, label_noise, seed")
    assert runs.num_rows == 8 and len(set(runs.column("run_id").to_pylist())) == 8
    assert set(runs.column("status").to_pylist()) == {"ok"}
    # the swept values are columns
    assert sorted({(r["depth"], r["label_noise"], r["seed"]) for r in runs.to_pylist()}) == [
        (d, n, s) for d in (1, 2) for n in (0.0, 0.5) for s in (0, 1)]
    assert len(set(runs.column("family_id").to_pylist())) == 2
    curves = run_query(results, "SELECT run_id, min(step) AS first, max(step) AS last, count(*) AS n "
                                "FROM curves GROUP BY run_id")
    assert curves.num_rows == 8
    assert set(curves.column("first").to_pylist()) == {0} and set(curves.column("last").to_pylist()) == {30}
    assert set(curves.column("n").to_pylist()) == {4}
    # the last curve point is the run's final loss
    joined = run_query(results, "SELECT r.train_loss AS a, c.train_loss AS b FROM runs r JOIN curves c "
                                "USING (run_id) WHERE c.step = r.steps")
    assert joined.column("a").to_pylist() == joined.column("b").to_pylist()
    sweeps = run_query(results, "SELECT sweep, spec, planned_runs FROM sweeps").to_pylist()
    assert sweeps == [{"sweep": "small", "spec": SMALL_SPEC, "planned_runs": 8}]


def test_launching_again_runs_only_what_is_missing(results):
    first = run_local(SMALL_SPEC, results)
    assert first.total("n_runs") == 8
    again = run_local(SMALL_SPEC, results)
    assert again.already_done == 8 and again.total("n_runs") == 0 and again.families == 0
    assert run_query(results, "SELECT count(*) AS n FROM runs").column("n").to_pylist() == [8]


def test_a_different_spec_under_the_same_name_is_refused(results):
    run_local(SMALL_SPEC, results)
    other = SMALL_SPEC.replace("steps = 30", "steps = 40")
    with pytest.raises(TheoryscopeError, match="already exists.*different spec.*--name"):
        prepare(parse_spec(other), results)
    run_local(other, results, sweep="small-40-steps")
    counts = run_query(results, "SELECT sweep, count(*) AS n FROM runs GROUP BY sweep ORDER BY sweep").to_pylist()
    assert counts == [{"sweep": "small", "n": 8}, {"sweep": "small-40-steps", "n": 8}]


def test_a_family_that_raises_is_recorded_as_failed_and_the_others_carry_on(results, fail_families):
    fail_families(2, "out of luck")
    summary = run_local(SMALL_SPEC, results)
    assert summary.total("n_failed") == 4 and summary.total("n_ok") == 4
    failed = run_query(results, "SELECT depth, error FROM runs WHERE status = 'failed'").to_pylist()
    assert len(failed) == 4
    assert all(r["depth"] == 2 and r["error"] == "RuntimeError: out of luck" for r in failed)


DIVERGING = """
name = "boom"
[data]
n_train = 32
n_test = 16
input_dim = 4
[model]
kind = "linear"
depth = 3
width = 8
[train]
steps = 40
log_every = 10
[grid]
"train.lr" = [0.05, 50.0]
"""


def test_diverged_runs_are_marked_and_have_no_numbers_after_divergence(results):
    run_local(DIVERGING, results)
    rows = run_query(results, "SELECT run_id, lr, status, diverged_step, train_loss, test_loss, gen_gap "
                              "FROM runs ORDER BY lr").to_pylist()
    ok, boom = rows
    assert ok["status"] == "ok" and ok["diverged_step"] is None and ok["train_loss"] is not None
    assert boom["status"] == "diverged" and 0 < boom["diverged_step"] <= 40
    assert boom["train_loss"] is None and boom["test_loss"] is None and boom["gen_gap"] is None
    curve = run_query(results, f"SELECT step, train_loss FROM curves WHERE run_id = '{boom['run_id']}' "
                               "ORDER BY step").to_pylist()
    assert all((p["train_loss"] is None) == (p["step"] >= boom["diverged_step"]) for p in curve)
    assert curve[0]["train_loss"] is not None


def test_ray_and_local_backends_write_identical_tables(tmp_path, ray_session):
    spec = parse_spec(SMALL_SPEC)
    local, remote = tmp_path / "local", tmp_path / "ray"
    launch(prepare(spec, local), local, LocalBackend())
    summary = launch(prepare(spec, remote), remote, RayBackend())
    assert summary.total("n_ok") == 8
    volatile = ["wall_seconds", "finished_at", "code_version"]
    for table, key in (("runs", "run_id"), ("curves", "run_id, step")):
        a = run_query(local, f"SELECT * FROM {table} ORDER BY {key}").drop_columns(volatile if table == "runs" else [])
        b = run_query(remote, f"SELECT * FROM {table} ORDER BY {key}").drop_columns(volatile if table == "runs" else [])
        assert a.num_rows == b.num_rows > 0
        for name in a.column_names:
            x, y = a.column(name), b.column(name)
            if pa.types.is_floating(x.type):
                assert pc.all(pc.less_equal(pc.abs(pc.subtract(x, y)),
                                            pc.add(pc.multiply(pc.abs(x), 1e-6), 1e-9))).as_py() in (True, None), name
            else:
                assert x.to_pylist() == y.to_pylist(), name

"""``theoryscope analyze``: the rankings tables equal ``core.measures.ranking`` applied to
the runs' own values, the command prints them, a rerun replaces them, launch keeps them,
and every bad input is one line, exit 1, nothing written."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from helpers import invoke, one_line_error
from theoryscope.core.errors import TheoryscopeError
from theoryscope.core.measures import ranking
from theoryscope.storage.parquet import scan
from theoryscope.sweeps.analyze import analyze
from theoryscope.sweeps.dispatch import LocalBackend
from theoryscope.sweeps.launch import launch, prepare
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.measures.complexity import MEASURE_NAMES, PER_SWEEP
from theoryscope.sweeps.tables import run_query

SPEC = """
name = "{name}"
[data]
kind = "{kind}"
n_train = 40
n_test = 40
input_dim = 5
n_classes = 3
class_sep = 5.0
[model]
width = 6
[train]
steps = 60
log_every = 20
{train}
[grid]
{grid}
[measure]
{measure}
"""
GRID = 'depth = [1, 2]\n"train.lr" = [0.1, 0.4]\nseed = [0, 1]'
MEASURES = ('complexity = { measures = ["log_prod_spec", "path_norm", "margin", "inverse_margin", "sharpness"], '
            "perturbation = { sharpness_steps = 3 } }\ncushions = { compression_k = 0 }")


def launched(results, name, kind="gaussian-mixture", grid=GRID, measure=MEASURES, train=""):
    spec = parse_spec(SPEC.format(name=name, kind=kind, grid=grid, measure=measure, train=train))
    launch(prepare(spec, results), results, LocalBackend())
    return spec


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze") / "results"
    launched(root, "ranked")
    launched(root, "regression", kind="teacher-student", measure="complexity = { measures = [\"path_norm\"] }")
    launched(root, "plain", measure="")
    launched(root, "seeds-only", grid="seed = [0, 1, 2]")
    launched(root, "unfit", train="stop_train_loss = 1e-9")
    return root


def rows(results, sql):
    return run_query(results, sql).to_pylist()


def independent(results, sweep, target="gen_gap"):
    """The runs' values read straight from the tables: target, axes and measures per run."""
    runs = rows(results, f"SELECT run_id, {target} AS target, depth, lr FROM runs WHERE sweep = '{sweep}' "
                         "AND status = 'ok' ORDER BY run_id")
    measured = rows(results, f"SELECT c.run_id, c.measure, c.value FROM complexity c JOIN runs r USING (sweep, run_id) "
                             f"WHERE c.sweep = '{sweep}' AND c.step = r.steps")
    values: dict[str, dict[str, float]] = {}
    for r in measured:
        if r["value"] is not None:
            values.setdefault(r["measure"], {})[r["run_id"]] = r["value"]
    return runs, values


def close(a, b):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@pytest.fixture(scope="module")
def analyzed(results):
    return analyze(results, "ranked")


def test_the_rankings_are_the_ranking_functions_of_the_runs_values(results, analyzed):
    runs, values = independent(results, "ranked")
    got = {r["measure"]: r for r in rows(results, "SELECT * FROM rankings WHERE sweep = 'ranked' AND "
                                                  "target = 'gen_gap'")}
    assert set(got) == {"log_prod_spec", "path_norm", "margin", "inverse_margin", "sharpness", "compression_q",
                        "compression_bound"}
    for measure, row in got.items():
        measure_values = values.get(measure, {})
        mine = [r for r in runs if r["run_id"] in measure_values]
        mu = np.array([measure_values[r["run_id"]] for r in mine])
        g = np.array([r["target"] for r in mine])
        axes = {"depth": [r["depth"] for r in mine], "lr": [r["lr"] for r in mine]}
        signs = ranking.sign_errors(mu, g, axes)
        expected = {"n_runs": len(mine), "kendall_tau": ranking.kendall_tau(mu, g),
                    "granulated_psi": ranking.granulated(mu, g, axes)[0],
                    "cmi": ranking.conditional_mutual_information(mu, g, axes),
                    "environments": len(signs.per_environment), "sign_error_mean": signs.mean,
                    "sign_error_max": signs.worst}
        expected["tau_low"], expected["tau_high"] = ranking.bootstrap_tau(mu, g)
        for key, value in expected.items():
            assert close(row[key], None if isinstance(value, float) and math.isnan(value) else value), (measure, key)
        per_axis = {r["axis"]: r for r in rows(results, f"SELECT * FROM rankings_axes WHERE sweep = 'ranked' AND "
                                                        f"target = 'gen_gap' AND measure = '{measure}'")}
        for a in ranking.granulated(mu, g, axes)[1]:
            assert close(per_axis[a.axis]["tau"], None if math.isnan(a.tau) else a.tau)
            assert per_axis[a.axis]["n_groups"] == a.n_groups
        environments = rows(results, f"SELECT * FROM rankings_environments WHERE sweep = 'ranked' AND target = "
                                     f"'gen_gap' AND measure = '{measure}' ORDER BY point_a, point_b")
        expected_envs = sorted((json.dumps(dict(zip(axes, a))), json.dumps(dict(zip(axes, b))), axis, e)
                               for axis, a, b, e in signs.per_environment)
        assert [(r["point_a"], r["point_b"], r["axis"], r["sign_error"]) for r in environments] == expected_envs
    assert analyzed.rankings.num_rows == 7 and sorted(analyzed.runs.axes) == ["depth", "lr"]


def test_four_grid_points_give_four_environments_and_a_group_per_axis_value(results, analyzed):
    # depth x lr = 4 grid points of 2 seeds each: 4 pairs differ in one field; per axis,
    # 2 groups (one per value of the other axis) of 4 runs each.
    row = rows(results, "SELECT * FROM rankings WHERE sweep = 'ranked' AND measure = 'log_prod_spec'")[0]
    assert row["n_runs"] == 8 and row["environments"] == 4
    assert rows(results, "SELECT axis, n_groups FROM rankings_axes WHERE sweep = 'ranked' AND measure = "
                         "'log_prod_spec' ORDER BY axis") == [{"axis": "depth", "n_groups": 2},
                                                             {"axis": "lr", "n_groups": 2}]


def test_the_command_prints_the_ranking_and_a_rerun_replaces_it(results, analyzed):
    done = invoke("analyze", "ranked", "--results", results, "--target", "test_error", "--measures",
                  "path_norm,compression_bound")
    assert done.exit_code == 0, done.output
    assert "path_norm" in done.output and "compression_bound" in done.output and "log_prod_spec" not in done.output
    assert "8 runs" in done.output
    got = rows(results, "SELECT target, count(*) AS n FROM rankings WHERE sweep = 'ranked' GROUP BY target "
                        "ORDER BY target")
    assert got == [{"target": "gen_gap", "n": 7}, {"target": "test_error", "n": 2}]
    again = invoke("analyze", "ranked", "--results", results, "--target", "test_error", "--measures", "margin")
    assert again.exit_code == 0, again.output
    assert rows(results, "SELECT measure FROM rankings WHERE sweep = 'ranked' AND target = 'test_error'") == [
        {"measure": "margin"}]
    for table in PER_SWEEP:  # one file per target, replaced in place
        assert sorted(p.name for p in scan(results, table, "ranked").complete) == ["gen_gap.parquet",
                                                                                  "test_error.parquet"]


def test_launching_again_keeps_the_rankings(results, analyzed):
    launched(results, "ranked")
    for table in PER_SWEEP:
        assert "gen_gap.parquet" in [p.name for p in scan(results, table, "ranked").complete]


def test_runs_that_did_not_reach_the_stop_loss_are_left_out_unless_asked(results):
    result = invoke("analyze", "unfit", "--results", results)
    assert "0 finished run(s) to rank" in one_line_error(result) and "8 more left out" in result.stderr
    assert not scan(results, "rankings", "unfit").complete
    done = analyze(results, "unfit", include_unfit=True)
    assert done.rankings.column("n_runs").to_pylist()[0] == 8


@pytest.mark.parametrize("sweep, options, message", [
    ("ranked", ["--measures", "log_prod_spec,spectral"], "--measures: unknown measure 'spectral'; allowed: "),
    ("ranked", ["--target", "train_loss"], "--target: unknown target 'train_loss'; allowed: "),
    ("ranked", ["--measures", "dist_fro"], "measure 'dist_fro' has no rows in sweep 'ranked'"),
    ("regression", ["--target", "test_error"], "target 'test_error' does not exist in sweep 'regression'"),
    ("plain", [], "sweep 'plain' has no complexity rows"),
    ("seeds-only", [], "sweep 'seeds-only' has no swept field to rank across"),
    ("missing", [], "no sweep named 'missing'"),
])
def test_bad_input_is_one_line_and_writes_nothing(results, sweep, options, message):
    before = {table: scan(results, table).complete for table in PER_SWEEP}
    line = one_line_error(invoke("analyze", sweep, "--results", results, *options))
    assert message in line
    assert {table: scan(results, table).complete for table in PER_SWEEP} == before


def test_fewer_than_two_finished_runs_is_refused(tmp_path, fail_families):
    fail_families(2, "boom")
    launched(tmp_path, "one", grid="depth = [1, 2]")
    with pytest.raises(TheoryscopeError, match="sweep 'one' has 1 finished run"):
        analyze(tmp_path, "one")
    assert not scan(tmp_path, "rankings").complete


def test_every_measure_of_the_list_is_rankable():
    from theoryscope.sweeps.analyze import RANKABLE

    assert RANKABLE[:len(MEASURE_NAMES)] == MEASURE_NAMES and RANKABLE[-2:] == ("compression_q", "compression_bound")


def test_the_figures_draw_the_rankings_once_analyzed(results, analyzed):
    from theoryscope.storage.query import sql_string
    from theoryscope.sweeps.panels import pyplot
    from theoryscope.sweeps.measures.complexity import MEASURE

    for figure in MEASURE.figures:
        drawn = figure.draw(rows(results, figure.sql.format(sweep=sql_string("ranked"))), "depth")
        assert drawn is not None and drawn.axes, figure.name
        pyplot().close(drawn)
        assert figure.draw(rows(results, figure.sql.format(sweep=sql_string("regression"))), "depth") is None

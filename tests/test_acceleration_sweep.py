"""Experiment "acceleration" end to end: the lr search, steps to the target, the
acceleration table and its ratio to depth 1."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import ACCELERATION_SPEC as SPEC
from theoryscope.core.data import make_dataset
from theoryscope.core.errors import SpecError
from theoryscope.core.linear_start import initial_factors
from theoryscope.core.measures.acceleration import lp_loss, lp_optimum, product
from theoryscope.sweeps.dispatch import LocalBackend
from theoryscope.sweeps.launch import launch, prepare
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.plan import plan_sweep
from theoryscope.sweeps.tables import run_query


def run(results, name="acc", overparam="full", steps=10000):
    spec = parse_spec(SPEC.format(name=name, overparam=overparam, steps=steps))
    summary = launch(prepare(spec, results), results, LocalBackend())
    assert summary.total("n_failed") == 0
    return spec


@pytest.fixture(scope="module")
def accelerated(tmp_path_factory):
    results = tmp_path_factory.mktemp("acceleration") / "results"
    return results, run(results)


def table(results, sweep="acc"):
    return run_query(results, f"SELECT * FROM acceleration WHERE sweep = '{sweep}' ORDER BY p, depth").to_pylist()


@pytest.mark.slow  # the accelerated fixture: depth 1 needs over 8000 steps at p = 4
def test_depth_two_speeds_up_p4_more_than_p2(accelerated):
    """The paper's finding on an ill-conditioned problem, with the lr searched per run."""
    rows = {(r["p"], r["depth"]): r for r in table(accelerated[0])}
    assert all(r["reached"] for r in rows.values())  # every run, depth 1 included, got there
    assert rows[2, 1]["ratio_vs_depth1"] == 1.0
    assert rows[4, 2]["ratio_vs_depth1"] > 1.5 * rows[2, 2]["ratio_vs_depth1"]
    assert rows[4, 2]["ratio_vs_depth1"] > 2.0


@pytest.mark.slow  # the accelerated fixture
def test_steps_to_target_and_the_optimum_follow_their_definitions(accelerated):
    results, spec = accelerated
    runs = {r.run_id: r for r in plan_sweep(spec).runs}
    for row in table(results):
        run = runs[row["run_id"]]
        data = make_dataset(run.data)
        _, optimum = lp_optimum(data.x_train, data.y_train.view(-1), run.data.p)
        assert row["optimum_loss"] == pytest.approx(optimum, rel=1e-12)
        w0 = product(initial_factors(run)).view(-1)  # every depth starts at the same w0
        assert row["initial_loss"] == pytest.approx(float(lp_loss(w0, data.x_train, data.y_train.view(-1), run.data.p)),
                                                    rel=1e-12)
        assert row["target_loss"] == pytest.approx(optimum + 1e-5 * (row["initial_loss"] - optimum), rel=1e-12)
        curve = run_query(results, f"SELECT step, train_loss FROM curves WHERE sweep = 'acc' AND "
                                   f"run_id = '{row['run_id']}' ORDER BY step").to_pylist()
        for point in curve:  # no logged point before the first step under the target is under it
            if point["step"] < row["steps_to_target"]:
                assert point["train_loss"] > row["target_loss"]
        steps = json.loads(row["lr_steps"])
        assert len(steps) == 8 and min(s for s in steps.values() if s is not None) == row["steps_to_target"]


@pytest.mark.slow  # the accelerated fixture
def test_runs_report_the_chosen_rate_and_one_row_each(accelerated):
    results, _ = accelerated
    runs = run_query(results, "SELECT r.run_id, r.depth, r.p, r.lr, r.lr_grid, r.status, a.lr AS best "
                              "FROM runs r JOIN acceleration a USING (sweep, run_id) WHERE sweep = 'acc'").to_pylist()
    assert len(runs) == 4
    for r in runs:
        assert r["status"] == "ok" and r["lr"] is None and r["lr_grid"] == "8" and r["best"] > 0


@pytest.mark.slow
def test_a_budget_too_short_for_depth_one_gives_a_lower_bound(tmp_path):
    results = tmp_path / "results"
    run(results, name="short", steps=3000)
    rows = {(r["p"], r["depth"]): r for r in table(results, "short")}
    slow, fast = rows[4, 1], rows[4, 2]
    assert not slow["reached"] and slow["steps_to_target"] is None
    assert fast["reached"] and fast["ratio_vs_depth1"] is None
    assert fast["ratio_at_least"] == pytest.approx(3000 / fast["steps_to_target"])


def test_acceleration_needs_a_deep_linear_model():
    text = SPEC.format(name="bad", overparam="full", steps=10).replace('kind = "linear"', 'kind = "mlp"')
    with pytest.raises(SpecError, match='model.kind: expected "linear" for experiment = "acceleration", got \'mlp\''):
        parse_spec(text)


def test_lp_data_needs_the_acceleration_experiment():
    text = SPEC.format(name="bad", overparam="full", steps=10).replace('experiment = "acceleration"\n', "")
    with pytest.raises(SpecError, match='data.kind: expected a kind other than "lp-regression"'):
        parse_spec(text)


def test_the_lr_grid_takes_a_count_or_a_list():
    text = SPEC.format(name="g", overparam="full", steps=10)
    assert parse_spec(text.replace("lr_grid = 8", "lr_grid = [0.1, 0.2]")).train.learning_rates() == (0.1, 0.2)
    rates = parse_spec(text).train.learning_rates()
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(4.0) and len(rates) == 8
    with pytest.raises(SpecError, match="train.lr_grid: expected an integer or a list"):
        parse_spec(text.replace("lr_grid = 8", 'lr_grid = "many"'))


def test_family_of_rates_equals_each_rate_alone(tmp_path):
    """A rate trained as one member of the family computes what it computes alone."""
    results = tmp_path / "results"
    spec = parse_spec(SPEC.format(name="all", overparam="scalar", steps=300).replace(
        "lr_grid = 8", "lr_grid = [0.01, 0.05]").replace("target = 1e-5", "target = 0.05"))
    launch(prepare(spec, results), results, LocalBackend())
    alone = parse_spec(SPEC.format(name="one", overparam="scalar", steps=300).replace(
        "lr_grid = 8", "lr_grid = [0.05]").replace("target = 1e-5", "target = 0.05"))
    launch(prepare(alone, results), results, LocalBackend())
    both = {(r["p"], r["depth"]): r for r in table(results, "all")}
    one = {(r["p"], r["depth"]): r for r in table(results, "one")}
    for key, row in one.items():
        steps = json.loads(both[key]["lr_steps"])["0.05"]
        assert steps is not None and steps == row["steps_to_target"]
    assert both[2, 2]["overparam"] == "scalar" and both[2, 2]["hidden_width"] == 1


def write_table(tmp_path, rows=120, kind="csv"):
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4)) * np.array([1.0, 0.5, 0.2, 0.1])
    table = pa.table({"a": x[:, 0], "b": x[:, 1], "sensor": ["s"] * rows, "c": x[:, 2], "d": x[:, 3],
                      "conc": x @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.05 * rng.normal(size=rows)})
    path = tmp_path / f"gas.{kind}"
    (pcsv.write_csv if kind == "csv" else pq.write_table)(table, str(path))
    return path


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_lp_regression_reads_a_table_file(tmp_path, kind):
    from theoryscope.core.data import make_dataset
    from theoryscope.core.datasets.table import input_width

    path = write_table(tmp_path, kind=kind)
    text = SPEC.format(name="tab", overparam="full", steps=200).replace(
        'kind = "lp-regression"', f'kind = "lp-regression"\npath = "{path}"\ntarget_column = "conc"').replace(
        "n_train = 128", "n_train = 80").replace("n_test = 64", "n_test = 40")
    spec = parse_spec(text)
    run_spec = spec.base_run()
    assert input_width(run_spec.data) == 4  # the numeric columns besides the target; "sensor" is text
    data = make_dataset(run_spec.data)
    assert data.x_train.shape == (80, 4) and data.x_test.shape == (40, 4)
    every = torch.cat([data.x_train, data.x_test])
    assert torch.allclose(every.mean(0), torch.zeros(4, dtype=every.dtype), atol=1e-12)  # standardised
    results = tmp_path / "results"
    launch(prepare(spec, results), results, LocalBackend())
    assert len(table(results, "tab")) == 4


def test_table_file_errors_name_the_key(tmp_path):
    path = write_table(tmp_path, rows=50)
    base = SPEC.format(name="tab", overparam="full", steps=10)

    def plan_with(extra, sizes=("n_train = 128", "n_train = 20")):
        text = base.replace('kind = "lp-regression"', f'kind = "lp-regression"\n{extra}').replace(*sizes)
        return plan_sweep(parse_spec(text))

    with pytest.raises(SpecError, match="data.target_column: 'nope' is not a column of .*; its columns: a, b, sensor"):
        plan_with(f'path = "{path}"\ntarget_column = "nope"')
    with pytest.raises(SpecError, match="data.target_column: 'sensor' in .* is not numeric"):
        plan_with(f'path = "{path}"\ntarget_column = "sensor"')
    with pytest.raises(SpecError, match="data.n_train: n_train \\+ n_test = 192 is more than the 50 complete rows"):
        plan_with(f'path = "{path}"\ntarget_column = "conc"', ("n_train = 128", "n_train = 128"))
    with pytest.raises(SpecError, match="data.path: .* is not a file"):
        plan_with(f'path = "{tmp_path / "missing.csv"}"\ntarget_column = "conc"')
    with pytest.raises(SpecError, match="data.target_column: expected the name of the target column"):
        plan_with(f'path = "{path}"')


def test_adam_runs_are_compared_with_adam_at_depth_one(tmp_path):
    results = tmp_path / "results"
    text = SPEC.format(name="adam", overparam="full", steps=400).replace('optimizer = "gd"', 'optimizer = "adam"')
    launch(prepare(parse_spec(text.replace("target = 1e-5", "target = 1e-2")), results), results, LocalBackend())
    rows = table(results, "adam")
    assert {r["optimizer"] for r in rows} == {"adam"} and len(rows) == 4
    for r in rows:
        assert r["reached"] and r["depth1_steps"] is not None
        assert r["ratio_vs_depth1"] == pytest.approx(r["depth1_steps"] / r["steps_to_target"])


def test_measures_are_refused_outside_experiment_train():
    text = SPEC.format(name="m", overparam="full", steps=10) + "\n[measure]\ncushions = true\n"
    with pytest.raises(SpecError, match='measure.cushions: measures apply to experiment = "train"'):
        parse_spec(text)


# AdaGrad and GD at depths 1 and 2 on l_4 regression, each rate refined to 5 %.
BASELINES = SPEC.format(name="base", overparam="full", steps=150).replace(
    "target = 1e-5", "target = 1e-2\nlr_tolerance = 0.05").replace('"data.p" = [2, 4]', '"data.p" = [4]') + \
    '"train.optimizer" = ["gd", "adagrad"]\n'


@pytest.fixture(scope="module")
def baselines(tmp_path_factory):
    results = tmp_path_factory.mktemp("baselines") / "results"
    summary = launch(prepare(parse_spec(BASELINES), results), results, LocalBackend())
    assert summary.total("n_failed") == 0
    return results


def test_every_run_is_compared_with_the_fastest_depth_one_run_of_its_problem(baselines):
    """Arora et al.'s Section 8 baselines: ratio_vs_best_depth1 is the fastest depth-1 run
    of the same data, seed, init scale and target, any optimizer, over this run's steps."""
    rows = table(baselines, "base")
    assert len(rows) == 4 and len({r["problem_key"] for r in rows}) == 1 and len({r["baseline_key"] for r in rows}) == 2
    depth1 = {r["optimizer"]: r["steps_to_target"] for r in rows if r["depth"] == 1}
    fastest = min(depth1, key=lambda o: (depth1[o], o))
    for r in rows:
        assert r["reached"] and r["best_depth1_steps"] == depth1[fastest] and r["best_depth1_optimizer"] == fastest
        assert r["ratio_vs_best_depth1"] == pytest.approx(depth1[fastest] / r["steps_to_target"])
        assert r["ratio_vs_depth1"] == pytest.approx(depth1[r["optimizer"]] / r["steps_to_target"])


def test_refined_rates_are_recorded_beside_the_grid(baselines):
    """lr_refined holds every rate refinement tried (steps, or null past its round's
    horizon); the reported rate is the fastest of grid and refinement, resolved to 5 %."""
    for r in table(baselines, "base"):
        grid, refined = json.loads(r["lr_steps"]), json.loads(r["lr_refined"])
        assert r["lr_rounds"] == 2 and r["lrs_tried"] == len(grid) + len(refined) and len(grid) == 8
        assert r["lr_resolution"] <= 1.05
        tried = {float(k): v for k, v in {**grid, **refined}.items() if v is not None}
        assert r["steps_to_target"] == min(tried.values())
        assert tried[min(tried, key=lambda k: abs(math.log(k / r["lr"])))] == r["steps_to_target"]
    runs = run_query(baselines, "SELECT optimizer, lr_tolerance, rho, adagrad_eps, adadelta_eps, eps FROM runs "
                                "WHERE sweep = 'base'").to_pylist()
    for r in runs:  # each optimizer's settings apply only to it
        assert r["lr_tolerance"] == 0.05 and r["rho"] is None and r["adadelta_eps"] is None and r["eps"] is None
        assert r["adagrad_eps"] == (1e-10 if r["optimizer"] == "adagrad" else None)


def test_new_training_fields_keep_earlier_run_ids():
    """At their defaults the new fields are left out of the id; an optimizer's settings
    do not enter another optimizer's id."""
    text = SPEC.format(name="ids", overparam="full", steps=10)
    plain = [r.run_id for r in plan_sweep(parse_spec(text)).runs]
    explicit = text.replace("target = 1e-5", "target = 1e-5\nlr_tolerance = 0.0\nrho = 0.9\nadagrad_eps = 1e-10")
    assert [r.run_id for r in plan_sweep(parse_spec(explicit)).runs] == plain
    assert [r.run_id for r in plan_sweep(parse_spec(text.replace("target = 1e-5", "target = 1e-5\nrho = 0.5"))).runs] \
        == plain  # rho is AdaDelta's
    refined = text.replace("target = 1e-5", "target = 1e-5\nlr_tolerance = 0.02")
    assert not set(r.run_id for r in plan_sweep(parse_spec(refined)).runs) & set(plain)


@pytest.mark.parametrize("setting, message", [
    ("lr_tolerance = 2.0", r"train.lr_tolerance: expected 0 \(no refinement\) or a number in \[0.001, 1\], got 2.0"),
    ('lr_grid = [0.1]\nlr_tolerance = 0.02', r"train.lr_tolerance: expected 0 unless lr_grid has at least 2 rates"),
    ('optimizer = "adadelta"\nrho = 1.5', r"train.rho: expected a number in \[0, 1\), got 1.5"),
    ('optimizer = "sgd"', r'train.optimizer: expected "gd" \| "adam" \| "adagrad" \| "adadelta" for experiment'),
])
def test_refinement_and_baseline_settings_are_checked(setting, message):
    text = SPEC.format(name="bad", overparam="full", steps=10).replace("lr_grid = 8\n", "").replace(
        'optimizer = "gd"\n', "")
    with pytest.raises(SpecError, match=message):
        parse_spec(text.replace("target = 1e-5", f"target = 1e-5\n{setting}"))

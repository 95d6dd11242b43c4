"""The ``complexity`` measure inside sweeps: one long row per run, step and measure with
the options used; a family's rows equal its members measured alone (by the core
functions on the stored nets, and by a sweep of families of one); the compression
bound joined from ``bounds``; the options check themselves."""

from __future__ import annotations

import json
import math

import pytest
import torch

from theoryscope import weights
from theoryscope.core import models
from theoryscope.core.config import DataKind
from theoryscope.core.data import make_dataset
from theoryscope.core.errors import SpecError
from theoryscope.core.measures import complexity as jiang
from theoryscope.core.train import StackedData
from theoryscope.sweeps.dispatch import LocalBackend
from theoryscope.sweeps.launch import launch, prepare
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.measures.complexity import CURVATURE, MARGINS, MEASURE_NAMES, NORMS, PACBAYES, ComplexitySpec
from theoryscope.sweeps.tables import run_query

SPEC = """
name = "{name}"
[data]
kind = "{kind}"
n_train = 48
n_test = 32
input_dim = 5
n_classes = 3
class_sep = 4.0
[model]
width = 7
bias = true
[train]
lr = 0.2
steps = 30
log_every = 10
dtype = "float64"
[grid]
depth = [2, 3]
seed = [0, 1, 2]
[measure]
complexity = {{ at = [10], perturbation = {{ draws = 4, bisection_steps = 8, hessian_iterations = 30 }} }}
{extra}
[store]
weights = true
[resources]
max_family_size = {size}
"""


def launched(results, name, size, kind="gaussian-mixture", extra=""):
    spec = parse_spec(SPEC.format(name=name, kind=kind, extra=extra, size=size))
    summary = launch(prepare(spec, results), results, LocalBackend())
    assert summary.total("n_ok") == 6
    return spec


def rows(results, sql):
    return run_query(results, sql).to_pylist()


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    results = tmp_path_factory.mktemp("complexity") / "results"
    launched(results, "stacked", 512, extra="cushions = { compression_k = 0 }")
    launched(results, "alone", 1)
    launched(results, "regression", 512, kind="teacher-student")
    return results


def values(results, sweep):
    return {(r["run_id"], r["step"], r["measure"]): r["value"] for r in rows(
        results, f"SELECT * FROM complexity WHERE sweep = '{sweep}' AND settings IS NOT NULL")}


def close(a, b, rel=1e-6):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


def test_the_long_table_has_a_row_per_run_step_and_measure_with_its_settings(measured):
    got = rows(measured, "SELECT sweep, count(*) AS n, count(DISTINCT run_id) AS runs, "
                         "list(DISTINCT step ORDER BY step) AS steps, count(DISTINCT measure) AS measures, "
                         "count(DISTINCT settings) AS settings "
                         "FROM complexity WHERE settings IS NOT NULL GROUP BY sweep ORDER BY sweep")
    regression = len(MEASURE_NAMES) - len(MARGINS)
    assert got == [{"sweep": "alone", "n": 6 * 2 * len(MEASURE_NAMES), "runs": 6, "steps": [10, 30],
                    "measures": len(MEASURE_NAMES), "settings": 1},
                   {"sweep": "regression", "n": 6 * 2 * regression, "runs": 6, "steps": [10, 30],
                    "measures": regression, "settings": 1},
                   {"sweep": "stacked", "n": 6 * 2 * len(MEASURE_NAMES), "runs": 6, "steps": [10, 30],
                    "measures": len(MEASURE_NAMES), "settings": 1}]
    assert not rows(measured, "SELECT * FROM complexity WHERE sweep = 'regression' AND measure IN "
                              f"({', '.join(repr(m) for m in MARGINS)})")  # margins: no rows for regression
    settings = json.loads(rows(measured, "SELECT any_value(settings) AS s FROM complexity "
                                         "WHERE sweep = 'stacked'")[0]["s"])
    assert settings["at"] == [10] and settings["measures"] == list(MEASURE_NAMES)
    assert settings["margin_percentile"] == 10.0
    assert settings["perturbation"] == {"target": 0.1, "tolerance": 0.01, "draws": 4, "bisection_steps": 8,
                                        "sigma_range": [1e-5, 10.0], "magnitude_eps": 1e-3, "sharpness_alpha": 0.05,
                                        "sharpness_steps": 10, "hessian_iterations": 30, "seed": 0}
    regression = rows(measured, "SELECT any_value(settings) AS s FROM complexity WHERE sweep = 'regression'")[0]["s"]
    assert json.loads(regression)["measures"] == [n for n in MEASURE_NAMES if n not in MARGINS]


def test_the_names_are_those_the_core_functions_return():
    f, n = 2, 12
    params = models.init_family([parse_spec('name = "x"').base_run().model] * f, [0, 1], [5, 7, 3], torch.float64,
                                torch.device("cpu"))
    x = torch.randn(f, n, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (f, n))
    data = StackedData(x, y, x, y, True)
    g = torch.Generator().manual_seed(0)
    norms = jiang.norm_measures(params, params, True)
    assert set(norms) == set(NORMS)
    assert set(jiang.margin_measures(params, x, y, True, norms=norms)) == set(MARGINS)
    assert set(jiang.pacbayes(params, params, data, True, generator=g, draws=2, bisection_steps=2)) == set(PACBAYES)
    assert set(CURVATURE) == {"sharpness", "hessian_top"} and len(set(MEASURE_NAMES)) == len(MEASURE_NAMES)


def test_a_family_measures_what_its_members_measured_alone(measured):
    stacked, alone = values(measured, "stacked"), values(measured, "alone")
    assert stacked.keys() == alone.keys()
    differ = [(key, stacked[key], alone[key]) for key in stacked if not close(stacked[key], alone[key])]
    assert not differ


def test_rows_equal_the_core_functions_on_each_stored_net_and_its_rebuilt_init(measured):
    got = values(measured, "stacked")
    for row in rows(measured, "SELECT run_id FROM runs WHERE sweep = 'stacked'"):
        run_id = row["run_id"]
        run = weights.run_spec(measured, "stacked", run_id)
        net, start = weights.load(measured, "stacked", run_id), weights.init(measured, "stacked", run_id)
        one = lambda p: models.Params([w[None] for w in p.weights], [b[None] for b in p.biases])  # noqa: E731
        norms = jiang.norm_measures(one(net), one(start), True)
        data = make_dataset(run.data)
        margins = jiang.margin_measures(one(net), data.x_train[None], data.y_train[None], True, norms=norms)
        for name, value in (norms | margins).items():
            expected = float(value[0])
            expected = None if not math.isfinite(expected) else expected
            assert close(got[run_id, 30, name], expected, rel=1e-9), (run_id, name)
    assert run.data.kind is DataKind.GAUSSIAN_MIXTURE


def test_the_view_adds_the_compression_bound_of_bounds(measured):
    joined = rows(measured, "SELECT c.measure, c.value, b.effective_params, b.bound_formula FROM complexity c "
                            "JOIN bounds b USING (sweep, run_id, step) WHERE c.sweep = 'stacked' AND c.measure IN "
                            "('compression_q', 'compression_bound')")
    assert len(joined) == 6 * 2 * 2  # every run, both measured steps, q and the bound
    for r in joined:
        expected = r["effective_params"] if r["measure"] == "compression_q" else r["bound_formula"]
        assert r["value"] == expected
    # only where cushions ran
    assert not rows(measured, "SELECT * FROM complexity WHERE sweep <> 'stacked' AND settings IS NULL")


def test_flatness_measures_are_sane_on_trained_nets(measured):
    got = values(measured, "stacked")
    for (run_id, step, name), value in got.items():
        if name in ("pacbayes_sigma", "pacbayes_mag_sigma"):
            assert 1e-5 <= value <= 10
        if name in ("sharpness", "params", "param_norm", "path_norm", "dist_fro", "hessian_top"):
            assert value >= 0, (name, value)


def test_a_subset_of_measures_writes_only_those(tmp_path):
    spec = parse_spec(SPEC.format(name="subset", kind="gaussian-mixture", extra="", size=512).replace(
        "complexity = {", 'complexity = { measures = ["path_norm", "sharpness"],'))
    launch(prepare(spec, tmp_path), tmp_path, LocalBackend())
    assert rows(tmp_path, "SELECT list(DISTINCT measure ORDER BY measure) AS m FROM complexity") == [
        {"m": ["path_norm", "sharpness"]}]


@pytest.mark.parametrize("options, message", [
    ('{ measures = ["path_norm", "spectral"] }',
     "measure.complexity.measures[1]: expected one of log_prod_spec, log_prod_fro"),
    ('{ measures = ["path_norm", "path_norm"] }', "measure.complexity.measures: expected a list of distinct names"),
    ("{ at = [-1] }", "measure.complexity.at: expected a list of integers >= 0"),
    ("{ at = [100] }", "measure.complexity.at: step 100 is past the end of training (train.steps = 30)"),
    ("{ margin_percentile = 0 }", "measure.complexity.margin_percentile: expected a number in (0, 100)"),
    ("{ perturbation = false }", "measure.complexity.perturbation: expected a table of options or true"),
    ("{ perturbation = { draws = 0 } }", "measure.complexity.perturbation.draws: expected an integer >= 1"),
    ("{ perturbation = { sigma_range = [1.0, 0.1] } }",
     "measure.complexity.perturbation.sigma_range: expected [low, high] with 0 < low < high"),
    ("{ perturbation = { tolerance = 0.2 } }",
     "measure.complexity.perturbation.tolerance: expected a number >= 0 and below target"),
    ("{ perturbation = { noise = 1 } }", "measure.complexity.perturbation.noise: unknown key"),
    ("{ steps = [1] }", "measure.complexity.steps: unknown key"),
])
def test_bad_options_are_one_line_naming_the_key(options, message):
    text = SPEC.format(name="bad", kind="gaussian-mixture", extra="", size=1)
    text = text.replace(text[text.index("complexity = {"):text.index("\n[store]")], f"complexity = {options}\n")
    with pytest.raises(SpecError) as caught:
        parse_spec(text)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_margin_measures_by_name_need_classification():
    text = SPEC.format(name="bad", kind="teacher-student", extra="", size=1).replace(
        "complexity = {", 'complexity = { measures = ["inverse_margin"],')
    with pytest.raises(SpecError, match="measure.complexity.measures: inverse_margin need class labels"):
        parse_spec(text)
    assert ComplexitySpec().selected(False) == tuple(n for n in MEASURE_NAMES if n not in MARGINS)

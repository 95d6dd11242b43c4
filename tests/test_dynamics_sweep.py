"""Experiment "linear-dynamics": the end-to-end rule beside GD, Saxe's mode timing."""

from __future__ import annotations

import pytest
import torch

from theoryscope.core.config import DataKind, DataSpec
from theoryscope.core.data import make_dataset
from theoryscope.core.errors import SpecError
from theoryscope.core.linear_start import initial_factors
from theoryscope.core.measures.acceleration import crossing_step, product
from theoryscope.sweeps.dispatch import LocalBackend
from theoryscope.sweeps.launch import launch, prepare
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.tables import run_query

SPEC = """
name = "dyn"
experiment = "linear-dynamics"
[data]
kind = "linear-modes"
n_train = 32
n_test = 16
input_dim = 6
output_dim = 3
singular_values = [4.0, 2.0, 1.0]
[model]
kind = "linear"
width = 6
init = "decoupled"
init_scale = 0.001
[train]
optimizer = "gd"
steps = 1400
log_every = 10
dtype = "float64"
[grid]
depth = [2, 3]
"train.lr" = [0.006, 0.02]
"model.imbalance" = [0.0, 0.5]
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    results = tmp_path_factory.mktemp("dynamics") / "results"
    summary = launch(prepare(parse_spec(SPEC), results), results, LocalBackend())
    assert summary.total("n_ok") == 8
    return results


@pytest.mark.slow  # the trained fixture: 1400 steps to converge
def test_saxe_mode_times_match_the_closed_form(trained):
    rows = run_query(trained, "SELECT m.*, r.lr, r.imbalance FROM modes m JOIN runs r USING (sweep, run_id) "
                              "WHERE r.depth = 2 AND r.imbalance = 0").to_pylist()
    assert len(rows) == 6  # two rates x three modes
    for row in rows:
        assert row["initial_strength"] == pytest.approx(0.001, rel=1e-9)
        assert row["half_time"] == pytest.approx(row["theory_half_time"], rel=0.03)
        assert row["final_strength"] == pytest.approx(row["singular_value"], rel=0.02)
    deeper = run_query(trained, "SELECT count(*) AS n, count(theory_half_time) AS t FROM modes m "
                                "JOIN runs r USING (sweep, run_id) WHERE r.depth = 3").to_pylist()[0]
    assert deeper == {"n": 12, "t": 0}  # the closed form is for one hidden layer


@pytest.mark.slow  # the trained fixture: 1400 steps to converge
def test_rule_deviation_grows_with_rate_and_imbalance(trained):
    rows = run_query(trained, "SELECT r.depth, r.lr, r.imbalance, max(c.rule_deviation) AS dev, "
                              "min(c.step) FILTER (WHERE c.rule_deviation = 0) AS exact_at "
                              "FROM curves c JOIN runs r USING (sweep, run_id) GROUP BY ALL").to_pylist()
    dev = {(r["depth"], r["lr"], r["imbalance"]): r["dev"] for r in rows}
    assert all(r["exact_at"] == 0 for r in rows)  # both trajectories start at the same matrix
    for depth in (2, 3):
        assert dev[depth, 0.006, 0.0] < 0.1  # balanced, small rate: the rule is what GD does, to O(lr)
        assert dev[depth, 0.02, 0.0] > 2 * dev[depth, 0.006, 0.0]  # O(lr)
        assert dev[depth, 0.006, 0.5] > 3 * dev[depth, 0.006, 0.0]


def test_decoupled_init_is_balanced_on_the_target_modes():
    run = parse_spec(SPEC).base_run()
    factors = initial_factors(run)
    u_v = product(factors)
    data = DataSpec(kind=DataKind.LINEAR_MODES, n_train=32, n_test=16, input_dim=6, output_dim=3,
                    singular_values=(4.0, 2.0, 1.0))
    assert torch.allclose(factors[1].T @ factors[1], factors[0] @ factors[0].T, atol=1e-15)
    assert torch.linalg.matrix_rank(u_v) == 3 and float(torch.linalg.matrix_norm(u_v, 2)) == pytest.approx(0.001)
    x = make_dataset(data).x_train
    assert torch.allclose(x.T @ x / 32, torch.eye(6, dtype=x.dtype), atol=1e-12)  # whitened


def test_crossing_step_interpolates():
    import numpy as np
    assert crossing_step(np.array([0.0, 1.0, 3.0]), 2.0) == pytest.approx(1.5)
    assert crossing_step(np.array([0.0, 1.0]), 2.0) is None
    assert crossing_step(np.array([5.0, 6.0]), 2.0) == 0.0


@pytest.mark.parametrize("replace, message", [
    (('experiment = "linear-dynamics"\n', ""), 'data.kind: expected a kind other than "linear-modes"'),
    (('kind = "linear"', 'kind = "mlp"'), 'model.kind: expected "linear" for experiment = "linear-dynamics"'),
    (('init = "decoupled"', 'init = "default"'), 'model.init: expected "balanced" | "identity" | "decoupled"'),
    (('kind = "linear-modes"', 'kind = "teacher-student"'), 'model.init: expected "balanced" | "identity" unless'),
    (("width = 6", "width = 2"), "model.width: expected at least 3 \\(the target's modes\\)"),
])
def test_linear_dynamics_spec_errors(replace, message):
    with pytest.raises(SpecError, match=message.replace("|", r"\|")):
        parse_spec(SPEC.replace(*replace))

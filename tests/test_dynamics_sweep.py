"""Experiment "linear-dynamics": the end-to-end rule beside GD, Saxe's mode timing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from theoryscope.core.config import DataKind, DataSpec
from theoryscope.core.data import linear_modes_target, make_dataset
from theoryscope.core.dynamics import train_linear_dynamics
from theoryscope.core.errors import SpecError
from theoryscope.core.linear_start import initial_factors
from theoryscope.core.measures.acceleration import crossing_step, product, saxe_mode_time
from theoryscope.core.measures.modes import (
    balanced_mode_time, mode_factor_strengths, mode_time, mode_time_by_quadrature,
)
from theoryscope.sweeps.dispatch import LocalBackend
from theoryscope.sweeps.experiments.linear_dynamics import modes_table
from theoryscope.sweeps.launch import launch, prepare
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.plan import plan_sweep
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
        assert row["theory_half_time"] == pytest.approx(saxe_mode_time(row["singular_value"], 0.001), rel=1e-9)
        assert row["final_strength"] == pytest.approx(row["singular_value"], rel=0.02)


@pytest.mark.slow  # the trained fixture: 1400 steps to converge
def test_mode_times_match_the_theory_at_depth_three_and_imbalanced(trained):
    rows = run_query(trained, "SELECT m.*, r.depth, r.lr, r.imbalance FROM modes m "
                              "JOIN runs r USING (sweep, run_id)").to_pylist()
    assert len(rows) == 24 and all(r["theory_half_time"] is not None for r in rows)
    measured = [r for r in rows if r["half_time"] is not None]
    assert len(measured) == 22  # mode s = 1 at depth 3 is not halfway within 1400 steps at lr 0.006
    for row in measured:  # within 0.14-2 % here, GD lagging the flow by O(lr s)
        assert row["half_time"] == pytest.approx(row["theory_half_time"], rel=0.03)
    imbalanced = {(r["depth"], r["lr"], r["mode"]): r for r in rows if r["imbalance"] == 0.5}
    balanced = {(r["depth"], r["lr"], r["mode"]): r for r in rows if r["imbalance"] == 0}
    for key, row in imbalanced.items():  # a^2 + b^2 > 2ab: imbalance speeds a mode up, and the theory sees it
        assert row["theory_half_time"] < balanced[key]["theory_half_time"]
        if row["half_time"] is not None and key[1] == 0.006:
            assert abs(row["relative_error"]) < abs(row["half_time"] / balanced[key]["theory_half_time"] - 1) / 2


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


def rk4_time_to(level, derivative, state, dt):
    """A plain fixed-step RK4 loop on ``state`` (a numpy vector) until ``level(state)`` turns
    non-negative; the last step's length found by bisection, so the time is not rounded to dt."""
    def step(x, h):
        k1 = derivative(x)
        k2 = derivative(x + h / 2 * k1)
        k3 = derivative(x + h / 2 * k2)
        k4 = derivative(x + h * k3)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    t = 0.0
    while level(step(state, dt)) < 0:
        state, t = step(state, dt), t + dt
    lo, hi = 0.0, dt
    for _ in range(60):
        lo, hi = (lo, (lo + hi) / 2) if level(step(state, (lo + hi) / 2)) >= 0 else ((lo + hi) / 2, hi)
    return t + (lo + hi) / 2


def factor_flow_time(s, strengths, dt=4e-3):
    """Saxe et al.'s factor dynamics of one decoupled mode, da_i/dt = (u / a_i)(s - u) with
    u = prod a_i, integrated by RK4 until u = s/2: no conserved quantity used."""
    def derivative(a):
        u = np.prod(a)
        return u / a * (s - u)

    return rk4_time_to(lambda a: np.prod(a) - s / 2, derivative, np.array(strengths, dtype=float), dt)


def test_depth_two_closed_forms_agree_with_saxe_and_the_quadrature():
    for s, u0 in ((4.0, 1e-3), (1.0, 0.2), (2.0, 1e-9)):
        a = math.sqrt(u0)
        assert mode_time(s, [a, a]) == pytest.approx(saxe_mode_time(s, u0), rel=1e-12)
        assert balanced_mode_time(s, u0, 2) == pytest.approx(saxe_mode_time(s, u0), rel=1e-12)
        for c in (0.5, 3.0, -0.7):  # a^2 - b^2 = u0 ((1 + c)^2 - (1 + c)^-2)
            strengths = [a * (1 + c), a / (1 + c)]
            assert mode_time_by_quadrature(s, strengths, s / 2) == pytest.approx(mode_time(s, strengths), rel=1e-11)
    assert mode_time(4.0, [0.5, 0.5], u_f=3.0) == pytest.approx(saxe_mode_time(4.0, 0.25, 3.0), rel=1e-12)


@pytest.mark.parametrize("depth, u0", [(3, 0.001), (4, 0.01), (6, 0.2)])
def test_balanced_mode_time_integrates_saxes_deep_ode(depth, u0):
    """du/dt = N u^{2 - 2/N} (s - u) (Saxe et al. 2014, deeper nets of balanced weights), by RK4."""
    s = 1.5
    oracle = rk4_time_to(lambda u: u[0] - s / 2, lambda u: depth * u ** (2 - 2 / depth) * (s - u), np.array([u0]), 4e-3)
    assert balanced_mode_time(s, u0, depth) == pytest.approx(oracle, rel=1e-8)


@pytest.mark.parametrize("strengths", [[0.3, 0.02], [0.05, 0.4], [0.3, 0.2, 0.1], [0.45, 0.3, 0.3, 0.2], [0.5]])
def test_imbalanced_mode_time_follows_the_factor_dynamics(strengths):
    assert mode_time(2.0, strengths) == pytest.approx(factor_flow_time(2.0, strengths), rel=1e-8)


def test_mode_time_edges():
    assert mode_time(1.0, [0.3, 2.0]) == 0.0  # u0 = 0.6 >= s/2: reached at the start, as crossing_step says
    assert mode_time(1.0, [0.0]) == pytest.approx(math.log(2))  # depth 1 learns from zero: u = s (1 - e^-t)
    for bad in (dict(s=1.0, strengths=[0.1, -0.1]), dict(s=1.0, strengths=[0.1, 0.1], u_f=1.0)):
        with pytest.raises(ValueError, match="need 0 < u_f < s"):
            mode_time(**bad)


def test_factor_strengths_of_the_imbalanced_decoupled_start():
    run = [r for r in plan_sweep(parse_spec(SPEC)).runs if r.model.depth == 3 and r.model.imbalance == 0.5][0]
    factors = initial_factors(run)
    _, _, v = linear_modes_target(run.data)
    strengths = mode_factor_strengths(factors, v)
    root = 0.001 ** (1 / 3)
    np.testing.assert_allclose(strengths, [[1.5 * root] * 3, [root] * 3, [root / 1.5] * 3], rtol=1e-12)


def test_modes_rows_carry_the_theory_at_every_depth_and_start():
    small = SPEC.replace("steps = 1400", "steps = 3").replace('"train.lr" = [0.006, 0.02]', '"train.lr" = [0.02]')
    for init in ("decoupled", "balanced"):
        members = plan_sweep(parse_spec(small.replace('init = "decoupled"', f'init = "{init}"'))).runs
        for depth in (2, 3):
            family = [r for r in members if r.model.depth == depth]
            rows = modes_table("dyn", family, train_linear_dynamics(family, torch.device("cpu"))).to_pylist()
            assert len(rows) == 3 * len(family)
            theory = [r["theory_half_time"] for r in rows]
            if init == "balanced":  # a random start couples the modes: no theory
                assert theory == [None] * len(rows)
                continue
            by_run = {r.run_id: r for r in family}
            for row in rows:
                model = by_run[row["run_id"]].model
                a = 0.001 ** (1 / depth)
                start = [a * (1 + model.imbalance)] + [a] * (depth - 2) + [a / (1 + model.imbalance)]
                assert row["theory_half_time"] == pytest.approx(mode_time(row["singular_value"], start), rel=1e-9)


def test_crossing_step_interpolates():
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

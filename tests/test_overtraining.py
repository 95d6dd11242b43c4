"""Advani & Saxe's linear theory against independent oracles and simulation; the
overtraining summary and view."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from theoryscope.core.measures.overtraining import (
    linear_theory_asymptote, linear_theory_test_error, linear_theory_train_error, summarize, theory_test_loss,
    variances,
)
from theoryscope.core.train import train_family
from theoryscope.sweeps.dispatch import LocalBackend
from theoryscope.sweeps.launch import launch, prepare
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.plan import plan_sweep
from theoryscope.sweeps.tables import run_query


def wishart_oracle(alpha, snr, t, init_var=0.0, n=300, draws=30, seed=0):
    """The same expectations averaged over eigenvalues of sampled X^T X (x_i ~ N(0, 1/N)):
    a Monte Carlo integration independent of the Marchenko-Pastur density."""
    rng = np.random.default_rng(seed)
    var_w, var_eps = variances(snr)
    p = int(round(alpha * n))
    test, train = [], []
    for _ in range(draws):
        x = rng.normal(0.0, 1 / math.sqrt(n), (p, n))
        lam = np.linalg.eigvalsh(x.T @ x)
        live = lam > 1e-9
        safe = np.where(live, lam, 1.0)
        decay = np.exp(-safe * t)
        test.append(np.where(live, (var_w + init_var) * decay**2 + var_eps * (1 - decay) ** 2 / safe,
                             var_w + init_var).mean() + var_eps)
        train.append((np.where(live, decay**2 * (safe * (var_w + init_var) + var_eps), 0.0).sum()
                      + max(0, p - n) * var_eps) / p)
    return float(np.mean(test)), float(np.mean(train))


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("t", [0.5, 3.0, 20.0])
def test_theory_matches_an_independent_monte_carlo(alpha, t):
    test, train = wishart_oracle(alpha, 4.0, t, init_var=0.1)
    assert linear_theory_test_error(alpha, 4.0, t, init_var=0.1) == pytest.approx(test, rel=0.015)
    assert linear_theory_train_error(alpha, 4.0, t, init_var=0.1) == pytest.approx(train, rel=0.03, abs=2e-3)


def test_start_and_asymptotes():
    for alpha in (0.5, 2.0):
        assert linear_theory_test_error(alpha, 3.0, 0.0, init_var=0.2) == pytest.approx(1.2)
        assert linear_theory_train_error(alpha, 3.0, 0.0, init_var=0.2) == pytest.approx(1.2)
    var_w, var_eps = variances(4.0)
    assert linear_theory_asymptote(2.0, 4.0) == pytest.approx(var_eps * 2.0)  # sigma_eps^2 alpha/(alpha-1)
    assert linear_theory_test_error(2.0, 4.0, 1e4) == pytest.approx(var_eps * 2.0, rel=1e-3)
    assert linear_theory_train_error(2.0, 4.0, 1e4) == pytest.approx(var_eps * 0.5, rel=1e-3)
    assert linear_theory_test_error(0.5, 4.0, 1e4) == pytest.approx(linear_theory_asymptote(0.5, 4.0), rel=1e-3)
    assert linear_theory_asymptote(1.0, 4.0) == math.inf
    late = [linear_theory_test_error(1.0, 4.0, t) for t in (1e2, 1e3, 1e4)]
    assert late[0] < late[1] < late[2] and late[2] > 10  # divergence at alpha = 1 with noise
    assert linear_theory_asymptote(1.0, math.inf) == 0.0


def test_overtraining_is_worst_at_alpha_one_and_mild_at_alpha_four():
    ts = np.geomspace(0.01, 1e3, 400)
    at_one = linear_theory_test_error(1.0, 4.0, ts)
    at_four = linear_theory_test_error(4.0, 4.0, ts)
    assert at_one[-1] > 3 * at_one.min()
    assert at_four[-1] < 1.05 * at_four.min()


def test_initial_variance_raises_the_frozen_subspace_error_for_alpha_below_one():
    alpha, v = 0.5, 0.3
    late = 1e4
    gap = linear_theory_test_error(alpha, 4.0, late, init_var=v) - linear_theory_test_error(alpha, 4.0, late)
    assert gap == pytest.approx((1 - alpha) * v, rel=1e-6)


SIM_SPEC = """
name = "sim"
[data]
kind = "linear-teacher"
input_dim = 200
n_train = {p}
n_test = 2000
label_noise = 0.5
[model]
kind = "linear"
depth = 1
init = "gaussian"
init_scale = 0.5
[train]
lr = 0.05
steps = 300
log_every = 20
dtype = "float64"
objective = "half-sum"
[grid]
"data.seed" = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
"""


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_simulated_linear_students_follow_the_theory(alpha):
    runs = plan_sweep(parse_spec(SIM_SPEC.format(p=int(alpha * 200)))).runs
    result = train_family(runs, torch.device("cpu"))
    predicted = theory_test_loss(runs[0], result.steps)
    assert predicted is not None
    simulated = result.test_loss.mean(axis=1)
    np.testing.assert_allclose(simulated, predicted, rtol=0.05)


def test_theory_covers_only_what_it_describes():
    run = plan_sweep(parse_spec(SIM_SPEC.format(p=100))).runs[0]
    steps = np.array([0, 10])
    assert theory_test_loss(run, steps) is not None
    for change in (dict(model=dataclasses.replace(run.model, depth=2, width=8)),
                   dict(train=dataclasses.replace(run.train, weight_decay=0.1)),
                   dict(data=dataclasses.replace(run.data, kind=parse_spec('name="x"').data.kind))):
        assert theory_test_loss(dataclasses.replace(run, **change), steps) is None
    # the mean objective runs 2/P times slower in the paper's time units
    mean = dataclasses.replace(run, train=dataclasses.replace(run.train, objective=parse_spec('name="x"').train.objective,
                                                              lr=run.train.lr * run.data.n_train / 2))
    np.testing.assert_allclose(theory_test_loss(mean, steps), theory_test_loss(run, steps))


def test_summarize():
    s = summarize([0, 10, 20, 30, 40], [1.0, 0.5, 0.4, 0.4, 0.7])
    assert s == {"best_step": 20, "best_test_loss": 0.4, "final_test_loss": 0.7,
                 "overtraining_gap": pytest.approx(0.3), "early_stopping_helps": True}
    flat = summarize([0, 10], [1.0, 0.5])
    assert flat["overtraining_gap"] == 0 and not flat["early_stopping_helps"]
    diverged = summarize([0, 10, 20], [1.0, 0.8, float("nan")])
    assert diverged["best_step"] == 10 and math.isnan(diverged["final_test_loss"])


def test_the_overtraining_view_agrees_with_summarize_and_carries_the_theory(tmp_path):
    results = tmp_path / "results"
    spec = parse_spec(SIM_SPEC.format(p=200).replace('"data.seed" = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]',
                                                      '"data.seed" = [0, 1]\nlabel_noise = [0.5, 1.0]'))
    launch(prepare(spec, results), results, LocalBackend())
    view = {r["run_id"]: r for r in run_query(results, "SELECT * FROM overtraining").to_pylist()}
    assert len(view) == 4
    for run_id, row in view.items():
        curve = run_query(results, f"SELECT step, test_loss, theory_test_loss FROM curves WHERE run_id = '{run_id}' "
                                   "ORDER BY step").to_pylist()
        expected = summarize([c["step"] for c in curve], [c["test_loss"] for c in curve])
        for key, value in expected.items():
            assert row[key] == pytest.approx(value), key
        assert all(c["theory_test_loss"] is not None for c in curve)
        assert row["theory_best_step"] is not None

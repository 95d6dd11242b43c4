"""Advani & Saxe's linear theory against independent oracles and simulation; the
overtraining summary and view."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from theoryscope.core.measures.overtraining import (
    linear_student_time, linear_theory_asymptote, linear_theory_optimal_stopping, linear_theory_test_error,
    linear_theory_test_error_rate, linear_theory_train_error, summarize, theory_optimal_stopping, theory_test_loss,
    theory_train_loss, variances,
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


def test_the_error_rate_is_the_derivative_of_the_closed_form():
    ts = np.array([0.05, 0.7, 3.0, 25.0])
    for alpha, v in ((0.5, 0.2), (1.0, 0.0), (3.0, 0.0)):
        h = 1e-5 * ts
        ahead, behind = linear_theory_test_error(alpha, 2.0, ts + h, v), linear_theory_test_error(alpha, 2.0, ts - h, v)
        numeric = (ahead - behind) / (2 * h)
        np.testing.assert_allclose(linear_theory_test_error_rate(alpha, 2.0, ts, v), numeric, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("alpha, snr, init_var", [(0.5, 4.0, 0.0), (1.0, 4.0, 0.0), (2.0, 1.0, 0.2), (4.0, 4.0, 0.0)])
def test_optimal_stopping_is_the_minimum_of_a_dense_scan(alpha, snr, init_var):
    """Brute force: E_g on a log grid over eight decades, then a fine grid around its best."""
    best_time, best = linear_theory_optimal_stopping(alpha, snr, init_var)
    coarse = np.geomspace(1e-3, 1e5, 1601)
    i = int(np.argmin(linear_theory_test_error(alpha, snr, coarse, init_var)))
    fine = np.linspace(coarse[i - 1], coarse[i + 1], 2001)
    scanned = linear_theory_test_error(alpha, snr, fine, init_var)
    assert best <= scanned.min() + 1e-13  # no grid point is lower than the continuous optimum
    assert best_time == pytest.approx(fine[np.argmin(scanned)], abs=2 * (fine[1] - fine[0]))
    assert best == pytest.approx(linear_theory_test_error(alpha, snr, best_time, init_var), rel=1e-15)


def marchenko_pastur_midpoints(alpha, n=200_000):
    """Plain midpoint rule on the Marchenko-Pastur density sqrt((l+ - l)(l - l-)) / (2 pi l)."""
    lo, hi = (1 - math.sqrt(alpha)) ** 2, (1 + math.sqrt(alpha)) ** 2
    lam = lo + (hi - lo) * (np.arange(n) + 0.5) / n
    return lam, np.sqrt((hi - lam) * (lam - lo)) / (2 * math.pi * lam) * (hi - lo) / n


@pytest.mark.parametrize("alpha, snr, init_var", [(0.5, 4.0, 0.0), (1.0, 4.0, 0.0), (2.0, 1.0, 0.2), (4.0, 4.0, 0.0)])
def test_early_stopping_nearly_reaches_the_best_each_mode_allows(alpha, snr, init_var):
    """Each mode's error is at least A sigma_eps^2 / (sigma_eps^2 + lambda A) (A = sigma_w^2 +
    sigma_0^2), its minimum over t, which is also what the best L2 penalty reaches: the
    stopped error sits just above that sum (0.5-1.7 % here)."""
    var_w, var_eps = variances(snr)
    a = var_w + init_var
    lam, weight = marchenko_pastur_midpoints(alpha)
    floor = (weight * a * var_eps / (var_eps + lam * a)).sum() + max(0.0, 1 - alpha) * a + var_eps
    _, best = linear_theory_optimal_stopping(alpha, snr, init_var)
    assert floor * (1 - 1e-6) <= best <= floor * 1.03


def test_optimal_stopping_limits():
    # no noise: the error falls for ever, stopping never helps
    for alpha in (0.5, 1.0, 2.0):
        limit = linear_theory_asymptote(alpha, math.inf, 0.1)
        assert linear_theory_optimal_stopping(alpha, math.inf, 0.1) == (math.inf, limit)
        curve = linear_theory_test_error(alpha, math.inf, np.geomspace(0.01, 1e3, 200), 0.1)
        assert (np.diff(curve) <= 1e-15).all()
    # little signal: stop at t* -> S = (sigma_w^2 + sigma_0^2) / sigma_eps^2, the first-order root of dE_g/dt
    for snr in (1e-2, 1e-3):
        best_time, _ = linear_theory_optimal_stopping(2.0, snr)
        assert best_time == pytest.approx(snr, rel=3 * snr)
    # many samples per weight: the gain of stopping early vanishes like 1/alpha, and t* tends to
    # ln(1 + alpha S) / alpha, the stopping time of the mode lambda = alpha (the bulk's width is 4 sqrt(alpha))
    var_eps = variances(4.0)[1]
    for alpha in (100.0, 1000.0):
        best_time, best = linear_theory_optimal_stopping(alpha, 4.0)
        late = linear_theory_asymptote(alpha, 4.0)
        assert 0 < alpha * (late - best) / (late - var_eps) < 0.5
        assert best_time == pytest.approx(math.log1p(4 * alpha) / alpha, rel=1 / math.sqrt(alpha))


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
    # the training loss averages only P samples per seed: a looser tolerance than the test loss's
    np.testing.assert_allclose(result.train_loss.mean(axis=1), theory_train_loss(runs[0], result.steps),
                               rtol=0.1, atol=2e-3)


def test_theory_covers_only_what_it_describes():
    run = plan_sweep(parse_spec(SIM_SPEC.format(p=100))).runs[0]
    steps = np.array([0, 10])
    assert theory_test_loss(run, steps) is not None
    for change in (dict(model=dataclasses.replace(run.model, depth=2, width=8)),
                   dict(train=dataclasses.replace(run.train, weight_decay=0.1)),
                   dict(data=dataclasses.replace(run.data, kind=parse_spec('name="x"').data.kind))):
        other = dataclasses.replace(run, **change)
        assert theory_test_loss(other, steps) is None and theory_train_loss(other, steps) is None
        assert theory_optimal_stopping(other) is None
    # the optimum in steps is t* over the time per step; without label noise it never comes
    best_step, _ = theory_optimal_stopping(run)
    best_time, _ = linear_theory_optimal_stopping(0.5, 4.0, 0.25 / 200)  # alpha, SNR = 1/0.5^2, sigma_0^2 = 0.5^2/N
    assert best_step * linear_student_time(run) == pytest.approx(best_time)
    clean = dataclasses.replace(run, data=dataclasses.replace(run.data, label_noise=0.0))
    assert theory_optimal_stopping(clean) == (None, linear_theory_asymptote(0.5, math.inf, 0.25 / 200))
    # the mean objective runs 2/P times slower in the paper's time units
    mean = dataclasses.replace(run, train=dataclasses.replace(run.train, objective=parse_spec('name="x"').train.objective,
                                                              lr=run.train.lr * run.data.n_train / 2))
    np.testing.assert_allclose(theory_test_loss(mean, steps), theory_test_loss(run, steps))
    assert theory_optimal_stopping(mean)[0] == pytest.approx(best_step)  # the same time per step


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
    spec_runs = plan_sweep(spec).runs
    view = {r["run_id"]: r for r in run_query(results, "SELECT * FROM overtraining").to_pylist()}
    assert len(view) == 4
    for run_id, row in view.items():
        curve = run_query(results, f"SELECT step, test_loss, theory_test_loss, theory_train_loss FROM curves "
                                   f"WHERE run_id = '{run_id}' "
                                   "ORDER BY step").to_pylist()
        expected = summarize([c["step"] for c in curve], [c["test_loss"] for c in curve])
        for key, value in expected.items():
            assert row[key] == pytest.approx(value), key
        assert all(c["theory_test_loss"] is not None and c["theory_train_loss"] is not None for c in curve)
        run = next(r for r in spec_runs if r.run_id == run_id)
        best_step, best = theory_optimal_stopping(run)
        assert row["theory_best_step"] == pytest.approx(best_step)
        assert row["theory_best_test_loss"] == pytest.approx(best)
        assert best <= min(c["theory_test_loss"] for c in curve) + 1e-12  # the continuous optimum, not a logged step
        assert row["theory_overtraining_gap"] == pytest.approx(row["theory_final_test_loss"] - best)

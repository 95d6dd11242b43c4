"""Rank statistics of complexity measures (Jiang et al. 2020; Dziugaite et al. 2020)
against plain loops and values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from theoryscope.core.measures.ranking import (
    bootstrap_tau, conditional_mutual_information, granulated, kendall_tau, normalized_cmi, sign_errors,
)


def tau_by_pairs(mu, g) -> float:
    """Eq. 3 of Jiang et al. written out: every ordered pair once."""
    n, total = len(mu), 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += np.sign(mu[i] - mu[j]) * np.sign(g[i] - g[j])
    return total / (n * (n - 1))


@pytest.mark.parametrize("seed", range(5))
def test_tau_is_the_pair_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    mu, g = rng.integers(0, 4, size=23).astype(float), rng.integers(0, 3, size=23).astype(float)  # many ties
    assert kendall_tau(mu, g) == pytest.approx(tau_by_pairs(mu, g), abs=1e-12)


def test_tau_of_orders_and_of_too_few_runs():
    x = np.arange(6.0)
    assert kendall_tau(x, 2 * x + 1) == 1.0 and kendall_tau(x, -x) == -1.0
    assert kendall_tau(x, np.zeros(6)) == 0.0
    assert math.isnan(kendall_tau(x[:1], x[:1]))


def test_the_bootstrap_interval_brackets_tau_and_widens_with_the_level():
    rng = np.random.default_rng(1)
    mu = rng.normal(size=40)
    g = mu + rng.normal(size=40)
    low, high = bootstrap_tau(mu, g, resamples=400)
    wide_low, wide_high = bootstrap_tau(mu, g, resamples=400, level=0.99)
    assert -1 <= wide_low <= low < kendall_tau(mu, g) < high <= wide_high <= 1
    assert bootstrap_tau(mu, g, resamples=400) == (low, high)  # seeded


def test_granulated_psi_by_hand():
    """Two axes on a 2 x 2 grid. Along a (b fixed) both pairs agree: psi_a = 1; along b
    (a fixed) one pair agrees, one disagrees: psi_b = 0; Psi = 1/2, while tau over all
    six pairs is (5 - 1)/6."""
    axes = {"a": [0, 0, 1, 1], "b": [0, 1, 0, 1]}
    mu, g = np.array([1.0, 2, 3, 4]), np.array([2.0, 1, 3, 4])
    psi, per_axis = granulated(mu, g, axes)
    assert [(a.axis, a.tau, a.n_groups) for a in per_axis] == [("a", 1.0, 2), ("b", 0.0, 2)]
    assert psi == 0.5 and kendall_tau(mu, g) == pytest.approx(4 / 6)


def test_granulated_groups_hold_the_seeds_of_a_grid_point_together():
    """Seeds are not axes: the two seeds of each point are members of the same groups."""
    axes = {"a": [0, 0, 1, 1]}  # one axis; runs 0, 1 and 2, 3 are seeds of a point
    mu, g = np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4])
    psi, per_axis = granulated(mu, g, axes)
    assert per_axis[0].n_groups == 1 and psi == pytest.approx(kendall_tau(mu, g))


def test_normalized_cmi_by_hand():
    """mu = (1, 2, 3), g = (1, 3, 2): of the 6 ordered pairs 4 agree and 2 disagree, the
    signs of g are balanced (H = 1 bit), so I = 2/3 log2(4/3) + 1/3 log2(2/3)."""
    mu, g = np.array([1.0, 2, 3]), np.array([1.0, 3, 2])
    expected = 2 / 3 * math.log2(4 / 3) + 1 / 3 * math.log2(2 / 3)
    assert normalized_cmi(mu, g, {}, ()) == pytest.approx(expected, abs=1e-12)


def test_cmi_is_one_for_the_target_itself_and_small_for_noise():
    rng = np.random.default_rng(3)
    axes = {"a": rng.integers(0, 3, 60), "b": rng.integers(0, 2, 60)}
    g = rng.normal(size=60)
    assert conditional_mutual_information(3 * g, g, axes) == pytest.approx(1.0)
    assert conditional_mutual_information(rng.normal(size=60), g, axes) < 0.05


def test_cmi_is_the_least_over_conditioning_sets():
    """A measure that tracks the target only through axis a: informative overall, not
    once a is held fixed (conditioning on a pair's values of a)."""
    rng = np.random.default_rng(4)
    a = rng.integers(0, 3, 90)
    g = a + 0.3 * rng.normal(size=90)
    mu = a + 0.3 * rng.normal(size=90)  # shares only a with g
    axes = {"a": a}
    unconditioned, held = normalized_cmi(mu, g, axes, ()), normalized_cmi(mu, g, axes, ("a",))
    assert unconditioned > 0.3 and held < 0.05
    assert conditional_mutual_information(mu, g, axes) == pytest.approx(min(unconditioned, held))


def test_sign_errors_by_hand():
    """One axis, two grid points of two seeds each: the four cross pairs give sign errors
    0, 1/2 (a tie in mu), 0 and 1."""
    axes = {"a": [0, 0, 1, 1]}
    errors = sign_errors(np.array([1.0, 2, 3, 1]), np.array([0.0, 0, 1, 1]), axes)
    assert [(axis, e) for axis, _, _, e in errors.per_environment] == [("a", 0.375)]
    assert errors.mean == errors.worst == 0.375


def test_environments_differ_in_exactly_one_axis():
    axes = {"a": [0, 0, 1, 1], "b": [0, 1, 0, 1]}
    errors = sign_errors(np.array([1.0, 2, 3, 4]), np.array([1.0, 2, 3, 0]), axes)
    assert sorted((axis, a, b) for axis, a, b, _ in errors.per_environment) == [
        ("a", (0, 0), (1, 0)), ("a", (0, 1), (1, 1)), ("b", (0, 0), (0, 1)), ("b", (1, 0), (1, 1))]
    by_pair = {(a, b): e for _, a, b, e in errors.per_environment}
    assert by_pair[(0, 1), (1, 1)] == 1.0 and by_pair[(0, 0), (1, 0)] == 0.0
    assert errors.worst == 1.0 and errors.mean == 0.5

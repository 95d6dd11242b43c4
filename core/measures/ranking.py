"""How well a complexity measure ranks nets by what they did: the rank statistics of
Jiang, Neyshabur, Mobahi, Krishnan & Bengio, "Fantastic generalization measures and where
to find them" (ICLR 2020), and the robust sign errors of Dziugaite,
Drouin, Neal, Rajkumar, Caballero, Wang, Mitliagkas & Roy, "In search of robust measures
of generalization" (NeurIPS 2020).

Every function takes, per run, the measure ``mu`` and the target ``g`` (e.g. the
generalization gap) as 1-D arrays, and where it needs them the run's value on each swept
axis (``axes``: name -> 1-D array of hashable values, seeds not among them: runs that
differ only in seeds are points of the same group).

A pair of runs agrees when its measure and target move the same way:
sign(mu_i - mu_j) sign(g_i - g_j) = +1. A tie on either side counts 0 in tau and is
left out of the mutual information, whose signs must be +1 or -1.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Axes = Mapping[str, Sequence]


def kendall_tau(mu: np.ndarray, g: np.ndarray) -> float:
    """Jiang et al.'s Eq. 3: the mean over ordered pairs i != j of
    sign(mu_i - mu_j) sign(g_i - g_j) (Kendall's tau-a; NaN for fewer than 2 runs)."""
    mu, g = np.asarray(mu, dtype=float), np.asarray(g, dtype=float)
    n = len(mu)
    if n < 2:
        return math.nan
    agree = np.sign(mu[:, None] - mu[None, :]) * np.sign(g[:, None] - g[None, :])
    return float(agree.sum() / (n * (n - 1)))


def bootstrap_tau(mu: np.ndarray, g: np.ndarray, resamples: int = 1000, level: float = 0.95,
                  seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval of ``kendall_tau`` over runs: runs drawn with
    replacement ``resamples`` times (a run drawn twice makes a tied pair, which counts
    0), the (1 - level)/2 and (1 + level)/2 quantiles of the resampled tau."""
    mu, g = np.asarray(mu, dtype=float), np.asarray(g, dtype=float)
    if len(mu) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    taus = [kendall_tau(mu[idx], g[idx]) for idx in rng.integers(0, len(mu), size=(resamples, len(mu)))]
    low, high = np.quantile(taus, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def groups_along(axis: str, axes: Axes) -> list[np.ndarray]:
    """Indices of the runs in each group equal on every swept axis but ``axis``."""
    others = [name for name in axes if name != axis]
    keys = list(zip(*(axes[name] for name in others))) if others else [()] * len(axes[axis])
    by_key: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        by_key.setdefault(key, []).append(i)
    return [np.array(members) for members in by_key.values()]


@dataclass(frozen=True)
class AxisTau:
    """Jiang et al.'s psi_i for one axis: tau within each group of runs equal on every
    other axis, averaged over the groups of two or more runs."""

    axis: str
    tau: float
    n_groups: int


def granulated(mu: np.ndarray, g: np.ndarray, axes: Axes) -> tuple[float, list[AxisTau]]:
    """Jiang et al.'s granulated Kendall coefficient: psi_i per axis and
    Psi = their mean over the axes that have a group of two or more runs."""
    mu, g = np.asarray(mu, dtype=float), np.asarray(g, dtype=float)
    per_axis = []
    for axis in axes:
        taus = [kendall_tau(mu[idx], g[idx]) for idx in groups_along(axis, axes) if len(idx) >= 2]
        per_axis.append(AxisTau(axis, float(np.mean(taus)) if taus else math.nan, len(taus)))
    defined = [a.tau for a in per_axis if not math.isnan(a.tau)]
    return (float(np.mean(defined)) if defined else math.nan), per_axis


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _mutual_information(table: np.ndarray) -> float:
    """I(A; B) in bits of a 2 x 2 count table."""
    total = table.sum()
    joint = table / total
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)
    nonzero = joint > 0
    return float((joint[nonzero] * np.log2(joint[nonzero] / np.outer(pa, pb)[nonzero])).sum())


def _codes(values: Sequence) -> np.ndarray:
    """An integer code per run for its value (equal values, equal codes)."""
    index: dict = {}
    return np.array([index.setdefault(v, len(index)) for v in values], dtype=np.int64)


def normalized_cmi(mu: np.ndarray, g: np.ndarray, axes: Axes, conditioning: Sequence[str]) -> float:
    """Jiang et al.'s I(V_mu; V_g | U_S) / H(V_g | U_S): over ordered pairs of runs with
    no tie on either side, V = the sign of the pair's difference and U_S the pair's
    values (both runs') on the axes S; each cell of U_S weighted by its share of the
    pairs. NaN when V_g carries no information (H = 0). Counted for every cell at once."""
    mu, g = np.asarray(mu, dtype=float), np.asarray(g, dtype=float)
    i, j = np.nonzero(~np.eye(len(mu), dtype=bool))
    v_mu, v_g = np.sign(mu[i] - mu[j]), np.sign(g[i] - g[j])
    keep = (v_mu != 0) & (v_g != 0)
    i, j, v_mu, v_g = i[keep], j[keep], v_mu[keep], v_g[keep]
    if len(i) == 0:
        return math.nan
    cell = np.zeros(len(i), dtype=np.int64)
    for name in conditioning:  # the pair's (value of run i, value of run j) on each axis
        codes = _codes(axes[name])
        k = int(codes.max()) + 1
        cell = (cell * k + codes[i]) * k + codes[j]
    _, cell = np.unique(cell, return_inverse=True)
    tables = np.zeros((cell.max() + 1, 2, 2))
    np.add.at(tables, (cell, (v_g > 0).astype(int), (v_mu > 0).astype(int)), 1)
    weight = tables.sum(axis=(1, 2)) / len(i)
    information = sum(w * _mutual_information(t) for w, t in zip(weight, tables))
    entropy = sum(w * _entropy(t.sum(axis=1)) for w, t in zip(weight, tables))
    return information / entropy if entropy > 0 else math.nan


def conditional_mutual_information(mu: np.ndarray, g: np.ndarray, axes: Axes, largest: int = 2) -> float:
    """Jiang et al.'s K(mu): the smallest ``normalized_cmi`` over conditioning sets of at
    most ``largest`` swept axes (the empty set included), so a measure scores high only
    if it predicts the target however the hyperparameters are held."""
    sets = [s for size in range(min(largest, len(axes)) + 1) for s in itertools.combinations(axes, size)]
    values = [normalized_cmi(mu, g, axes, s) for s in sets]
    defined = [v for v in values if not math.isnan(v)]
    return min(defined) if defined else math.nan


@dataclass(frozen=True)
class SignErrors:
    """Dziugaite et al.'s robust view: per environment (a pair of grid points differing
    in one axis) the sign error, and its mean and worst case over environments."""

    per_environment: list[tuple[str, tuple, tuple, float]]  # (axis, point a, point b, error)
    mean: float
    worst: float


def sign_errors(mu: np.ndarray, g: np.ndarray, axes: Axes) -> SignErrors:
    """For every pair of grid points that differ in exactly one swept axis, the sign
    error (1 - sign(mu - mu') sign(g - g')) / 2 averaged over every pairing of a run at
    one point with a run at the other (their seeds), so a tie counts 1/2: Dziugaite et
    al.'s sign-error of an environment, its expectation over seeds taken exactly."""
    mu, g = np.asarray(mu, dtype=float), np.asarray(g, dtype=float)
    names = list(axes)
    points: dict[tuple, list[int]] = {}
    for k, key in enumerate(zip(*(axes[name] for name in names))):
        points.setdefault(key, []).append(k)
    found = []
    for a, b in itertools.combinations(sorted(points, key=repr), 2):
        differ = [n for n, x, y in zip(names, a, b) if x != y]
        if len(differ) != 1:
            continue
        ia, ib = np.array(points[a]), np.array(points[b])
        agree = np.sign(mu[ia][:, None] - mu[ib][None, :]) * np.sign(g[ia][:, None] - g[ib][None, :])
        found.append((differ[0], a, b, float(((1 - agree) / 2).mean())))
    errors = [e for *_, e in found]
    return SignErrors(found, float(np.mean(errors)) if errors else math.nan,
                      float(np.max(errors)) if errors else math.nan)

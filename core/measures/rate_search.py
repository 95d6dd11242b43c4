"""How the acceleration experiment picks a run's rate: the best of the rates tried, and the
new rates a refinement round tries around it (Arora, Cohen & Hazan 2018 compare depths at
each one's best rate; ``core.accelerate`` trains the rounds). Pure bookkeeping over rates
and steps to the target, no training.

**Refinement** (``train.lr_tolerance`` > 0; ``refine``). Let b be the best rate so far
and lo < b < hi its nearest tried rates (at an end of the grid, the missing neighbour
mirrors the other: lo = b^2 / hi). A round puts k rates log-evenly spaced strictly
inside each side whose gap g (b / lo or hi / b) is wider than 1 + lr_tolerance, which
cuts it to g^(1/(k+1)); k is the fewest that resolve the gap in REFINE_ROUNDS rounds
(``side_points``; at lr_tolerance 0.02, 7 rates a side and then 6 take a grid 2.7x
apart to 1.018x). All runs' new rates train as one stacked family, for as many steps as
the slowest of their current bests: a rate that has not reached the target by its run's best cannot be
better, and counts as not reached. A new rate replaces the best when it reaches the
target in fewer steps (ties: the smaller rate). Refinement ends when both gaps around
the run's best are within 1 + lr_tolerance.

*What "accurate to lr_tolerance" means.* Once refinement ends, the reported rate b has its nearest tried
rates within a factor ``resolution`` <= 1 + lr_tolerance on either side. Let S(r) be
the steps to the target at rate r and r* the fastest rate. If r* lies between those
neighbours, and S falls no faster than 1 / r as r grows to r* (S(r) r non-decreasing
there, as for gradient descent, whose progress per step is at most proportional to its
rate), the tried rate r- just below r* has S(r-) <= (r* / r-) S(r*) + 1 <= resolution x
S(r*) + 1 (one step of rounding), and b, at least as fast as every rate tried, has
S(b) <= (1 + lr_tolerance) S(r*) + 1: the reported steps, and so the speed-up ratios,
are accurate to lr_tolerance. The tests check it against dense scans of rates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from theoryscope.core.config import TrainSpec

# Refinement is planned to take this many rounds: a round costs its steps more than its
# members (a stacked step of 100 small members takes about twice as long as one of 2).
REFINE_ROUNDS = 2
# New rates per side of the best in a round at most; with a gap so wide that this does
# not resolve it in REFINE_ROUNDS, more rounds follow, up to MAX_ROUNDS.
MAX_POINTS = 32
MAX_ROUNDS = 8


def choose_rate(lrs: np.ndarray, steps: np.ndarray, stable: np.ndarray, final: np.ndarray) -> int:
    """The fastest rate that reached the target (ties: the smaller rate); else the stable
    one with the lowest final loss; else the first."""
    if (steps >= 0).any():
        return int(min(np.flatnonzero(steps >= 0), key=lambda g: (steps[g], lrs[g])))
    if stable.any():
        return int(np.where(stable, final, np.inf).argmin())
    return 0


class Search:
    """One run's rates tried (the coarse grid, then refinement) and the best so far."""

    def __init__(self, lrs: list[float], steps: list[int], best: int):
        self.lrs, self.steps = [float(v) for v in lrs], [int(s) for s in steps]
        self.best = best
        self.coarse = len(lrs)
        self.rounds = 0
        self.fell_back = False  # the refined best failed the report round

    @property
    def best_lr(self) -> float:
        return self.lrs[self.best]

    @property
    def best_steps(self) -> int:
        return self.steps[self.best]

    def add(self, lr: float, steps: int) -> None:
        """A refined rate and its steps (-1: not reached within its round)."""
        self.lrs.append(float(lr))
        self.steps.append(int(steps))
        if steps >= 0 and (steps, lr) < (self.best_steps, self.best_lr):
            self.best = len(self.lrs) - 1


# (run index per member, rate per member, steps) -> each member's steps to the target
# (-1: not within those steps) and the seconds it took: one stacked round.
Evaluate = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, float]]


def refine(searches: list[Search], tolerances: Sequence[float], evaluate: Evaluate) -> float:
    """Refinement rounds until every run's best is resolved to its tolerance (or
    MAX_ROUNDS); each round is one ``evaluate`` of every run's new rates, for as many
    steps as the slowest of their bests. Returns the seconds spent."""
    wall = 0.0
    for _ in range(MAX_ROUNDS):
        member_run, member_lr = _next_round(searches, tolerances)
        if len(member_run) == 0:
            break
        horizon = {i: searches[i].best_steps for i in set(member_run.tolist())}
        reached, seconds = evaluate(member_run, member_lr, max(horizon.values()))
        wall += seconds
        for i, lr, s in zip(member_run.tolist(), member_lr.tolist(), reached.tolist()):
            searches[i].add(lr, s if s <= horizon[i] else -1)  # past its own horizon: as if not reached
    return wall


def _next_round(searches: list[Search], tolerances: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Members of the next refinement round: (run index, rate) of every run whose best
    reached the target and is not yet resolved to its tolerance."""
    member_run, member_lr = [], []
    for i, (search, tolerance) in enumerate(zip(searches, tolerances)):
        if tolerance <= 0 or search.best_steps < 0:
            continue
        new = refine_rates(np.array(search.lrs), search.best, tolerance, REFINE_ROUNDS - search.rounds)
        if len(new):
            search.rounds += 1
            member_run += [i] * len(new)
            member_lr += list(new)
    return np.array(member_run, dtype=np.int64), np.array(member_lr, dtype=np.float64)


def neighbours(lrs: np.ndarray, best: int) -> tuple[float, float] | None:
    """The nearest tried rates below and above ``lrs[best]``; a missing one mirrors the
    other (lo = b^2 / hi); None when there is no other rate."""
    b = lrs[best]
    below, above = lrs[lrs < b], lrs[lrs > b]
    if not len(below) and not len(above):
        return None
    lo = below.max() if len(below) else b * b / above.min()
    hi = above.min() if len(above) else b * b / below.max()
    return float(lo), float(hi)


def resolution(lrs: np.ndarray, best: int) -> float:
    """max(b / lo, hi / b) of the best rate b and its nearest tried rates; NaN alone."""
    around = neighbours(lrs, best)
    return math.nan if around is None else max(lrs[best] / around[0], around[1] / lrs[best])


def side_points(gap: float, tolerance: float, rounds_left: int) -> int:
    """Rates to put inside a gap (a ratio > 1) so that ``rounds_left`` rounds of as many
    cut it to 1 + tolerance: k points cut it to gap^(1/(k+1)), so k + 1 =
    ceil((log gap / log(1 + tolerance))^(1/rounds_left)); 0 if it is already that fine."""
    need = math.log(gap) / math.log1p(tolerance)
    if need <= 1 + 1e-9:
        return 0
    return min(MAX_POINTS, max(1, math.ceil(need ** (1 / max(rounds_left, 1)) - 1e-9) - 1))


def refine_rates(lrs: np.ndarray, best: int, tolerance: float, rounds_left: int = REFINE_ROUNDS) -> np.ndarray:
    """The rates a refinement round tries around b = ``lrs[best]``: inside each gap (lo, b)
    and (b, hi) wider than a factor 1 + tolerance, ``side_points`` rates log-evenly spaced."""
    around = neighbours(lrs, best)
    if around is None:
        return np.empty(0)
    b, new = float(lrs[best]), []
    for edge in around:
        k = side_points(max(edge / b, b / edge), tolerance, rounds_left)
        new += [b * (edge / b) ** (j / (k + 1)) for j in range(1, k + 1)]
    return np.array(sorted(new))


def refinement_members(train: TrainSpec) -> int:
    """The most rates a run adds in one refinement round (the first is the largest)."""
    if train.lr_tolerance <= 0:
        return 0
    lrs = np.sort(np.array(train.learning_rates()))
    gap = float((lrs[1:] / lrs[:-1]).max())
    return 2 * side_points(gap, train.lr_tolerance, REFINE_ROUNDS)

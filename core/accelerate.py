"""Acceleration families: every run at every rate of its learning-rate grid, stacked, and
the fastest stable rate refined in further stacked rounds.

A run of experiment "acceleration" is one l_p regression problem solved by one model:
the plain linear model (depth 1) or its depth-N overparameterization, a product of N
matrices or a vector times scalars (Arora, Cohen & Hazan 2018), trained by GD, Adam,
AdaGrad or AdaDelta (``core.optim``; Arora et al.'s Section 8 compares depth with the
last two at depth 1). Every run starts from the same end-to-end vector w0 at every depth
(``core.linear_start``), so depths are compared from one starting point, as in the paper.
The loss is (1/n) sum |x^T w - y|^p / p, kept for every member at every step on the
device, because the time to reach a target loss is counted in steps: the first step with
L - L* <= target (L_0 - L*), L* the optimum of the convex depth-1 problem
(``core.measures.acceleration.lp_optimum``, float64).

**The coarse round** trains every run at every rate of ``train.lr_grid`` for
``train.steps`` steps, all members of all runs as one stacked deep linear net. A rate is
*stable* when its loss stayed finite and ended below where it started; the run's best
rate is the stable one that first reached the target (ties: the smaller rate); if none
reached it, the stable rate with the lowest final loss, and there is nothing to refine.

**Refinement** (``train.lr_tolerance`` > 0): further stacked rounds of new rates around
each run's best, chosen by ``core.measures.rate_search`` (which also says what "accurate
to lr_tolerance" means).

**The report round** trains each run whose best rate came from refinement once more at
that rate for the whole ``train.steps``, which gives its curves and weights and checks it
is stable (as above) over the whole budget; if it is not, or reaches the target later
than the coarse best, the run reports its coarse best.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from theoryscope.core import models
from theoryscope.core.config import RunSpec
from theoryscope.core.linear_start import initial_factors
from theoryscope.core.measures.acceleration import lp_optimum, steps_to_target
from theoryscope.core.measures.rate_search import Search, choose_rate, refine, resolution
from theoryscope.core.optim import StackedOptimizer
from theoryscope.core.train import DTYPES, FamilyResult, StackedData, describe_device, member_hyper, stack_data


@dataclass(frozen=True)
class AccelerationResult:
    """Per run (``[R]``) and per run and rate of the coarse grid (``[R, G]``)."""

    family: FamilyResult        # the reported rate of every run: curves, final weights
    lrs: np.ndarray             # [R, G] the coarse grid
    steps: np.ndarray           # [R, G] its steps to the target, -1 if never or unstable
    stable: np.ndarray          # [R, G]
    optimum: np.ndarray         # [R] L*
    initial_loss: np.ndarray    # [R] L_0 (the same for every rate)
    lr: np.ndarray              # [R] the reported rate; NaN if no rate was stable
    steps_to_target: np.ndarray  # [R] of the reported rate, -1 if never
    final_loss: np.ndarray      # [R] of the reported rate at train.steps
    refined: list[dict[float, int]]  # per run: rate tried in refinement -> steps, -1 if not within its round
    rounds: np.ndarray          # [R] refinement rounds the run took part in
    resolution: np.ndarray      # [R] largest ratio of the reported rate to its nearest tried rates; NaN: none stable
    at_edge: np.ndarray         # [R] the grid's best is its smallest or largest rate (false: none stable)


@dataclass(frozen=True)
class Problem:
    """What every member of one run shares (``[R, ...]``): data, p, start, settings, L*."""

    runs: list[RunSpec]
    data: StackedData
    p: torch.Tensor
    factors: list[torch.Tensor]
    optimum: np.ndarray


@dataclass(frozen=True)
class Descent:
    """One stacked round over members ``[M]``: the training loss at every step (float64,
    host), when each member diverged (-1: never), and for a full round its test loss at
    ``train.log_steps()`` and its final weights (host)."""

    losses: torch.Tensor
    diverged: np.ndarray
    test_losses: torch.Tensor | None
    weights: list[torch.Tensor] | None
    wall: float


def train_acceleration(runs: Sequence[RunSpec], device: torch.device) -> AccelerationResult:
    """The coarse round, the refinement rounds and the report round of a family's runs."""
    grids = [r.train.learning_rates() for r in runs]
    if any(len(g) != len(grids[0]) for g in grids):
        raise ValueError("every run of an acceleration family needs as many learning rates")
    lrs = np.array(grids, dtype=np.float64)
    problem = _problem(runs, device)
    r_count, rates = lrs.shape
    coarse = _descend(problem, np.repeat(np.arange(r_count), rates), lrs.reshape(-1), runs[0].train.steps, True,
                      device)
    summary = _coarse_summary(problem, coarse, rates)
    _, final, stable, steps = summary
    best = [choose_rate(lrs[i], steps[i], stable[i], final[i]) for i in range(r_count)]
    searches = [Search(list(lrs[i]), list(steps[i]), best[i]) for i in range(r_count)]

    def evaluate(member_run: np.ndarray, member_lr: np.ndarray, steps: int) -> tuple[np.ndarray, float]:
        refined = _descend(problem, member_run, member_lr, steps, False, device)
        reached = steps_to_target(refined.losses, torch.from_numpy(problem.optimum[member_run]),
                                  torch.tensor([runs[i].train.target for i in member_run], dtype=torch.float64))
        return reached.numpy(), refined.wall

    wall = coarse.wall + refine(searches, [r.train.lr_tolerance for r in runs], evaluate)
    source, wall = _report(problem, coarse, searches, best, summary, wall, device)
    return _assemble(problem, lrs, searches, best, source, summary, wall, device)


def _problem(runs: Sequence[RunSpec], device: torch.device) -> Problem:
    """Each run's data, p, starting factors and L* (runs with the same data share L*)."""
    dtype = DTYPES[runs[0].train.dtype]
    data = stack_data(runs, dtype, device)
    p = torch.tensor([float(r.data.p) for r in runs], dtype=dtype, device=device)
    factors = [torch.stack(layer).to(device=device, dtype=dtype) for layer in zip(*(initial_factors(r) for r in runs))]
    optima: dict = {}
    for i, r in enumerate(runs):
        if r.data not in optima:
            optima[r.data] = lp_optimum(data.x_train[i].double().cpu(), data.y_train[i].double().cpu().view(-1),
                                        r.data.p)[1]
    return Problem(list(runs), data, p, factors, np.array([optima[r.data] for r in runs]))


def _descend(problem: Problem, member_run: np.ndarray, member_lr: np.ndarray, steps: int, full: bool,
             device: torch.device) -> Descent:
    """Members (run ``member_run[m]`` at rate ``member_lr[m]``) trained as one stacked net
    for ``steps`` steps; a ``full`` round (steps = train.steps) also logs test losses."""
    runs, train = problem.runs, problem.runs[0].train
    index = torch.from_numpy(member_run).to(device)
    x, y, x_test, y_test = (t.index_select(0, index) for t in (problem.data.x_train, problem.data.y_train,
                                                                problem.data.x_test, problem.data.y_test))
    p = problem.p.index_select(0, index).view(-1, 1, 1)
    weights = [w.index_select(0, index).contiguous() for w in problem.factors]
    hyper = member_hyper([runs[i] for i in member_run.tolist()], x.dtype, device)
    hyper = dataclasses.replace(hyper, lr=torch.tensor(member_lr, dtype=x.dtype, device=device))
    optimizer = StackedOptimizer(train.optimizer, hyper, weights)
    params = models.Params(weights, None)

    def loss_of(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        residual = models.forward(params, inputs, nonlinear=False) - targets
        return (residual.abs() ** p).mean(dim=(1, 2)) / p.view(-1)

    members = len(member_run)
    losses = torch.empty(steps + 1, members, dtype=x.dtype, device=device)
    test_losses = torch.empty(train.n_log_steps, members, dtype=x.dtype, device=device) if full else None
    active = torch.ones(members, dtype=torch.bool, device=device)
    diverged = torch.full((members,), -1, dtype=torch.long, device=device)
    start = time.perf_counter()
    for step in range(steps + 1):
        training = step < steps
        for w in weights:
            w.requires_grad_(training)
        with torch.set_grad_enabled(training):
            loss = loss_of(x, y)
        losses[step] = loss.detach()
        bad = active & ~torch.isfinite(loss.detach())
        diverged = torch.where(bad, step, diverged)
        active = active & ~bad
        row = train.log_row(step) if full else None
        if row is not None:
            with torch.no_grad():
                test_losses[row] = loss_of(x_test, y_test)
        if training:
            grads = torch.autograd.grad(torch.where(active, loss, 0.0).sum(), weights)
            optimizer.step(weights, grads, active)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    return Descent(losses.double().cpu(), diverged.cpu().numpy(),
                   test_losses.double().cpu() if full else None,
                   [w.detach().cpu() for w in weights] if full else None, wall)


def _coarse_summary(problem: Problem, coarse: Descent, rates: int):
    """Per run: L_0 ``[R]``; per run and rate ``[R, G]``: final loss, stability, steps to
    the target (-1 if never or unstable)."""
    r_count = len(problem.runs)
    initial = coarse.losses[0].view(r_count, rates)[:, 0].numpy()
    final = coarse.losses[-1].view(r_count, rates).numpy()
    stable = (coarse.diverged.reshape(r_count, rates) < 0) & np.isfinite(final) & (final < initial[:, None])
    target = torch.tensor([r.train.target for r in problem.runs], dtype=torch.float64).repeat_interleave(rates)
    reached = steps_to_target(coarse.losses, torch.from_numpy(np.repeat(problem.optimum, rates)), target)
    return initial, final, stable, np.where(stable, reached.view(r_count, rates).numpy(), -1)


def _report(problem, coarse, searches, best, summary, wall, device):
    """The report round of the runs whose best rate came from refinement; a best that is
    not stable over the whole budget, or slower than the coarse best, falls back to it.
    Returns, per run, the (descent, member) it reports, and the training seconds."""
    initial, _, _, steps = summary
    rates = len(coarse.diverged) // len(problem.runs)
    source = [(coarse, i * rates + g) for i, g in enumerate(best)]
    refined = [i for i, s in enumerate(searches) if s.best >= s.coarse]
    if not refined:
        return source, wall
    report = _descend(problem, np.array(refined, dtype=np.int64), np.array([searches[i].best_lr for i in refined]),
                      problem.runs[0].train.steps, True, device)
    for m, i in enumerate(refined):
        curve = report.losses[:, m:m + 1]
        reached = int(steps_to_target(curve, problem.optimum[i], problem.runs[i].train.target)[0])
        last = float(curve[-1, 0])
        if report.diverged[m] < 0 and math.isfinite(last) and last < initial[i] and 0 <= reached <= steps[i, best[i]]:
            source[i] = (report, m)
        else:
            searches[i].best, searches[i].fell_back = best[i], True
    return source, wall + report.wall


def _assemble(problem, lrs, searches, best, source, summary, wall, device) -> AccelerationResult:
    """The reported member of every run: its curves and weights as a ``FamilyResult``,
    and the search's record."""
    initial, _, stable, steps = summary
    train = problem.runs[0].train
    rows = torch.from_numpy(train.log_steps())

    def column(get) -> np.ndarray:
        return np.stack([get(descent, m) for descent, m in source], axis=-1)

    every_step = torch.from_numpy(column(lambda d, m: d.losses[:, m].numpy()))
    targets = torch.tensor([r.train.target for r in problem.runs], dtype=torch.float64)
    reached = steps_to_target(every_step, torch.from_numpy(problem.optimum), targets).numpy()
    any_stable = stable.any(axis=1)
    weights = [torch.stack([d.weights[k][m] for d, m in source]) for k in range(len(problem.factors))]
    family = FamilyResult(
        steps=train.log_steps(), train_loss=every_step[rows].numpy(),
        test_loss=column(lambda d, m: d.test_losses[:, m].numpy()), train_error=None, test_error=None,
        diverged_step=np.array([d.diverged[m] for d, m in source]), params=models.Params(weights, None),
        wall_seconds=wall, device=describe_device(device), data=problem.data, snapshots={},
    )
    return AccelerationResult(
        family, lrs, steps, stable, problem.optimum, initial,
        lr=np.array([s.best_lr if any_stable[i] else math.nan for i, s in enumerate(searches)]),
        steps_to_target=np.where(any_stable, reached, -1), final_loss=every_step[-1].numpy(),
        refined=[dict(zip(s.lrs[s.coarse:], s.steps[s.coarse:])) for s in searches],
        rounds=np.array([s.rounds for s in searches]),
        resolution=np.array([resolution(np.array(s.lrs[:s.coarse] if s.fell_back else s.lrs), s.best)
                             if any_stable[i] else math.nan for i, s in enumerate(searches)]),
        at_edge=np.array([bool(any_stable[i]) and len(g) > 1 and g[b] in (g.min(), g.max())
                          for i, (g, b) in enumerate(zip(lrs, best))]),
    )

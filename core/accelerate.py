"""Acceleration families: every run at every rate of its learning-rate grid, stacked.

A run of experiment "acceleration" is one l_p regression problem solved by one model:
the plain linear model (depth 1) or its depth-N overparameterization, a product of N
matrices or a vector times scalars (Arora, Cohen & Hazan 2018). Its ``train.lr_grid``
adds one member per rate; all members of all runs of a family train as one stacked deep
linear net, with the loss (1/n) sum |x^T w - y|^p / p, each member with its own p, data,
rate and init. Every run starts from the same end-to-end vector w0 at every depth
(``core.linear_start``), so depths are compared from one starting point, as in the paper.

The loss of every member is kept at every step, on the device (one number per member
and step), because the time to reach a target loss is counted in steps. Per run, the
reported member is the *fastest stable* rate: among the rates whose loss stayed finite
and ended below where it started, the one that first reached
L - L* <= target (L_0 - L*), L* the optimum of the convex depth-1 problem
(``core.measures.acceleration.lp_optimum``, float64); if none reached it, the stable rate
with the lowest final loss.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from theoryscope.core import models
from theoryscope.core.config import RunSpec
from theoryscope.core.linear_start import initial_factors
from theoryscope.core.measures.acceleration import lp_optimum, steps_to_target
from theoryscope.core.optim import StackedOptimizer
from theoryscope.core.train import DTYPES, FamilyResult, describe_device, member_hyper, stack_data


@dataclass(frozen=True)
class AccelerationResult:
    """Per run (``[R]``) and per run and rate (``[R, G]``)."""

    family: FamilyResult        # the reported member of every run: curves, final weights
    lrs: np.ndarray             # [R, G] the rates tried
    steps: np.ndarray           # [R, G] steps to the target, -1 if never
    stable: np.ndarray          # [R, G]
    chosen: np.ndarray          # [R] index of the reported rate
    optimum: np.ndarray         # [R] L*
    initial_loss: np.ndarray    # [R] L_0 (the same for every rate)
    final_loss: np.ndarray      # [R, G]


def train_acceleration(runs: Sequence[RunSpec], device: torch.device) -> AccelerationResult:
    first = runs[0]
    lrs = [r.train.learning_rates() for r in runs]
    rates = len(lrs[0])
    if any(len(r) != rates for r in lrs):
        raise ValueError("every run of an acceleration family needs as many learning rates")
    dtype = DTYPES[first.train.dtype]
    data = stack_data(runs, dtype, device)

    def per_member(t: torch.Tensor) -> torch.Tensor:  # [R, ...] -> [R * G, ...]
        return t.repeat_interleave(rates, dim=0)

    x, y, x_test, y_test = (per_member(t) for t in (data.x_train, data.y_train, data.x_test, data.y_test))
    p = per_member(torch.tensor([float(r.data.p) for r in runs], dtype=dtype, device=device)).view(-1, 1, 1)
    factors = [torch.stack(layer).to(device=device, dtype=dtype)
               for layer in zip(*(initial_factors(r) for r in runs))]
    weights = [per_member(w).contiguous() for w in factors]
    hyper = member_hyper(runs, dtype, device)
    hyper = dataclasses.replace(hyper.map(per_member),
                                lr=torch.tensor([v for r in lrs for v in r], dtype=dtype, device=device))
    optimizer = StackedOptimizer(first.train.optimizer, hyper, weights)
    params = models.Params(weights, None)

    def loss_of(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        residual = models.forward(params, inputs, nonlinear=False) - targets
        return (residual.abs() ** p).mean(dim=(1, 2)) / p.view(-1)

    total_steps = first.train.steps
    log_steps = first.train.log_steps()
    members = len(runs) * rates
    losses = torch.empty(total_steps + 1, members, dtype=dtype, device=device)
    test_losses = torch.empty(len(log_steps), members, dtype=dtype, device=device)
    active = torch.ones(members, dtype=torch.bool, device=device)
    diverged = torch.full((members,), -1, dtype=torch.long, device=device)
    start = time.perf_counter()
    for step in range(total_steps + 1):
        training = step < total_steps
        for w in weights:
            w.requires_grad_(training)
        with torch.set_grad_enabled(training):
            loss = loss_of(x, y)
        losses[step] = loss.detach()
        bad = active & ~torch.isfinite(loss.detach())
        diverged = torch.where(bad, step, diverged)
        active = active & ~bad
        row = first.train.log_row(step)
        if row is not None:
            with torch.no_grad():
                test_losses[row] = loss_of(x_test, y_test)
        if training:
            grads = torch.autograd.grad(torch.where(active, loss, 0.0).sum(), weights)
            optimizer.step(weights, grads, active)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    for w in weights:
        w.requires_grad_(False)
    return _summarize(runs, rates, lrs, data, losses, test_losses, diverged, weights, log_steps, wall, device)


def _summarize(runs, rates, lrs, data, losses, test_losses, diverged, weights, log_steps, wall, device):
    """Per run: L*, which rates were stable, when each reached the target, which rate is
    reported; the reported members' curves and weights as a ``FamilyResult``."""
    r_count = len(runs)
    optima: dict = {}  # runs with the same data share L*
    for i, r in enumerate(runs):
        if r.data not in optima:
            optima[r.data] = lp_optimum(data.x_train[i].double().cpu(), data.y_train[i].double().cpu().view(-1),
                                        r.data.p)[1]
    optimum = np.array([optima[r.data] for r in runs])
    host = losses.double().cpu()
    initial = host[0].view(r_count, rates)[:, 0].numpy()
    final = host[-1].view(r_count, rates).numpy()
    stable = (diverged.cpu().view(r_count, rates) < 0).numpy() & np.isfinite(final) & (final < initial[:, None])
    per_member_optimum = torch.from_numpy(np.repeat(optimum, rates))
    target = torch.tensor([r.train.target for r in runs], dtype=torch.float64).repeat_interleave(rates)
    reached_at = steps_to_target(host, per_member_optimum, target).view(r_count, rates).numpy()
    reached_at = np.where(stable, reached_at, -1)
    chosen = np.array([_choose(reached_at[i], stable[i], final[i]) for i in range(r_count)])
    picked = np.arange(r_count) * rates + chosen
    rows = torch.from_numpy(log_steps)
    family = FamilyResult(
        steps=log_steps,
        train_loss=host[rows][:, picked].numpy(), test_loss=test_losses.double().cpu()[:, picked].numpy(),
        train_error=None, test_error=None,
        diverged_step=np.where(stable.any(axis=1), -1, diverged.cpu().view(r_count, rates).amax(dim=1).numpy()),
        params=models.Params([w.detach()[picked].cpu() for w in weights], None),
        wall_seconds=wall, device=describe_device(device), data=data, snapshots={},
    )
    return AccelerationResult(family, np.asarray(lrs, dtype=np.float64), reached_at, stable, chosen, optimum,
                              initial, final)


def _choose(reached_at: np.ndarray, stable: np.ndarray, final: np.ndarray) -> int:
    """The fastest rate that reached the target; else the stable one with the lowest final
    loss; else the first."""
    if (reached_at >= 0).any():
        return int(np.where(reached_at >= 0, reached_at, np.iinfo(np.int64).max).argmin())
    if stable.any():
        return int(np.where(stable, final, np.inf).argmin())
    return 0

"""Deep linear nets trained by gradient descent beside the end-to-end rule (experiment
"linear-dynamics"; Arora, Cohen & Hazan 2018, Theorem 1; Saxe, McClelland & Ganguli 2014).

A family of deep linear nets W_N ... W_1 trains by full-batch GD as any family does. Side
by side, each member's end-to-end matrix is also moved by Theorem 1's rule from the same
start, W <- W - lr sum_j (W W^T)^{(j-1)/N} grad L(W) (W^T W)^{(N-j)/N}. With balanced
factors and a small rate the two trajectories agree (the theorem is exact for gradient
flow); the logged relative deviation ||W_e - W_rule||_F / ||W_rule||_F shows how the
agreement degrades with the rate and with imbalance (``model.imbalance``).

On linear-modes data the strength u_a(t) = u_a^T W_e(t) v_a of every target mode is kept
at every step, for Saxe et al.'s timing of sigmoidal mode learning.

Every run's start comes from ``core.linear_start``; "decoupled" (every target mode at
strength init_scale, balanced) is Saxe et al.'s small decoupled initial condition.

Mode timing, the theory the measured mode times are held against, is
``core.measures.modes``.
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
from theoryscope.core.config import DataKind, Objective, RunSpec
from theoryscope.core.data import linear_modes_target
from theoryscope.core.linear_start import initial_factors
from theoryscope.core.measures.acceleration import end_to_end_update, product
from theoryscope.core.measures.modes import mode_factor_strengths
from theoryscope.core.train import FamilyResult, FamilyTraining, member_losses, objective_scale


@dataclass(frozen=True)
class DynamicsResult:
    family: FamilyResult          # curves with rule_deviation, final weights
    strengths: np.ndarray | None  # [steps + 1, F, k] mode strengths (linear-modes data), else None
    time_per_step: np.ndarray     # [F] Saxe's time units (tau = 1) per GD step
    # [F, N, k] each factor's initial strength on each mode (``mode_factor_strengths``;
    # linear-modes data), else None
    factor_strengths: np.ndarray | None = None


def time_per_step(run: RunSpec) -> float:
    """Gradient-flow time of one GD step in Saxe's units (tau dW/dt = Sigma_yx - W Sigma_xx):
    the mean loss (1/(n o)) sum ||W x - y||^2 has gradient (2/o)(W Sigma_xx - Sigma_yx),
    the half-sum loss n (W Sigma_xx - Sigma_yx)."""
    if run.train.objective is Objective.HALF_SUM:
        return run.train.lr * run.data.n_train
    return run.train.lr * 2 / run.data.n_outputs


def train_linear_dynamics(runs: Sequence[RunSpec], device: torch.device) -> DynamicsResult:
    training = FamilyTraining(runs, device)
    depth = runs[0].model.depth
    starts = [initial_factors(r) for r in runs]
    with torch.no_grad():
        for tensor, start in zip(training.tensors, zip(*starts)):
            tensor.copy_(torch.stack(start))
    data = training.data
    lr = torch.tensor([r.train.lr for r in runs], dtype=training.dtype, device=device)
    scale = objective_scale(runs[0].train.objective, data.y_train)
    modes = factor_strengths = None
    if runs[0].data.kind is DataKind.LINEAR_MODES:
        targets = [linear_modes_target(r.data) for r in runs]
        factor_strengths = np.stack([mode_factor_strengths(f, v) for f, (_, _, v) in zip(starts, targets)])
        modes = (torch.stack([u for u, _, _ in targets]).to(device=device, dtype=training.dtype),
                 torch.stack([v for _, _, v in targets]).to(device=device, dtype=training.dtype))
        strengths = torch.empty(training.spec_train.steps + 1, len(runs), modes[0].shape[-1],
                                dtype=training.dtype, device=device)
    deviation = torch.full((len(training.log_steps), len(runs)), math.nan, dtype=training.dtype, device=device)
    with torch.no_grad():
        w_rule = product(training.params.weights).clone()
    steps = training.spec_train.steps
    started = time.perf_counter()
    while not training.finished:
        step = training.step
        with torch.no_grad():
            w_e = product(training.params.weights)
            if modes is not None:
                strengths[step] = torch.einsum("fok,fod,fdk->fk", modes[0], w_e, modes[1])
            row = training.spec_train.log_row(step)
            if row is not None:
                deviation[row] = (w_e - w_rule).flatten(1).norm(dim=1) / \
                    w_rule.flatten(1).norm(dim=1)
        training.run_step()
        if step < steps:
            w = w_rule.requires_grad_(True)
            out = models.forward(models.Params([w], None), data.x_train, nonlinear=False)
            loss, _ = member_losses(out, data.y_train, False)
            grad, = torch.autograd.grad(loss.sum() * scale, w)
            with torch.no_grad():
                w_rule = end_to_end_update(w.detach(), grad, lr, depth)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    training.elapsed = time.perf_counter() - started
    for p in training.tensors:
        p.requires_grad_(False)
    family = dataclasses.replace(training.result(), rule_deviation=deviation.double().cpu().numpy())
    return DynamicsResult(family, None if modes is None else strengths.double().cpu().numpy(),
                          np.array([time_per_step(r) for r in runs]), factor_strengths)

"""Closed-form predictions for the runs a theory covers, on their logged steps."""

from __future__ import annotations

import math

import numpy as np

from core.measures.overtraining import linear_theory_test_error
from sweeps.spec import DataKind, Init, ModelKind, Objective, Optimizer, RunSpec


def linear_student_time(run: RunSpec) -> float | None:
    """Gradient-flow time per step in Advani & Saxe's units (loss (1/2) sum_mu, tau = 1),
    or None when the run is not a linear student of a linear teacher trained by
    full-batch gradient descent (what their theory covers). GD on the mean squared error
    with step size lr is GD on (1/2) sum with step size 2 lr / P."""
    m, t, d = run.model, run.train, run.data
    covered = (d.kind is DataKind.LINEAR_TEACHER and m.kind is ModelKind.LINEAR and m.depth == 1
               and not m.bias and t.optimizer is Optimizer.GD and t.weight_decay == 0)
    if not covered:
        return None
    return t.lr if t.objective is Objective.HALF_SUM else 2 * t.lr / d.n_train


def init_variance(run: RunSpec) -> float:
    """Variance sigma_0^2 of each initial weight: U(-a, a) has a^2/3, N(0, a^2) has a^2."""
    scale = run.model.init_scale ** 2 / run.data.input_dim
    return scale if run.model.init is Init.GAUSSIAN else scale / 3


def theory_test_loss(run: RunSpec, steps: np.ndarray) -> np.ndarray | None:
    """Advani & Saxe's E_g at every logged step (same units as ``curves.test_loss``: mean
    squared error on noisy test targets), or None if the run is not covered."""
    per_step = linear_student_time(run)
    if per_step is None:
        return None
    noise = run.data.label_noise
    snr = math.inf if noise == 0 else 1 / noise**2
    alpha = run.data.n_train / run.data.input_dim
    return np.asarray(linear_theory_test_error(alpha, snr, steps * per_step, init_variance(run)))

"""Overtraining: when training longer hurts (Advani & Saxe 2017; Nakkiran et al. 2019).

Linear theory (Advani & Saxe, "High-dimensional dynamics of generalization error in neural
networks", 2017). A linear student y_hat = w.x learns a teacher y = w_bar.x + eps from P
samples in N dimensions, x_i ~ N(0, 1/N), w_bar ~ N(0, sigma_w^2), eps ~ N(0, sigma_eps^2),
sigma_w^2 + sigma_eps^2 = 1, SNR = sigma_w^2 / sigma_eps^2, alpha = P/N, by gradient flow
on (1/2) sum_mu (y_mu - y_hat_mu)^2 (tau = 1), from w_0 ~ N(0, sigma_0^2). In the eigenbasis
of X^T X each mode with eigenvalue lambda forgets its initial error as e^{-lambda t} and
fits the noise as (1 - e^{-lambda t}) / sqrt(lambda), so

    E_g(t) = int rho(lambda) [ (sigma_w^2 + sigma_0^2) e^{-2 lambda t}
                               + sigma_eps^2 (1 - e^{-lambda t})^2 / lambda ] d lambda
             + (1 - alpha)_+ (sigma_w^2 + sigma_0^2) + sigma_eps^2,

with rho the Marchenko-Pastur density of X^T X, sqrt((l+ - l)(l - l-)) / (2 pi l) on
l+- = (1 +- sqrt(alpha))^2 (mass min(1, alpha)); the (1 - alpha)_+ term is the frozen
subspace that no sample ever reaches, and the last term the noise of the test targets.
The training error is

    E_t(t) = (1/alpha) int rho(lambda) e^{-2 lambda t} [lambda (sigma_w^2 + sigma_0^2)
             + sigma_eps^2] d lambda + (1 - 1/alpha)_+ sigma_eps^2.

At t -> infinity E_g tends to sigma_eps^2 alpha / (alpha - 1) for alpha > 1 and
diverges at alpha = 1 when there is noise.

The optimal early-stopping time (the paper's question of when to stop) is the
minimiser t* of the closed form itself over continuous t: each mode's term is a convex
quadratic in q = e^{-lambda t}, smallest at t_lambda = ln(1 + lambda S) / lambda with
S = (sigma_w^2 + sigma_0^2) / sigma_eps^2, and t_lambda falls with lambda, so t* lies in
[t_lambda at l+, t_lambda at l-] (t_0 = S), where dE_g/dt goes from negative to positive
(``linear_theory_optimal_stopping``). Without noise E_g falls for ever: t* is infinite
and the infimum is the asymptote. ``theory_test_loss``, ``theory_train_loss`` and
``theory_optimal_stopping`` evaluate these for the runs the theory covers
(``linear_student_time``), in the units of a run's curves.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from theoryscope.core.config import DataKind, Init, ModelKind, Objective, Optimizer, RunSpec

# Quadrature nodes over the Marchenko-Pastur bulk (see _bulk).
NODES = 4000
# Relative width in t at which the search for the optimal stopping time stops.
STOP_RTOL = 1e-12


def variances(snr: float) -> tuple[float, float]:
    """(sigma_w^2, sigma_eps^2) with sigma_w^2 + sigma_eps^2 = 1 and their ratio = snr."""
    if math.isinf(snr):
        return 1.0, 0.0
    return snr / (1.0 + snr), 1.0 / (1.0 + snr)


def _bulk(alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and weights of the continuous part of rho, by the substitution
    lambda = l- + (l+ - l-)(1 - cos theta)/2, under which rho(lambda) d lambda becomes
    (l+ - l-)^2 sin^2(theta) / (8 pi lambda) d theta: smooth at both edges (also at
    alpha = 1, where l- = 0), so the midpoint rule converges fast."""
    lo, hi = (1 - math.sqrt(alpha)) ** 2, (1 + math.sqrt(alpha)) ** 2
    theta = (np.arange(NODES) + 0.5) * math.pi / NODES
    lam = lo + (hi - lo) * (1 - np.cos(theta)) / 2
    weight = (hi - lo) ** 2 * np.sin(theta) ** 2 / (8 * math.pi * lam) * (math.pi / NODES)
    return lam, weight


def _check(alpha: float, snr: float, init_var: float) -> None:
    if not alpha > 0 or not snr > 0 or init_var < 0:
        raise ValueError(f"need alpha > 0, snr > 0, init_var >= 0; got {alpha}, {snr}, {init_var}")


def linear_theory_test_error(alpha: float, snr: float, t, init_var: float = 0.0):
    """E_g(t) of the module docstring (test targets noisy); ``t`` a number or an array."""
    _check(alpha, snr, init_var)
    var_w, var_eps = variances(snr)
    lam, weight = _bulk(alpha)
    times = np.asarray(t, dtype=float)[..., None]
    decay = np.exp(-lam * times)
    learned = (var_w + init_var) * decay**2 + var_eps * (1 - decay) ** 2 / lam
    out = (learned * weight).sum(-1) + max(0.0, 1 - alpha) * (var_w + init_var) + var_eps
    return float(out) if np.ndim(t) == 0 else out


def linear_theory_train_error(alpha: float, snr: float, t, init_var: float = 0.0):
    """E_t(t) of the module docstring: mean squared training residual."""
    _check(alpha, snr, init_var)
    var_w, var_eps = variances(snr)
    lam, weight = _bulk(alpha)
    times = np.asarray(t, dtype=float)[..., None]
    fitted = np.exp(-2 * lam * times) * (lam * (var_w + init_var) + var_eps)
    out = (fitted * weight).sum(-1) / alpha + max(0.0, 1 - 1 / alpha) * var_eps
    return float(out) if np.ndim(t) == 0 else out


def linear_theory_asymptote(alpha: float, snr: float, init_var: float = 0.0) -> float:
    """lim_{t -> inf} E_g: sigma_eps^2 alpha/(alpha-1) for alpha > 1, infinite at alpha = 1
    with noise, and sigma_eps^2 alpha/(1-alpha) + (1-alpha)(sigma_w^2 + sigma_0^2) +
    sigma_eps^2 for alpha < 1 (E[1/lambda] over the bulk is 1/|alpha - 1|)."""
    _check(alpha, snr, init_var)
    var_w, var_eps = variances(snr)
    if alpha > 1:
        return var_eps * alpha / (alpha - 1)
    if alpha == 1:
        return math.inf if var_eps > 0 else 0.0
    return var_eps * alpha / (1 - alpha) + (1 - alpha) * (var_w + init_var) + var_eps


def linear_theory_test_error_rate(alpha: float, snr: float, t, init_var: float = 0.0):
    """dE_g/dt = 2 int rho(lambda) e^{-lambda t} [sigma_eps^2 (1 - e^{-lambda t})
    - lambda (sigma_w^2 + sigma_0^2) e^{-lambda t}] d lambda, the time derivative of
    ``linear_theory_test_error`` on the same quadrature; ``t`` a number or an array."""
    _check(alpha, snr, init_var)
    var_w, var_eps = variances(snr)
    lam, weight = _bulk(alpha)
    decay = np.exp(-lam * np.asarray(t, dtype=float)[..., None])
    rate = 2 * decay * (var_eps * (1 - decay) - lam * (var_w + init_var) * decay)
    out = (rate * weight).sum(-1)
    return float(out) if np.ndim(t) == 0 else out


def _mode_stopping_time(lam: float, signal_over_noise: float) -> float:
    """t_lambda = ln(1 + lambda S) / lambda, where one mode's error is smallest (S at lambda = 0)."""
    return signal_over_noise if lam == 0 else math.log1p(lam * signal_over_noise) / lam


@functools.lru_cache(maxsize=4096)  # the members of a sweep share a few (alpha, snr, init_var)
def linear_theory_optimal_stopping(alpha: float, snr: float, init_var: float = 0.0) -> tuple[float, float]:
    """(t*, E_g(t*)): the time that minimises ``linear_theory_test_error`` over continuous
    t >= 0, and the error there. t* is the sign change of dE_g/dt inside the bracket of the
    module docstring, found by bisection in ln t to a relative width ``STOP_RTOL`` (the
    derivative changes sign once there in every case the tests scan). Without noise
    (snr infinite) E_g decreases for ever: t* = inf and the error is the asymptote."""
    _check(alpha, snr, init_var)
    var_w, var_eps = variances(snr)
    if var_eps == 0:
        return math.inf, linear_theory_asymptote(alpha, snr, init_var)
    ratio = (var_w + init_var) / var_eps
    lo = _mode_stopping_time((1 + math.sqrt(alpha)) ** 2, ratio)
    hi = _mode_stopping_time((1 - math.sqrt(alpha)) ** 2, ratio)
    while hi > lo * (1 + STOP_RTOL):
        mid = math.sqrt(lo * hi)
        if linear_theory_test_error_rate(alpha, snr, mid, init_var) < 0:
            lo = mid
        else:
            hi = mid
    best = math.sqrt(lo * hi)
    return best, linear_theory_test_error(alpha, snr, best, init_var)


def summarize(steps, test_loss) -> dict:
    """Where a test-loss curve is best and what training on cost: best_step (the earliest
    step with the lowest loss), best_test_loss, final_test_loss (at the last step; NaN if
    that point is missing, e.g. after divergence), overtraining_gap (final - best) and
    early_stopping_helps (the gap is positive). Missing points are skipped for the best."""
    steps = np.asarray(steps)
    loss = np.asarray(test_loss, dtype=float)
    final = float(loss[np.argmax(steps)])
    ok = np.isfinite(loss)
    if not ok.any():
        return {"best_step": None, "best_test_loss": math.nan, "final_test_loss": final,
                "overtraining_gap": math.nan, "early_stopping_helps": False}
    best_loss = float(loss[ok].min())
    best_step = int(steps[ok][loss[ok] == best_loss].min())
    gap = final - best_loss
    return {"best_step": best_step, "best_test_loss": best_loss, "final_test_loss": final,
            "overtraining_gap": gap, "early_stopping_helps": bool(gap > 0)}


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
    """Variance sigma_0^2 of each initial weight: U(-a, a) ("default") has a^2/3; N(0, a^2)
    has a^2, which is also the depth-1 start of the end-to-end inits of experiment
    "linear-dynamics" (W0 = init_scale G / sqrt(N), ``core.linear_start``)."""
    scale = run.model.init_scale ** 2 / run.data.input_dim
    return scale / 3 if run.model.init is Init.DEFAULT else scale


@dataclass(frozen=True)
class LinearStudent:
    """A covered run in the theory's terms: alpha = P/N, SNR = 1/label_noise^2 (infinite
    without noise), sigma_0^2, and gradient-flow time per GD step."""

    alpha: float
    snr: float
    init_var: float
    time_per_step: float


def linear_student(run: RunSpec) -> LinearStudent | None:
    """The run as Advani & Saxe's linear student, or None if their theory does not cover it."""
    per_step = linear_student_time(run)
    if per_step is None:
        return None
    noise = run.data.label_noise
    return LinearStudent(alpha=run.data.n_train / run.data.input_dim, snr=math.inf if noise == 0 else 1 / noise**2,
                         init_var=init_variance(run), time_per_step=per_step)


def theory_test_loss(run: RunSpec, steps: np.ndarray) -> np.ndarray | None:
    """Advani & Saxe's E_g at every logged step (same units as ``curves.test_loss``: mean
    squared error on noisy test targets), or None if the run is not covered."""
    student = linear_student(run)
    if student is None:
        return None
    times = np.asarray(steps) * student.time_per_step
    return np.asarray(linear_theory_test_error(student.alpha, student.snr, times, student.init_var))


def theory_train_loss(run: RunSpec, steps: np.ndarray) -> np.ndarray | None:
    """Advani & Saxe's E_t at every logged step (same units as ``curves.train_loss``: mean
    squared error on the run's noisy training targets), or None if the run is not covered."""
    student = linear_student(run)
    if student is None:
        return None
    times = np.asarray(steps) * student.time_per_step
    return np.asarray(linear_theory_train_error(student.alpha, student.snr, times, student.init_var))


def theory_optimal_stopping(run: RunSpec) -> tuple[float | None, float] | None:
    """(step*, E_g at it): ``linear_theory_optimal_stopping``'s t* as a (fractional) GD step,
    t* / time per step, None when t* is infinite (no label noise: the error falls for
    ever, and the second entry is its limit); None if the run is not covered."""
    student = linear_student(run)
    if student is None:
        return None
    best_time, best = linear_theory_optimal_stopping(student.alpha, student.snr, student.init_var)
    return (None if math.isinf(best_time) else best_time / student.time_per_step), best

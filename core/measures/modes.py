"""Mode timing of deep linear nets (Saxe, McClelland & Ganguli 2014: the three-layer
net, then deeper nets of balanced weights). With whitened inputs and a decoupled start each factor acts on mode a as a scalar, W_i ~
a_i r_i r_{i-1}^T, u = a_1 ... a_N, and gradient flow (tau = 1) on the factors reads
da_i/dt = (u / a_i)(s - u). So d(a_i^2)/dt = 2u(s - u) for every i: the differences
a_i^2 - a_j^2 are conserved (Saxe et al.'s a^2 - b^2 at depth 2; the balancedness of
Arora, Cohen & Hazan 2018 in general), and u(t) obeys one ODE,

    du/dt = (s - u) u^2 sum_i 1 / a_i^2(u),

which for a balanced start (a_i^2 = u^{2/N}) is Saxe et al.'s du/dt = N u^{2-2/N} (s - u)
(their N_l - 1 = our depth N) and at depth 2 with a^2 - b^2 = 2 beta reads
du/dt = 2 sqrt(u^2 + beta^2) (s - u). ``mode_time`` is the time this ODE takes from u0 to
u_f: in closed form at depths 1 and 2, by quadrature beyond.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

# Gauss-Legendre nodes per panel of ``mode_time_by_quadrature`` and the longest panel in
# ln a_k^2: with the panels no longer than the distance to the pole at u = s, the rule's
# error is far below 1e-12 relative (the tests hold it to 1e-11 against the closed forms).
PANEL_NODES = 20
PANEL_LENGTH = 1.0


def mode_time(s: float, strengths, u_f: float | None = None) -> float:
    """Gradient-flow time (tau = 1) for a mode of singular value s > 0, whose factors start
    at ``strengths`` a_1(0), ..., a_N(0) (u0 their product), to reach u_f (default s/2):
    0 if u0 >= u_f already. Depth 1: ln[(s - u0) / (s - u_f)] (any u0 < u_f). Depth 2
    (a, b > 0, beta = (a^2 - b^2)/2, R = sqrt(s^2 + beta^2)): [F(u_f) - F(u0)] / (2R),
    F(u) = ln[(s u + beta^2 + R sqrt(u^2 + beta^2)) / (s - u)], which at beta = 0 is
    Saxe et al.'s (1/2s) ln[u_f (s - u0) / (u0 (s - u_f))]. Depth >= 3: by quadrature."""
    a = np.asarray(strengths, dtype=float)
    u_f = s / 2 if u_f is None else u_f
    u0 = float(np.prod(a))
    if not 0 < u_f < s or (len(a) > 1 and not (a > 0).all()):
        raise ValueError(f"need 0 < u_f < s and positive factor strengths, got s={s}, u_f={u_f}, strengths={a}")
    if u0 >= u_f:
        return 0.0
    if len(a) == 1:
        return math.log((s - u0) / (s - u_f))
    if len(a) > 2:
        return mode_time_by_quadrature(s, a, u_f)
    beta2 = ((a[0] ** 2 - a[1] ** 2) / 2) ** 2
    root = math.sqrt(s * s + beta2)

    def primitive(u: float) -> float:
        return math.log((s * u + beta2 + root * math.sqrt(u * u + beta2)) / (s - u))

    return (primitive(u_f) - primitive(u0)) / (2 * root)


def balanced_mode_time(s: float, u0: float, depth: int, u_f: float | None = None) -> float:
    """``mode_time`` from a balanced start, a_i(0) = u0^{1/N}: the integral of
    du / (N u^{2-2/N} (s - u)) from u0 to u_f (Saxe et al. 2014, deeper nets)."""
    return mode_time(s, [u0 ** (1 / depth)] * depth, u_f)


def mode_time_by_quadrature(s: float, strengths, u_f: float) -> float:
    """The time of ``mode_time`` for positive strengths (0 < u0 < u_f < s), as an integral
    over m = a_k^2 of the factor k that starts smallest: with e_i = a_i(0)^2 - a_k(0)^2 >= 0,
    u(m) = prod_i sqrt(m + e_i) and dm/dt = 2u(s - u), so t = int dm / (2u(m)(s - u(m))),
    taken in x = ln m by Gauss-Legendre panels (``PANEL_NODES``) no longer than
    ``PANEL_LENGTH`` nor than the distance from ln m(u_f) to the pole at ln m(s)."""
    squares = np.asarray(strengths, dtype=float) ** 2
    offsets = squares - squares.min()

    def log_u(x: np.ndarray) -> np.ndarray:
        return 0.5 * np.log(np.exp(x)[..., None] + offsets).sum(-1)

    x0 = math.log(squares.min())
    x_f, x_s = (_log_m_at(log_u, x0, math.log(level), len(squares)) for level in (u_f, s))
    panels = max(1, math.ceil((x_f - x0) / min(PANEL_LENGTH, x_s - x_f)))
    nodes, weights = np.polynomial.legendre.leggauss(PANEL_NODES)
    edges = np.linspace(x0, x_f, panels + 1)
    half = np.diff(edges)[:, None] / 2
    x = (edges[:-1, None] + half * (nodes + 1)).ravel()
    u = np.exp(log_u(x))
    return float((np.exp(x) / (2 * u * (s - u)) * (half * weights).ravel()).sum())


def _log_m_at(log_u, x0: float, log_level: float, depth: int) -> float:
    """ln m where ln u(m) = log_level, by bisection: u grows with m, u(e^x0) is below the
    level and u(m) >= m^{N/2} puts the root below (2/N) log_level (or at x0)."""
    lo, hi = x0, max(x0, 2 * log_level / depth)
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if log_u(np.array(mid)) < log_level else (lo, mid)
    return (lo + hi) / 2


def mode_factor_strengths(factors: Sequence[torch.Tensor], v: torch.Tensor) -> np.ndarray:
    """Strength ``[N, k]`` of every factor on every mode of a decoupled start: a_i for mode
    a is ||W_i ... W_1 v_a|| / ||W_{i-1} ... W_1 v_a|| (factors W_i ~ a_i r_i r_{i-1}^T on
    the mode; ``v [d, k]`` the target's right singular vectors)."""
    norms, x = [v.norm(dim=0)], v
    for w in factors:
        x = w @ x
        norms.append(x.norm(dim=0))
    norms = torch.stack(norms).double().cpu().numpy()
    return norms[1:] / norms[:-1]

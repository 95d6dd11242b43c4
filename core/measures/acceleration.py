"""Implicit acceleration by overparameterization (Arora, Cohen & Hazan, "On the optimization
of deep networks: implicit acceleration by overparameterization", ICML 2018) and the
learning dynamics of deep linear nets (Saxe, McClelland & Ganguli, ICLR 2014).

Arora et al.'s Theorem 1: gradient flow on the factors of W_e = W_N ... W_1 started from a
balanced point (W_{j+1}^T W_{j+1} = W_j W_j^T) moves the end-to-end matrix by

    dW_e/dt = - sum_{j=1..N} (W_e W_e^T)^{(j-1)/N} grad L(W_e) (W_e^T W_e)^{(N-j)/N},

a preconditioned, momentum-like rule on W_e itself; ``end_to_end_update`` is its Euler
step. With one output (W_e a row w) it reads ||w||^{2-2/N} (grad + (N-1) Proj_w grad)
(their Claim 1), ``single_output_update``.

Saxe et al.'s closed form: with whitened inputs, a depth-2 linear net started small and
decoupled learns the input-output mode of singular value s along a sigmoid
u(t) = s e^{2st/tau} / (e^{2st/tau} - 1 + s/u_0), reaching u_f at
t = (tau / 2s) ln[u_f (s - u_0) / (u_0 (s - u_f))]  (``saxe_mode_time``).

Every function takes one problem or a family (a leading ``F`` on every tensor).
"""

from __future__ import annotations

import math

import numpy as np
import torch

Tensor = torch.Tensor


def psd_power(a: Tensor, exponent: float) -> Tensor:
    """A^exponent of symmetric positive semi-definite ``a [..., n, n]`` through a symmetric
    eigendecomposition; A^0 = I. Eigenvalues within rounding of 0 (below n x machine
    epsilon x the largest) are taken as 0: a fractional power would blow rounding noise
    of 1e-16 up to 1e-5 at exponent 1/3."""
    return psd_powers(a, [exponent])[0]


def psd_powers(a: Tensor, exponents: list[float]) -> list[Tensor]:
    """``psd_power(a, e)`` for every e, from one eigendecomposition."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    values, vectors = torch.linalg.eigh((a + a.transpose(-1, -2)) / 2)
    floor = a.shape[-1] * torch.finfo(a.dtype).eps * values.abs().amax(dim=-1, keepdim=True)
    kept = torch.where(values > floor, values, 0.0)
    return [eye.clone() if e == 0 else (vectors * (kept ** e).unsqueeze(-2)) @ vectors.transpose(-1, -2)
            for e in exponents]


def end_to_end_update(w_e: Tensor, grad: Tensor, lr: float | Tensor, depth: int) -> Tensor:
    """W_e - lr * sum_{j=1..N} (W_e W_e^T)^{(j-1)/N} grad (W_e^T W_e)^{(N-j)/N}
    (Theorem 1), for ``w_e`` and ``grad`` of shape ``[..., out, in]``; ``lr`` a number or a
    tensor broadcasting against ``[...]``."""
    if depth < 1:
        raise ValueError(f"depth: expected an integer >= 1, got {depth}")
    left = psd_powers(w_e @ w_e.transpose(-1, -2), [(j - 1) / depth for j in range(1, depth + 1)])
    right = psd_powers(w_e.transpose(-1, -2) @ w_e, [(depth - j) / depth for j in range(1, depth + 1)])
    step = sum(a @ grad @ b for a, b in zip(left, right))
    lr = torch.as_tensor(lr, dtype=w_e.dtype, device=w_e.device)
    return w_e - lr.view(*lr.shape, 1, 1) * step


def single_output_update(w: Tensor, grad: Tensor, lr: float | Tensor, depth: int) -> Tensor:
    """The rule for one output, w of shape ``[..., d]``:
    w - lr ||w||^{2-2/N} (grad + (N-1) (<w, grad> / ||w||^2) w)."""
    norm2 = (w * w).sum(dim=-1, keepdim=True)
    projected = (w * grad).sum(dim=-1, keepdim=True) / norm2.clamp_min(torch.finfo(w.dtype).tiny) * w
    lr = torch.as_tensor(lr, dtype=w.dtype, device=w.device)
    return w - lr.unsqueeze(-1) * norm2 ** (1 - 1 / depth) * (grad + (depth - 1) * projected)


def balanced_factors(w_e: Tensor, depth: int, width: int) -> list[Tensor]:
    """Factors W_1, ..., W_N (hidden width ``width``) of ``w_e [..., out, in]`` that are
    balanced, W_{j+1}^T W_{j+1} = W_j W_j^T: with w_e = U S V^T, W_1 = S^{1/N} V^T,
    W_j = S^{1/N} (1 < j < N), W_N = U S^{1/N}, padded with zeros to ``width``. Needs
    rank(w_e) <= width."""
    if depth == 1:
        return [w_e.clone()]
    u, s, vh = torch.linalg.svd(w_e, full_matrices=False)
    r = s.shape[-1]
    if width < r and bool((s[..., width:] > 0).any()):
        raise ValueError(f"width {width} is smaller than the rank of the end-to-end matrix")
    k = min(r, width)
    root = s[..., :k] ** (1 / depth)
    batch = w_e.shape[:-2]
    first = w_e.new_zeros(*batch, width, w_e.shape[-1])
    first[..., :k, :] = root.unsqueeze(-1) * vh[..., :k, :]
    middle = w_e.new_zeros(*batch, width, width)
    middle[..., range(k), range(k)] = root
    last = w_e.new_zeros(*batch, w_e.shape[-2], width)
    last[..., :, :k] = u[..., :, :k] * root.unsqueeze(-2)
    return [first] + [middle.clone() for _ in range(depth - 2)] + [last]


def identity_factors(w_e: Tensor, depth: int, width: int) -> list[Tensor]:
    """Identity-like factors of ``w_e [..., out, in]``: W_1 carries w_e in its first ``out``
    rows, the middle factors are identities, W_N selects the first ``out`` hidden units
    (width >= out). For one output and width 1 this is w_1 = w_e with scalars 1."""
    if depth == 1:
        return [w_e.clone()]
    out = w_e.shape[-2]
    if width < out:
        raise ValueError(f"width {width} is smaller than the {out} outputs")
    batch = w_e.shape[:-2]
    first = w_e.new_zeros(*batch, width, w_e.shape[-1])
    first[..., :out, :] = w_e
    eye = torch.eye(width, dtype=w_e.dtype, device=w_e.device).expand(*batch, width, width)
    last = torch.eye(out, width, dtype=w_e.dtype, device=w_e.device).expand(*batch, out, width)
    return [first] + [eye.clone() for _ in range(depth - 2)] + [last.clone()]


def product(factors: list[Tensor]) -> Tensor:
    """W_N ... W_1."""
    out = factors[0]
    for w in factors[1:]:
        out = w @ out
    return out


def lp_loss(w: Tensor, x: Tensor, y: Tensor, p: int) -> Tensor:
    """(1/n) sum_i |x_i^T w - y_i|^p / p for ``w [..., d]``, ``x [n, d]`` (or ``[..., n, d]``),
    ``y [n]``: the l_p regression loss of Arora et al. (Section 8)."""
    residual = (x @ w.unsqueeze(-1)).squeeze(-1) - y
    return (residual.abs() ** p).mean(dim=-1) / p


def lp_optimum(x: Tensor, y: Tensor, p: int, max_iter: int = 200) -> tuple[Tensor, float]:
    """The minimizer and minimum L* of the convex depth-1 problem, in float64.

    p = 2: least squares (``torch.linalg.lstsq``). p > 2: damped Newton's method from the
    least-squares solution, with gradient (1/n) X^T (|r|^{p-1} sign r) and Hessian
    ((p-1)/n) X^T diag(|r|^{p-2}) X (positive definite unless the fit is exact),
    backtracking on the loss, until the Newton decrement g^T H^-1 g falls below 1e-28 x
    max(1, L) or the step no longer lowers the loss.
    """
    if p < 2:
        raise ValueError(f"p: expected an integer >= 2, got {p}")
    x, y = x.double(), y.double()
    w = torch.linalg.lstsq(x, y.unsqueeze(-1)).solution.squeeze(-1)
    loss = float(lp_loss(w, x, y, p))
    if p == 2:
        return w, loss
    n = x.shape[0]
    for _ in range(max_iter):
        r = x @ w - y
        grad = x.T @ (r.abs() ** (p - 1) * r.sign()) / n
        hess = (p - 1) * (x.T * r.abs() ** (p - 2)) @ x / n
        hess = hess + 1e-14 * hess.diagonal().mean().clamp_min(1e-300) * torch.eye(x.shape[1], dtype=x.dtype)
        direction = torch.linalg.solve(hess, grad)
        decrement = float(grad @ direction)
        if decrement <= 1e-28 * max(1.0, loss):
            break
        step, improved = 1.0, False
        while step > 1e-12:
            candidate = w - step * direction
            new = float(lp_loss(candidate, x, y, p))
            if new < loss:
                w, loss, improved = candidate, new, True
                break
            step /= 2
        if not improved:
            break
    return w, loss


def steps_to_target(losses: Tensor, optimum: float | Tensor, target: float | Tensor) -> Tensor:
    """First step t with L(t) - L* <= target (L(0) - L*), from losses ``[T, ...]`` logged at
    every step (row 0 the initial loss; ``optimum`` and ``target`` broadcast against
    ``[...]``); -1 where never reached."""
    optimum = torch.as_tensor(optimum, dtype=losses.dtype, device=losses.device)
    target = torch.as_tensor(target, dtype=losses.dtype, device=losses.device)
    threshold = optimum + target * (losses[0] - optimum)
    hit = losses <= threshold
    first = hit.int().argmax(dim=0)
    return torch.where(hit.any(dim=0), first, -1)


def saxe_mode_time(s: float, u0: float, u_f: float | None = None, tau: float = 1.0) -> float:
    """Time for a mode of strength s to grow from u0 to u_f (default s/2) in a depth-2
    linear net with whitened inputs (Saxe et al. 2014, eq. 6):
    t = (tau / 2s) ln[u_f (s - u0) / (u0 (s - u_f))]."""
    u_f = s / 2 if u_f is None else u_f
    if not 0 < u0 < u_f < s:
        raise ValueError(f"need 0 < u0 < u_f < s, got u0={u0}, u_f={u_f}, s={s}")
    return tau / (2 * s) * math.log(u_f * (s - u0) / (u0 * (s - u_f)))


def crossing_step(values: np.ndarray, level: float) -> float | None:
    """First (fractional) step at which ``values [T]`` reaches ``level``, interpolated
    linearly between the two steps around the crossing; None if it never does (the
    measured counterpart of ``saxe_mode_time``, in steps)."""
    above = np.nonzero(values >= level)[0]
    if len(above) == 0:
        return None
    k = int(above[0])
    if k == 0:
        return 0.0
    before, after = values[k - 1], values[k]
    return k - 1 + float((level - before) / (after - before))

"""Connectivity of solutions: the loss along paths joining two parameter vectors.

A loss has no spurious valley when every sublevel set is connected (Freeman & Bruna,
"Topology and geometry of half-rectified network optimization", ICLR 2017). For two
solutions theta_a, theta_b and a path gamma from one to the other, the *barrier*

    B(gamma) = max_t L(gamma(t)) - max(L(theta_a), L(theta_b))

is how far the loss must rise to cross from one to the other along gamma. The smallest B
over all paths, reached on the minimum-energy path, is 0 when both lie in one valley.
Each estimator below returns the barrier along one path, so an upper bound on it:

* ``linear_barrier``: the straight segment, the classical baseline.
* ``string_barrier``: a chain of beads relaxed toward the minimum-energy path by the
  simplified string method (E, Ren & Vanden-Eijnden, J. Chem. Phys. 126, 164103, 2007).
  Every step moves each interior bead down its gradient, then slides the beads back to
  equal arc length along the chain, which cancels the gradient's component along the
  path (the part that would drain the beads into the endpoints). This is the relaxation
  Draxler et al. (ICML 2018) use as AutoNEB, without the bead insertion.
* ``bezier_barrier``: a quadratic Bezier curve (1-t)^2 a + 2t(1-t) c + t^2 b whose
  control point c is trained on the loss at t ~ U[0, 1] (Garipov et al., "Loss surfaces,
  mode connectivity, and fast ensembling of DNNs", NeurIPS 2018).

Two numbers judge a found path (``relative_barrier``, ``barrier_change``). Freeman &
Bruna's Dynamic String Sampling (Section 4, Figure 2) connects two models of loss about
L0 when a string between them stays below alpha L0, so the barrier is read relative to
the worse end: B / max(L(theta_a), L(theta_b)). And a relaxed string is only as good as
its relaxation: the barrier is recorded through it (``history``), and its fall over the
last stretch says whether more steps would have lowered it.

The string and the control point start on the segment, bent by a small random
displacement perpendicular to it (``perturbation`` x ||theta_b - theta_a|| at the
middle). On a segment through a symmetric stationary point, such as the top of a bump
between the two ends, the gradient points along the segment and an unbent string would
never leave it.

Every function takes one pair (``theta_a``, ``theta_b`` 1-D) or a family of pairs
(``[P, D]``), relaxed together as one stacked problem: pairs never interact, so each gets
exactly what it would get alone (its random bend comes from its own seed). ``loss_fn``
maps one flat parameter vector to a scalar tensor; with ``batched=True`` it maps points
``[P, M, D]`` (M points of each pair) to losses ``[P, M]`` in one call.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch

from theoryscope.core.config import Optimizer
from theoryscope.core.optim import Hyper, StackedOptimizer
from theoryscope.core.seeding import generator

Tensor = torch.Tensor
BatchLoss = Callable[[Tensor], Tensor]  # points [P, M, D] -> losses [P, M]
_TINY = 1e-30


def linear_barrier(loss_fn: Callable, theta_a: Tensor, theta_b: Tensor, points: int = 25,
                   batched: bool = False) -> float | Tensor:
    """Max of the loss on ``points`` evenly spaced points of the segment (ends included),
    minus the larger end loss: a float for one pair, ``[P]`` for a family."""
    if points < 2:
        raise ValueError(f"points: expected an integer >= 2, got {points}")
    a, b, single = _pairs(theta_a, theta_b)
    path = segment(a, b, points)
    with torch.no_grad():
        losses = _batch_loss(loss_fn, batched, 1)(path)
    barrier = _barrier(losses)
    return float(barrier[0]) if single else barrier


def string_barrier(loss_fn: Callable, theta_a: Tensor, theta_b: Tensor, beads: int = 8, *,
                   steps: int = 500, lr: float | Tensor = 0.01, optimizer: str | Optimizer = "gd",
                   hyper: Hyper | None = None, perturbation: float = 0.05, seed: int | Sequence[int] = 0,
                   refine: int = 8, restarts: int = 1, history: int = 10, batched: bool = False) -> dict:
    """Relax a string of ``beads`` interior beads between the two ends for ``steps`` steps
    and measure the loss along it.

    Each step applies ``optimizer`` ("gd", "sgd" or "adam", PyTorch's update rules) with
    learning rate ``lr`` (a number, or ``[P]`` per pair; ``hyper`` gives every setting
    per pair instead) to the interior beads, then re-spaces them evenly by arc length.
    The loss is read at ``refine`` points per segment between consecutive beads. With
    ``restarts`` > 1, that many strings with independent random bends relax side by side
    and the one with the lowest barrier is kept (each is a local minimum-energy path; a
    bend can lead to a higher one).

    Returns a dict (tensors with a leading ``P`` for a family; floats for one pair):
    ``barrier``; ``path`` (``beads + 2`` rows: theta_a, the beads, theta_b);
    ``normalized_length`` (length of the bead polyline / ||theta_b - theta_a||, 1 for a
    straight line); ``beads``; ``loss_a``, ``loss_b``, ``max_loss``; ``t`` and
    ``losses``, the loss along the path at arc-length fractions t; ``stopped_step``, the
    step at which a pair stopped because a bead's loss was no longer finite (its last
    finite string is kept), or -1; ``history``, the barrier (read as ``barrier`` is) of
    the string after each of ``history_steps``, ``history + 1`` evenly spaced steps from
    0 to ``steps`` (fewer when ``steps < history``), whose last entry is ``barrier``.
    ``barrier_change`` turns it into a convergence diagnostic.
    """
    _check_positive(beads=beads, steps=steps, refine=refine, restarts=restarts, history=history)
    a, b, single = _pairs(theta_a, theta_b)
    loss = _batch_loss(loss_fn, batched, restarts)
    seeds = _seeds(seed, a.shape[0])
    hyper = _repeat_hyper(_hyper(hyper, lr, a), restarts * beads)
    a, b = _repeat(a, restarts), _repeat(b, restarts)
    fractions = torch.linspace(0, 1, beads + 2, dtype=a.dtype, device=a.device)
    inner = fractions[1:-1].view(1, -1, 1)
    bend = _bend(a, b, perturbation, seeds, restarts, "string")
    start = a.unsqueeze(1) + inner * (b - a).unsqueeze(1) + torch.sin(math.pi * inner) * bend.unsqueeze(1)

    def respace(interior: Tensor) -> Tensor:
        return equal_arc_length(_chain(a, interior, b))[:, 1:-1]

    def barrier_now(interior: Tensor) -> Tensor:
        return _path_barrier(loss, _chain(a, interior, b), refine)

    record_at = history_steps(steps, history)
    interior, stopped, trace = _descend(loss, start, steps, hyper, Optimizer(optimizer), after_step=respace,
                                        record=barrier_now, record_at=record_at)
    out = _measure_path(loss, _chain(a, interior, b), refine)
    out = _best_of(out | {"stopped_step": stopped, "history": trace}, restarts)
    out |= {"beads": beads, "history_steps": record_at}
    return _single(out) if single else out


def bezier_barrier(loss_fn: Callable, theta_a: Tensor, theta_b: Tensor, *, steps: int = 500,
                   samples: int = 8, lr: float | Tensor = 0.01, optimizer: str | Optimizer = "gd",
                   hyper: Hyper | None = None, perturbation: float = 0.05, seed: int | Sequence[int] = 0,
                   points: int = 65, restarts: int = 1, history: int = 10, batched: bool = False) -> dict:
    """Train the control point of a quadratic Bezier curve between the ends for ``steps``
    steps, each on the mean loss at ``samples`` values of t (stratified draws from U[0, 1]),
    and measure the loss at ``points`` evenly spaced values of t.

    ``restarts`` and ``history`` work as in ``string_barrier``. Returns the keys of
    ``string_barrier``; ``path`` is the curve at those ``points``, ``beads`` is 1 (the
    control point), ``t`` is the curve parameter.
    """
    _check_positive(steps=steps, samples=samples, restarts=restarts, history=history)
    if points < 3:
        raise ValueError(f"points: expected an integer >= 3, got {points}")
    a, b, single = _pairs(theta_a, theta_b)
    loss = _batch_loss(loss_fn, batched, restarts)
    seeds = _seeds(seed, a.shape[0])
    hyper = _repeat_hyper(_hyper(hyper, lr, a), restarts)
    a, b = _repeat(a, restarts), _repeat(b, restarts)
    control = (a + b) / 2 + _bend(a, b, perturbation, seeds, restarts, "bezier")
    # Each curve's draws of t for every step, from its own stream, made once up front.
    jitter = torch.stack([torch.rand(steps, samples, generator=generator(s, "valley", "bezier-t", r),
                                     dtype=torch.float64) for s in seeds for r in range(restarts)]).to(a)
    strata = torch.arange(samples, dtype=a.dtype, device=a.device)
    step_of = iter(range(steps + 1))

    def sampled_loss(c: Tensor) -> Tensor:  # the mean loss at this step's t draws, [P, 1]
        k = min(next(step_of), steps - 1)
        t = (strata + jitter[:, k]) / samples  # [P, samples], one draw in each stratum
        return loss(bezier(a, c.squeeze(1), b, t)).mean(dim=1, keepdim=True)

    t = torch.linspace(0, 1, points, dtype=a.dtype, device=a.device).expand(a.shape[0], -1)

    def barrier_now(c: Tensor) -> Tensor:
        return _path_barrier(loss, bezier(a, c.squeeze(1), b, t), refine=1)

    record_at = history_steps(steps, history)
    control, stopped, trace = _descend(sampled_loss, control.unsqueeze(1), steps, hyper, Optimizer(optimizer),
                                       record=barrier_now, record_at=record_at)
    out = _measure_path(loss, bezier(a, control.squeeze(1), b, t), refine=1)
    out = _best_of(out | {"t": t, "stopped_step": stopped, "history": trace}, restarts)
    out |= {"beads": 1, "history_steps": record_at}
    return _single(out) if single else out


def segment(a: Tensor, b: Tensor, points: int) -> Tensor:
    """``points`` evenly spaced points from a to b: ``[P, points, D]``."""
    t = torch.linspace(0, 1, points, dtype=a.dtype, device=a.device).view(1, -1, 1)
    return a.unsqueeze(1) + t * (b - a).unsqueeze(1)


def bezier(a: Tensor, c: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Points ``[P, M, D]`` of the quadratic Bezier curves with ends a, b and control
    point c (each ``[P, D]``) at parameters t ``[P, M]``."""
    t = t.unsqueeze(-1)
    return (1 - t) ** 2 * a.unsqueeze(1) + 2 * t * (1 - t) * c.unsqueeze(1) + t**2 * b.unsqueeze(1)


def history_steps(steps: int, history: int) -> tuple[int, ...]:
    """The relaxation steps at which the barrier is recorded: ``history + 1`` evenly
    spaced steps from 0 to ``steps`` (floor of k steps / history), without repeats."""
    return tuple(sorted({k * steps // history for k in range(history + 1)}))


def end_loss(loss_a: Tensor | float, loss_b: Tensor | float, floor: Tensor | float = 0.0) -> Tensor:
    """max(L(theta_a), L(theta_b), floor): the loss the barrier is measured against."""
    loss_a, loss_b, floor = _tensors(loss_a, loss_b, floor)
    return torch.maximum(torch.maximum(loss_a, loss_b), floor)


def relative_barrier(barrier: Tensor | float, loss_a: Tensor | float, loss_b: Tensor | float,
                     floor: Tensor | float = 0.0) -> Tensor:
    """barrier / max(L(theta_a), L(theta_b), floor).

    Freeman & Bruna (ICLR 2017, Section 4, Dynamic String Sampling) call two models of
    loss L0 connected when a string between them stays below alpha L0: the path lies in
    the sublevel set at (1 + r) max(L(theta_a), L(theta_b)) exactly when its relative
    barrier is at most r. Ends that fit their data (end losses near 0) would make any
    numerical wiggle of the path an unbounded ratio; ``floor`` is the smallest loss the
    barrier is compared with. A zero denominator gives 0 for a zero barrier, else inf.
    """
    return _ratio(*_tensors(barrier, end_loss(loss_a, loss_b, floor)))


def barrier_change(history: Tensor, loss_a: Tensor | float, loss_b: Tensor | float,
                   floor: Tensor | float = 0.0) -> Tensor:
    """How much the barrier fell over the last stretch of the relaxation, relative as
    ``relative_barrier`` is: (history[..., -2] - history[..., -1]) / max(L_a, L_b, floor).

    ``history`` is the recorded barrier (``string_barrier``'s key of that name), so the
    stretch is the last 1/history of the steps. Near 0 the string has settled on a local
    minimum-energy path (a stationary point of the string method, E, Ren &
    Vanden-Eijnden 2007); a large positive value says more steps would lower the barrier.
    """
    return _ratio(*_tensors(history[..., -2] - history[..., -1], end_loss(loss_a, loss_b, floor)))


def polyline(path: Tensor, refine: int) -> tuple[Tensor, Tensor]:
    """Points along the polyline through ``path [P, K, D]``: ``refine`` per segment plus
    the last point, ``[P, (K-1) refine + 1, D]``, and their arc-length fractions ``[P, M]``."""
    starts, ends = path[:, :-1], path[:, 1:]
    r = torch.arange(refine, dtype=path.dtype, device=path.device).view(1, 1, -1, 1) / refine
    inner = (starts.unsqueeze(2) + r * (ends - starts).unsqueeze(2)).flatten(1, 2)
    points = torch.cat([inner, path[:, -1:]], dim=1)
    arc = torch.cat([points.new_zeros(points.shape[0], 1),
                     (points[:, 1:] - points[:, :-1]).norm(dim=-1).cumsum(dim=1)], dim=1)
    return points, arc / arc[:, -1:].clamp_min(_TINY)


def normalized_length(path: Tensor) -> Tensor:
    """Length of the polyline through ``path [P, K, D]`` over the distance of its ends."""
    length = (path[:, 1:] - path[:, :-1]).norm(dim=-1).sum(dim=1)
    return length / (path[:, -1] - path[:, 0]).norm(dim=-1)


def equal_arc_length(chain: Tensor) -> Tensor:
    """Move the points of each chain ``[P, K, D]`` along its polyline to equal arc-length
    spacing (ends fixed): the reparametrization step of the string method."""
    p, k, d = chain.shape
    lengths = (chain[:, 1:] - chain[:, :-1]).norm(dim=-1)
    s = torch.cat([lengths.new_zeros(p, 1), lengths.cumsum(dim=1)], dim=1)
    s = s / s[:, -1:].clamp_min(_TINY)
    target = torch.linspace(0, 1, k, dtype=chain.dtype, device=chain.device).expand(p, -1).contiguous()
    seg = (torch.searchsorted(s.contiguous(), target, right=True) - 1).clamp(0, k - 2)
    lo, hi = s.gather(1, seg), s.gather(1, seg + 1)
    frac = ((target - lo) / (hi - lo).clamp_min(_TINY)).clamp(0, 1).unsqueeze(-1)
    index = seg.unsqueeze(-1).expand(-1, -1, d)
    start, end = chain.gather(1, index), chain.gather(1, index + 1)
    out = start + frac * (end - start)
    out[:, 0], out[:, -1] = chain[:, 0], chain[:, -1]
    return out


def _path_barrier(loss: BatchLoss, path: Tensor, refine: int) -> Tensor:
    points, _ = polyline(path, refine)
    with torch.no_grad():
        return _barrier(loss(points))


def _measure_path(loss: BatchLoss, path: Tensor, refine: int) -> dict:
    points, t = polyline(path, refine)
    with torch.no_grad():
        losses = loss(points)
    return {"barrier": _barrier(losses), "path": path, "normalized_length": normalized_length(path),
            "loss_a": losses[:, 0], "loss_b": losses[:, -1], "max_loss": losses.amax(dim=1),
            "t": t, "losses": losses}


def _descend(objective: Callable[[Tensor], Tensor], start: Tensor, steps: int, hyper: Hyper,
             kind: Optimizer, after_step: Callable[[Tensor], Tensor] | None = None,
             record: Callable[[Tensor], Tensor] | None = None,
             record_at: Sequence[int] = ()) -> tuple[Tensor, Tensor, Tensor]:
    """Minimize each pair's summed ``objective`` over its points ``[P, K, D]`` by a stacked
    optimizer (one member per point). A pair whose objective stops being finite gets back
    its last finite points and stays there. ``record(points) -> [P]`` is read after each
    of the ``record_at`` steps (step s: after s updates). Returns the points, the stopping
    steps and the records ``[P, len(record_at)]``."""
    p, k, d = start.shape
    points = start.detach().reshape(p * k, d).clone()
    optimizer = StackedOptimizer(kind, hyper, [points])
    active = torch.ones(p, dtype=torch.bool, device=start.device)
    stopped = torch.full((p,), -1, dtype=torch.long, device=start.device)
    last_good = points.clone()
    records: list[Tensor] = []
    for step in range(steps + 1):
        points.requires_grad_(step < steps)
        with torch.set_grad_enabled(step < steps):
            values = objective(points.view(p, k, d))  # [P, K] (or [P, 1])
        bad = active & ~torch.isfinite(values.detach()).all(dim=1)
        stopped = torch.where(bad, step, stopped)
        active = active & ~bad
        grad = None
        if step < steps:
            grad, = torch.autograd.grad(torch.where(active.unsqueeze(1), values, 0.0).sum(), points)
        with torch.no_grad():
            points.copy_(torch.where(bad.repeat_interleave(k).unsqueeze(1), last_good, points))
            last_good.copy_(points)
            if record is not None and step in record_at:
                records.append(record(points.view(p, k, d)))
        if grad is None:
            break
        moving = active.repeat_interleave(k)  # per point: whether its pair still relaxes
        optimizer.step([points], [grad], moving)
        if after_step is not None:
            with torch.no_grad():
                moved = after_step(points.view(p, k, d)).reshape(p * k, d)
                points.copy_(torch.where(moving.unsqueeze(1), moved, points))
    history = torch.stack(records, dim=1) if records else start.new_zeros(p, 0)
    return points.detach().view(p, k, d), stopped, history


def _tensors(*values: Tensor | float) -> list[Tensor]:
    """Numbers and tensors as tensors of one dtype (Python numbers count as float64) on
    the device of the first that is not a scalar."""
    tensors = [v if isinstance(v, Tensor) else torch.tensor(v, dtype=torch.float64) for v in values]
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors])
    device = next((t.device for t in tensors if t.dim() > 0), tensors[0].device)
    return [t.to(dtype=dtype, device=device) for t in tensors]


def _ratio(value: Tensor, scale: Tensor) -> Tensor:
    """value / scale where scale > 0; where it is 0: 0 for a zero value, else +-inf."""
    safe = value / torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, safe, torch.where(value == 0, torch.zeros_like(value), value.sign() * math.inf))


def _hyper(hyper: Hyper | None, lr: float | Tensor, like: Tensor) -> Hyper:
    """Per-pair hyperparameters ``[P]`` (``like`` is ``[P, ...]``): ``hyper`` as given, or
    ``lr`` with PyTorch's defaults for the rest (no momentum, no decay, Adam's betas)."""
    p, dtype, device = like.shape[0], like.dtype, like.device
    if hyper is None:
        def full(v: float) -> Tensor:
            return torch.full((p,), v, dtype=dtype, device=device)

        lr_t = torch.as_tensor(lr, dtype=dtype, device=device).expand(p).clone()
        return Hyper(lr_t, full(0.0), full(0.0), full(0.9), full(0.999), full(1e-8))
    return hyper.map(lambda v: torch.as_tensor(v, dtype=dtype, device=device).expand(p))


def _repeat_hyper(hyper: Hyper, times: int) -> Hyper:
    return hyper.map(lambda v: v.repeat_interleave(times))


def _repeat(t: Tensor, times: int) -> Tensor:
    """``[P, ...]`` -> ``[P * times, ...]``, each pair's rows together."""
    return t.repeat_interleave(times, dim=0)


def _best_of(out: dict, restarts: int) -> dict:
    """Keep, per pair, the restart with the lowest barrier (NaN counts as worst)."""
    if restarts == 1:
        return out
    barrier = out["barrier"].view(-1, restarts)
    best = torch.nan_to_num(barrier, nan=math.inf).argmin(dim=1)
    pick = torch.arange(barrier.shape[0], device=best.device) * restarts + best
    return {k: v[pick] if isinstance(v, Tensor) else v for k, v in out.items()}


def _bend(a: Tensor, b: Tensor, size: float, seeds: list[int], restarts: int, purpose: str) -> Tensor:
    """A random displacement per curve, perpendicular to b - a, of norm size x ||b - a||;
    curve r of pair p draws it from the stream of (seed_p, r)."""
    if not (math.isfinite(size) and size >= 0):
        raise ValueError(f"perturbation: expected a number >= 0, got {size}")
    draws = torch.stack([torch.randn(a.shape[1], generator=generator(s, "valley", purpose, r), dtype=torch.float64)
                         for s in seeds for r in range(restarts)]).to(a)
    along = (b - a) / (b - a).norm(dim=1, keepdim=True).clamp_min(_TINY)
    draws = draws - (draws * along).sum(dim=1, keepdim=True) * along
    draws = draws / draws.norm(dim=1, keepdim=True).clamp_min(_TINY)
    return size * (b - a).norm(dim=1, keepdim=True) * draws


def _chain(a: Tensor, interior: Tensor, b: Tensor) -> Tensor:
    return torch.cat([a.unsqueeze(1), interior, b.unsqueeze(1)], dim=1)


def _barrier(losses: Tensor) -> Tensor:
    """``[P]`` max over the path minus the larger end loss, from losses ``[P, M]``."""
    return losses.amax(dim=1) - torch.maximum(losses[:, 0], losses[:, -1])


def _pairs(theta_a: Tensor, theta_b: Tensor) -> tuple[Tensor, Tensor, bool]:
    if theta_a.shape != theta_b.shape or theta_a.dim() not in (1, 2):
        raise ValueError(f"theta_a and theta_b must both be [D] or [P, D], got {tuple(theta_a.shape)} "
                         f"and {tuple(theta_b.shape)}")
    single = theta_a.dim() == 1
    a, b = (theta_a.unsqueeze(0), theta_b.unsqueeze(0)) if single else (theta_a, theta_b)
    return a.detach(), b.detach().to(a), single


def _batch_loss(loss_fn: Callable, batched: bool, restarts: int) -> BatchLoss:
    """The loss over the points ``[P * restarts, M, D]`` of every curve, from ``loss_fn``
    (which sees each pair's points together: ``[P, restarts * M, D]`` when batched)."""
    if not batched:
        def one_by_one(points: Tensor) -> Tensor:
            return torch.stack([torch.stack([torch.as_tensor(loss_fn(q)) for q in row]) for row in points])

        return one_by_one

    def by_pair(points: Tensor) -> Tensor:
        curves, m, d = points.shape
        return loss_fn(points.reshape(curves // restarts, restarts * m, d)).reshape(curves, m)

    return by_pair


def _seeds(seed: int | Sequence[int], pairs: int) -> list[int]:
    seeds = [seed] * pairs if isinstance(seed, int) else list(seed)
    if len(seeds) != pairs:
        raise ValueError(f"seed: expected one integer or {pairs} (one per pair), got {len(seeds)}")
    return seeds


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value}")


def _single(out: dict) -> dict:
    """One pair's results: floats and tensors without the leading pair dimension."""
    def one(v):
        if isinstance(v, Tensor):
            if v.dim() > 1:
                return v[0]
            return int(v[0]) if not v.is_floating_point() else float(v[0])
        return v

    return {k: one(v) for k, v in out.items()}

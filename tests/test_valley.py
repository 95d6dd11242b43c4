"""Path and barrier estimators against landscapes whose answers are known in closed form."""

import math

import pytest
import torch

from helpers import ENDS, F64, embedded, ring
from theoryscope.core.measures.valley import (
    barrier_change, bezier_barrier, equal_arc_length, linear_barrier, relative_barrier, string_barrier,
)


def double_well(th: torch.Tensor) -> torch.Tensor:
    """Minima at (+-1, 0); every path between them crosses x = 0, where the loss is >= 1."""
    return (th[..., 0] ** 2 - 1) ** 2 + th[..., 1] ** 2


def inscribed(beads: int) -> tuple[float, float]:
    """Barrier and normalized length of beads + 2 evenly spaced points on a half circle of
    radius 1 joined by chords: a chord's middle lies at radius cos(pi / 2(K+1))."""
    half_angle = math.pi / (2 * (beads + 1))
    return math.sin(half_angle) ** 4, (beads + 1) * math.sin(half_angle)


def test_straight_line_over_the_bump_has_the_bump_as_barrier():
    assert linear_barrier(ring, *ENDS) == pytest.approx(1.0)
    assert linear_barrier(double_well, *ENDS) == pytest.approx(1.0)


def test_string_goes_around_the_bump():
    beads = 16
    result = string_barrier(ring, *ENDS, beads=beads, steps=500, lr=0.05)
    barrier, length = inscribed(beads)
    assert result["barrier"] == pytest.approx(barrier, rel=0.05)
    assert result["normalized_length"] == pytest.approx(length, rel=1e-3)
    assert result["loss_a"] == result["loss_b"] == 0.0
    radii = result["path"].norm(dim=1)
    assert torch.allclose(radii, torch.ones_like(radii), atol=1e-3)  # the beads sit in the valley
    assert result["path"].shape == (beads + 2, 2) and result["beads"] == beads
    assert result["stopped_step"] == -1


def test_an_unbent_string_stays_on_the_symmetric_line():
    # Why the bend exists: on the segment through the bump's top the gradient is along it.
    result = string_barrier(ring, *ENDS, beads=8, steps=200, lr=0.05, perturbation=0.0)
    assert result["barrier"] == pytest.approx(1.0)
    assert result["normalized_length"] == pytest.approx(1.0)


def test_bezier_curve_bends_around_the_bump():
    result = bezier_barrier(ring, *ENDS, steps=500, lr=0.05)
    # A parabola cannot follow the circle, but it leaves the bump far below its top.
    assert 0 < result["barrier"] < 0.1
    assert 1.3 < result["normalized_length"] < math.pi / 2 + 0.05
    assert result["path"][0].tolist() == ENDS[0].tolist() and result["path"][-1].tolist() == ENDS[1].tolist()


def test_double_well_every_path_has_the_same_barrier():
    string = string_barrier(double_well, *ENDS, beads=8, steps=300, lr=0.05)
    bezier = bezier_barrier(double_well, *ENDS, steps=300, lr=0.05)
    assert string["barrier"] == pytest.approx(1.0, abs=1e-6)
    assert bezier["barrier"] == pytest.approx(1.0, abs=1e-3)  # read on 65 points of the curve
    assert string["normalized_length"] == pytest.approx(1.0, abs=1e-3)  # the saddle is on the segment


def test_landscapes_embedded_in_many_dimensions():
    loss, a, b = embedded(ring, 60, seed=1)
    assert linear_barrier(loss, a, b, batched=True) == pytest.approx(1.0)
    result = string_barrier(loss, a, b, beads=16, steps=500, lr=0.05, batched=True)
    barrier, length = inscribed(16)
    assert result["barrier"] == pytest.approx(barrier, rel=0.05)
    assert result["normalized_length"] == pytest.approx(length, rel=1e-3)
    loss, a, b = embedded(double_well, 60, seed=2)
    assert string_barrier(loss, a, b, steps=300, lr=0.05, batched=True)["barrier"] == pytest.approx(1.0, abs=1e-6)


def deep_linear_problem(d=4, h=8, o=2, n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = x @ torch.randn(o, d, generator=g, dtype=F64).T

    def loss(th: torch.Tensor) -> torch.Tensor:  # th [..., h*d + o*h]
        w1 = th[..., :h * d].reshape(*th.shape[:-1], h, d)
        w2 = th[..., h * d:].reshape(*th.shape[:-1], o, h)
        out = x @ w1.transpose(-1, -2) @ w2.transpose(-1, -2)
        return ((out - y) ** 2).mean(dim=(-1, -2))

    def train(seed: int) -> torch.Tensor:
        th = torch.randn(h * d + o * h, generator=torch.Generator().manual_seed(seed), dtype=F64) * 0.5
        for _ in range(3000):
            th.requires_grad_(True)
            grad, = torch.autograd.grad(loss(th), th)
            th = (th - 0.05 * grad).detach()
        return th

    return loss, train(1), train(2)


def test_deep_linear_nets_from_two_seeds_are_connected():
    loss, a, b = deep_linear_problem()
    assert float(loss(a)) < 1e-20 and float(loss(b)) < 1e-20
    straight = linear_barrier(loss, a, b, batched=True)
    assert straight > 1.0  # the straight line between two factorizations is not flat...
    found = string_barrier(loss, a, b, beads=8, steps=1000, lr=0.05, batched=True)
    assert found["barrier"] < 0.005 * straight  # ...but a path through the valley is


def freeman_bruna_net():
    """f(x) = u1 relu(w1 x) + u2 relu(w2 x) fitting |x|: one unit per side of 0. Along any
    path that exchanges the units there is a moment when one unit covers neither side, so
    one side is not fitted: the barrier is at least min(S+, S-), S+- = mean of x^2 on each
    side, and a path that switches one side off, moves that unit, and hands over reaches
    it. The straight line passes through w = 0: barrier mean(x^2) = S+ + S-."""
    x = torch.linspace(-1, 1, 101, dtype=F64)

    def loss(th: torch.Tensor) -> torch.Tensor:  # th [..., 4] = (w1, w2, u1, u2)
        w, u = th[..., :2], th[..., 2:]
        out = (torch.relu(w.unsqueeze(-2) * x.view(-1, 1)) * u.unsqueeze(-2)).sum(-1)
        return ((out - x.abs()) ** 2).mean(-1)

    s_plus, s_minus = float((x.clamp_min(0) ** 2).mean()), float((x.clamp_max(0) ** 2).mean())
    net = torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=F64)
    permuted = torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=F64)
    return loss, net, permuted, s_plus, s_minus


def test_freeman_bruna_permuted_units_have_a_barrier():
    loss, a, b, s_plus, s_minus = freeman_bruna_net()
    assert float(loss(a)) == 0.0 and float(loss(b)) == 0.0
    assert linear_barrier(loss, a, b, points=101, batched=True) == pytest.approx(s_plus + s_minus)
    least = min(s_plus, s_minus)
    found = string_barrier(loss, a, b, beads=8, steps=2000, lr=0.1, perturbation=0.1, restarts=4, batched=True)
    assert least - 1e-12 <= found["barrier"] <= 1.1 * least
    bez = bezier_barrier(loss, a, b, steps=500, lr=0.1, batched=True)
    assert bez["barrier"] >= least - 1e-12


def test_family_of_pairs_equals_each_pair_alone():
    landscapes = [embedded(ring, 12, seed=s) for s in range(3)]

    def family_loss(points: torch.Tensor) -> torch.Tensor:  # [P, M, D] -> [P, M]
        return torch.stack([landscapes[p][0](points[p]) for p in range(points.shape[0])])

    a = torch.stack([l[1] for l in landscapes])
    b = torch.stack([l[2] for l in landscapes])
    seeds = [5, 6, 7]
    lrs = torch.tensor([0.05, 0.03, 0.04], dtype=F64)
    options = dict(beads=6, steps=150, perturbation=0.1, restarts=2, batched=True)
    together = string_barrier(family_loss, a, b, lr=lrs, seed=seeds, **options)
    bez_together = bezier_barrier(family_loss, a, b, lr=lrs, seed=seeds, steps=100, batched=True)
    for p, (loss, ap, bp) in enumerate(landscapes):
        alone = string_barrier(loss, ap, bp, lr=float(lrs[p]), seed=seeds[p], **options)
        assert together["barrier"][p] == pytest.approx(alone["barrier"], rel=1e-10, abs=1e-14)
        assert torch.allclose(together["path"][p], alone["path"], rtol=1e-10, atol=1e-12)
        bez_alone = bezier_barrier(loss, ap, bp, lr=float(lrs[p]), seed=seeds[p], steps=100, batched=True)
        assert bez_together["barrier"][p] == pytest.approx(bez_alone["barrier"], rel=1e-10, abs=1e-14)
    assert together["path"].shape == (3, 8, 12)


def point_at_arc_length(chain: torch.Tensor, s: float) -> torch.Tensor:
    """Reference loop: the point at arc-length fraction s along the polyline ``[K, D]``."""
    lengths = [float((chain[i + 1] - chain[i]).norm()) for i in range(len(chain) - 1)]
    goal = s * sum(lengths)
    for i, length in enumerate(lengths):
        if goal <= length or i == len(lengths) - 1:
            return chain[i] + (goal / length) * (chain[i + 1] - chain[i])
        goal -= length


def test_equal_arc_length_spaces_points_along_the_polyline():
    g = torch.Generator().manual_seed(0)
    t = torch.sort(torch.rand(9, generator=g, dtype=F64)).values
    t = torch.cat([torch.zeros(1, dtype=F64), t, torch.ones(1, dtype=F64)])
    line = (t.unsqueeze(1) * torch.tensor([3.0, -1.0], dtype=F64)).unsqueeze(0)  # uneven points on a line
    gaps = (equal_arc_length(line)[0, 1:] - equal_arc_length(line)[0, :-1]).norm(dim=1)
    assert torch.allclose(gaps, torch.full_like(gaps, math.sqrt(10) / 10), rtol=1e-12)
    chain = torch.stack([torch.cos(math.pi * t), torch.sin(math.pi * t)], dim=1).unsqueeze(0)  # on a half circle
    spaced = equal_arc_length(chain)
    expected = torch.stack([point_at_arc_length(chain[0], k / 10) for k in range(11)])
    assert torch.allclose(spaced[0], expected, atol=1e-12)
    assert torch.equal(spaced[0, 0], chain[0, 0]) and torch.equal(spaced[0, -1], chain[0, -1])


def test_a_pair_whose_loss_blows_up_keeps_its_last_finite_string():
    def cliff(th: torch.Tensor) -> torch.Tensor:  # finite only inside a disk of radius 3
        r2 = (th ** 2).sum(-1)
        return torch.where(r2 < 9, ring(th), torch.full_like(r2, math.inf))

    result = string_barrier(cliff, *ENDS, beads=4, steps=50, lr=5.0)  # far too large a step
    assert result["stopped_step"] >= 0
    assert math.isfinite(result["barrier"]) and torch.isfinite(result["path"]).all()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="theta_a and theta_b"):
        linear_barrier(ring, torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="beads"):
        string_barrier(ring, *ENDS, beads=0)
    with pytest.raises(ValueError, match="seed"):
        string_barrier(ring, torch.zeros(2, 2), torch.ones(2, 2), seed=[1, 2, 3])


def lifted_ring(th: torch.Tensor) -> torch.Tensor:
    """The ring raised by 1/2: both ends have loss 1/2, so relative barriers are finite."""
    return ring(th) + 0.5


def bent_start_barrier(loss, beads: int, bend: float, refine: int) -> float:
    """Reference loop: the barrier of the string before relaxation, beads at
    (-1 + 2t, +-bend sin(pi t)) on the segment from (-1, 0) to (1, 0), read at ``refine``
    points per segment (the sign of the bend does not matter on a symmetric loss)."""
    t = [k / (beads + 1) for k in range(beads + 2)]
    chain = [torch.tensor([-1 + 2 * s, bend * math.sin(math.pi * s)], dtype=F64) for s in t]
    values = []
    for start, end in zip(chain[:-1], chain[1:]):
        values += [float(loss(start + (r / refine) * (end - start))) for r in range(refine)]
    values.append(float(loss(chain[-1])))
    return max(values) - max(values[0], values[-1])


def test_relative_barrier_is_the_barrier_over_the_worse_end():
    """Freeman & Bruna's level set at alpha L0: barrier / max(L_a, L_b, floor)."""
    assert float(relative_barrier(0.3, 2.0, 1.5)) == pytest.approx(0.15)
    assert float(relative_barrier(0.3, 2.0, 1.5, floor=3.0)) == pytest.approx(0.1)
    got = relative_barrier(torch.tensor([0.2, 0.0, 1e-9]), torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.5, 0.0, 0.0]))
    assert got.tolist() == [pytest.approx(0.2), 0.0, math.inf]  # 0 / 0 = 0: a flat path between exact fits


def test_a_memorising_pair_is_judged_against_the_floor():
    # Both ends fit exactly (the ring's minima); the string's barrier is the chords' rise.
    found = string_barrier(ring, *ENDS, beads=8, steps=100, lr=0.05)
    barrier, _ = inscribed(8)
    assert found["loss_a"] == found["loss_b"] == 0.0 and found["barrier"] == pytest.approx(barrier, rel=1e-6)
    assert float(relative_barrier(found["barrier"], 0.0, 0.0)) == math.inf
    assert float(relative_barrier(found["barrier"], 0.0, 0.0, floor=0.01)) == pytest.approx(barrier / 0.01, rel=1e-6)


def test_history_records_the_barrier_through_the_relaxation():
    found = string_barrier(lifted_ring, *ENDS, beads=8, steps=200, lr=0.05, perturbation=0.05)
    assert found["history_steps"] == tuple(range(0, 201, 20))
    history = found["history"]
    assert history.shape == (11,)
    assert float(history[0]) == pytest.approx(bent_start_barrier(lifted_ring, 8, 0.1, 8), rel=1e-12)
    assert float(history[-1]) == found["barrier"]
    assert string_barrier(lifted_ring, *ENDS, beads=2, steps=4, lr=0.05)["history_steps"] == (0, 1, 2, 3, 4)
    bez = bezier_barrier(lifted_ring, *ENDS, steps=30, lr=0.05)
    assert bez["history_steps"] == (0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30)
    assert float(bez["history"][-1]) == bez["barrier"]


def test_barrier_change_is_near_zero_once_the_string_has_settled():
    """On the lifted ring the minimum-energy path is the unit circle and the string's
    barrier converges to the chords' rise, inscribed(beads): the change over the last
    tenth of the steps vanishes there and is large when the relaxation stops early."""
    barrier, _ = inscribed(8)
    settled = string_barrier(lifted_ring, *ENDS, beads=8, steps=200, lr=0.05)
    assert settled["barrier"] == pytest.approx(barrier, rel=1e-6)
    change = float(barrier_change(settled["history"], settled["loss_a"], settled["loss_b"]))
    assert abs(change) < 1e-9
    early = string_barrier(lifted_ring, *ENDS, beads=8, steps=10, lr=0.05)
    change = float(barrier_change(early["history"], early["loss_a"], early["loss_b"]))
    h = early["history"]
    assert change == pytest.approx(float(h[-2] - h[-1]) / 0.5, rel=1e-12)  # the formula, ends at 1/2
    assert change > 0.1 and early["barrier"] > 100 * barrier
    # A convex bowl between two points of one level: the straight string is already flat.
    bowl = string_barrier(lambda th: (th ** 2).sum(-1), *ENDS, beads=4, steps=20, lr=0.05)
    assert bowl["barrier"] == 0.0 and float(barrier_change(bowl["history"], 1.0, 1.0)) == 0.0

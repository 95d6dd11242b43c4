"""Cushion measures (Arora et al. 2018) against closed forms, autograd and slow reference loops."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from theoryscope.core.measures.cushion import (
    activation_contraction, interlayer_cushion, interlayer_smoothness, layer_cushion, min_interlayer_cushion,
    noise_attenuation, smoothness_quantile, weight_norms,
)

D = torch.float64
WIDTHS = [5, 12, 10, 14, 3]  # a 4-layer net


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_net(seed, widths=WIDTHS, bias=True, n=6):
    g = gen(seed)
    ws = [torch.randn(o, i, generator=g, dtype=D) / math.sqrt(i) for i, o in zip(widths, widths[1:])]
    bs = [0.1 * torch.randn(o, generator=g, dtype=D) for o in widths[1:]] if bias else None
    x = torch.randn(n, widths[0], generator=g, dtype=D)
    for x0 in x:  # precondition: no hidden layer entirely off (else the cushions are 0/0)
        assert all((h > 0).any() for h in preacts(ws, bs, x0, True)[1:-1])
    return ws, bs, x


def act(t, nonlinear):
    return torch.relu(t) if nonlinear else t


def preacts(ws, bs, x0, nonlinear):
    """Slow reference for one sample: [x^0, x^1, ..., x^L]."""
    xs = [x0]
    for k, a in enumerate(ws):
        xs.append(a @ (xs[-1] if k == 0 else act(xs[-1], nonlinear)) + (0 if bs is None else bs[k]))
    return xs


def segment(ws, bs, i, j, nonlinear):
    """The map x^i -> x^j (layers i+1..j, their biases included), i >= 1."""
    def f(v):
        for k in range(i, j):
            v = ws[k] @ act(v, nonlinear) + (0 if bs is None else bs[k])
        return v
    return f


def ref_interlayer(ws, bs, x, i, j, nonlinear):
    out = []
    for x0 in x:
        v = preacts(ws, bs, x0, nonlinear)[i]
        jac = jacobian(segment(ws, bs, i, j, nonlinear), v)
        out.append((jac @ v).norm() / (jac.norm() * v.norm()))
    return torch.stack(out)


def test_gaussian_matrix_cushion_is_one_over_sqrt_n():
    """Closed form: ||Ax|| ~ sqrt(m)||x||, ||A||_F ~ sqrt(mn), so the cushion is ~ 1/sqrt(n)."""
    g = gen(0)
    a = torch.randn(400, 100, generator=g, dtype=D)
    x = torch.randn(50, 100, generator=g, dtype=D)
    c = layer_cushion([a], None, x)
    assert c.shape == (1, 50)
    assert c.mean().item() == pytest.approx(1 / math.sqrt(100), rel=0.05)


def test_layer_cushion_closed_forms():
    """Hand values: rank-one A = u v^T with x || v gives 1; the identity gives 1/sqrt(n)."""
    g = gen(1)
    u, v = torch.randn(4, generator=g, dtype=D), torch.randn(6, generator=g, dtype=D)
    x = torch.stack([2.5 * v, -0.7 * v])
    torch.testing.assert_close(layer_cushion([torch.outer(u, v)], None, x),
                               torch.ones(1, 2, dtype=D), rtol=1e-12, atol=0)
    x = torch.randn(3, 6, generator=g, dtype=D)
    torch.testing.assert_close(layer_cushion([torch.eye(6, dtype=D)], None, x),
                               torch.full((1, 3), 1 / math.sqrt(6), dtype=D), rtol=1e-12, atol=0)


def test_two_layer_hand_example():
    """Hand computation: A1 = I, b1 = (0,-1,0), x = (3,-3,0) -> x^1 = (3,-4,0), phi(x^1) = (3,0,0).

    Layer cushions: 1/sqrt(3) (layer 1), and for A2 = (1,1,1), b2 = 5 the bias is NOT in the
    numerator: |A2 phi(x^1)| / (||A2|| ||phi(x^1)||) = 3/(sqrt(3)*3). Contraction: 5/3 (ReLU), 1 (linear).
    """
    ws = [torch.eye(3, dtype=D), torch.ones(1, 3, dtype=D)]
    bs = [torch.tensor([0.0, -1.0, 0.0], dtype=D), torch.tensor([5.0], dtype=D)]
    x = torch.tensor([[3.0, -3.0, 0.0], [1.0, 2.0, -1.0]], dtype=D)  # second: x^1 = (1,1,-1)
    expected = torch.tensor([[1 / math.sqrt(3)] * 2, [1 / math.sqrt(3), 2 / (math.sqrt(3) * math.sqrt(2))]],
                            dtype=D)
    torch.testing.assert_close(layer_cushion(ws, bs, x), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(activation_contraction(ws, bs, x),
                               torch.tensor([5 / 3], dtype=D), rtol=1e-12, atol=0)
    torch.testing.assert_close(activation_contraction(ws, bs, x, nonlinear=False),
                               torch.ones(1, dtype=D), rtol=1e-12, atol=0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("nonlinear", [True, False])
def test_layer_cushion_and_contraction_match_slow_loop(bias, nonlinear):
    """Slow per-sample reference loop over the layer definitions."""
    ws, bs, x = make_net(2, bias=bias)
    cush = torch.empty(len(ws), len(x), dtype=D)
    contr = torch.zeros(len(ws) - 1, dtype=D)
    for s, x0 in enumerate(x):
        xs = preacts(ws, bs, x0, nonlinear)
        for i in range(1, len(ws) + 1):
            p = xs[0] if i == 1 else act(xs[i - 1], nonlinear)
            cush[i - 1, s] = (ws[i - 1] @ p).norm() / (ws[i - 1].norm() * p.norm())
            if i < len(ws):
                contr[i - 1] = max(contr[i - 1], xs[i].norm() / act(xs[i], nonlinear).norm())
    torch.testing.assert_close(layer_cushion(ws, bs, x, nonlinear=nonlinear), cush, rtol=1e-12, atol=0)
    torch.testing.assert_close(activation_contraction(ws, bs, x, nonlinear=nonlinear), contr,
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("nonlinear", [True, False])
def test_interlayer_cushion_matches_autograd_jacobian(bias, nonlinear):
    """Oracle: torch.autograd.functional.jacobian of the per-sample map x^i -> x^j, all pairs i < j."""
    ws, bs, x = make_net(3, bias=bias)
    for i in range(1, 4):
        for j in range(i + 1, 5):
            got = interlayer_cushion(ws, bs, x, i, j, nonlinear=nonlinear)
            torch.testing.assert_close(got, ref_interlayer(ws, bs, x, i, j, nonlinear), rtol=1e-9, atol=0)


def test_min_interlayer_cushion_matches_loop():
    """Slow reference: min(1/sqrt(h_i), min_j interlayer_cushion(i, j)), the last row 1/sqrt(h_L)."""
    ws, bs, x = make_net(4)
    ref = torch.empty(4, len(x), dtype=D)
    for i in range(1, 5):
        row = torch.full((len(x),), 1 / math.sqrt(WIDTHS[i]), dtype=D)
        for j in range(i + 1, 5):
            row = torch.minimum(row, interlayer_cushion(ws, bs, x, i, j))
        ref[i - 1] = row
    torch.testing.assert_close(min_interlayer_cushion(ws, bs, x), ref, rtol=1e-12, atol=0)


def test_smoothness_inf_for_linear_and_bounded_below_for_relu():
    """Bias-free linear net: M = J exactly, so r = inf. Bias-free 2-layer ReLU net: each coordinate of
    relu(x+eta) - D(x+eta) is at most |eta_k|, so r >= ||x^2|| / (||x^1|| ||A2||_2) (finite, positive)."""
    ws, _, x = make_net(5, bias=False)
    r = interlayer_smoothness(ws, None, x, draws=4, generator=gen(0), nonlinear=False)
    assert r.shape == (3, len(x), 4) and torch.isinf(r).all()
    ws, _, x = make_net(6, widths=[5, 40, 3], bias=False, n=7)
    r = interlayer_smoothness(ws, None, x, noise_scale=0.5, draws=3, generator=gen(1))
    assert r.shape == (1, 7, 3)
    x1 = x @ ws[0].T
    bound = (torch.relu(x1) @ ws[1].T).norm(dim=1) / (x1.norm(dim=1) * torch.linalg.matrix_norm(ws[1], 2))
    assert (r[0] >= bound[:, None] * (1 - 1e-9)).all()
    assert torch.isfinite(r).any() and (r > 0).all()


def test_smoothness_one_hidden_unit_closed_form():
    """Closed form, width-1 hidden layer, x^1 = a > 0, noise_scale 2 so eta = +-2a: eta > 0 keeps the
    unit on (difference 0, r = inf); eta < 0 turns it off, ||diff|| = ||A2|| a, so r = 2."""
    ws = [torch.ones(1, 1, dtype=D), torch.tensor([[3.0], [-2.0]], dtype=D)]
    x = torch.tensor([[1.0], [0.5]], dtype=D)
    r = interlayer_smoothness(ws, None, x, noise_scale=2.0, draws=64, generator=gen(2))
    finite = torch.isfinite(r)
    assert finite.any() and (~finite).any()
    torch.testing.assert_close(r[finite], torch.full_like(r[finite], 2.0), rtol=1e-12, atol=0)
    att = noise_attenuation(ws, None, x, generator=gen(3))  # ||M(x+-a) - x^2|| = ||x^2|| either way
    assert att.shape == (1, 2) and torch.isnan(att[0, 0])
    assert att[0, 1].item() == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("delta", [0.05, 0.1, 0.25, 0.5])
def test_smoothness_quantile_is_order_statistic(delta):
    """Reference: torch.quantile per layer over the 21 flattened values; with N = 21 and these deltas the
    interpolated quantile is exactly the order statistic floor(delta N) (largest rho for 1-delta)."""
    r = torch.rand(3, 7, 3, generator=gen(4), dtype=D) + 0.5
    ref = torch.stack([torch.quantile(row.flatten(), delta) for row in r])
    torch.testing.assert_close(smoothness_quantile(r, delta), ref, rtol=1e-12, atol=0)
    ref2 = torch.sort(r.flatten(1), dim=1).values[:, math.floor(delta * 21)]
    torch.testing.assert_close(smoothness_quantile(r, delta), ref2, rtol=1e-12, atol=0)


def orthogonal_net(seed, h=5, depth=3):
    g = gen(seed)
    ws = [torch.linalg.qr(torch.randn(h, h, generator=g, dtype=D))[0] for _ in range(depth)]
    return ws, torch.randn(6, h, generator=g, dtype=D)


def test_noise_attenuation_orthogonal_linear_net_is_one():
    """Closed form: bias-free linear net of orthogonal Q's: M(x^i + eta) - x^j = Q eta and
    ||Q eta|| = ||eta|| = ||x^i|| = ||x^j||, so every ratio is exactly 1; NaN for j <= i."""
    ws, x = orthogonal_net(7)
    att = noise_attenuation(ws, None, x, generator=gen(5), nonlinear=False)
    upper = torch.triu(torch.ones(2, 3, dtype=torch.bool), diagonal=1)
    assert att.shape == (2, 3) and torch.isnan(att[~upper]).all()
    torch.testing.assert_close(att[upper], torch.ones(3, dtype=D), rtol=1e-10, atol=0)


def test_weight_norms_match_linalg():
    """Oracle: torch.linalg.matrix_norm (Frobenius) and svdvals (spectral)."""
    ws, _, _ = make_net(8)
    got = weight_norms(ws)
    fro = torch.stack([torch.linalg.matrix_norm(w) for w in ws])
    spec = torch.stack([torch.linalg.svdvals(w)[0] for w in ws])
    torch.testing.assert_close(got["frobenius"], fro, rtol=1e-12, atol=0)
    torch.testing.assert_close(got["spectral"], spec, rtol=1e-10, atol=0)
    torch.testing.assert_close(got["stable_rank"], fro**2 / spec**2, rtol=1e-10, atol=0)


def test_family_equals_per_net():
    """A stacked family of 3 nets gives, per member, the single-net results (rtol 1e-12); the random
    measures are checked by the deterministic properties above (inf / lower bound / exact 1)."""
    nets = [make_net(10 + f) for f in range(3)]
    ws = [torch.stack([n[0][k] for n in nets]) for k in range(4)]
    bs = [torch.stack([n[1][k] for n in nets]) for k in range(4)]
    x = torch.stack([n[2] for n in nets])
    close = dict(rtol=1e-12, atol=0)
    for f, (w, b, xf) in enumerate(nets):
        torch.testing.assert_close(layer_cushion(ws, bs, x)[f], layer_cushion(w, b, xf), **close)
        torch.testing.assert_close(activation_contraction(ws, bs, x)[f], activation_contraction(w, b, xf), **close)
        torch.testing.assert_close(interlayer_cushion(ws, bs, x, 2, 4)[f], interlayer_cushion(w, b, xf, 2, 4), **close)
        torch.testing.assert_close(min_interlayer_cushion(ws, bs, x)[f], min_interlayer_cushion(w, b, xf), **close)
        for key, val in weight_norms(ws).items():
            torch.testing.assert_close(val[f], weight_norms(w)[key], **close)
    r = torch.rand(3, 2, 7, 3, generator=gen(6), dtype=D)
    torch.testing.assert_close(smoothness_quantile(r, 0.1),
                               torch.stack([smoothness_quantile(rf, 0.1) for rf in r]), **close)
    onets = [orthogonal_net(20 + f) for f in range(3)]
    ows = [torch.stack([n[0][k] for n in onets]) for k in range(3)]
    att = noise_attenuation(ows, None, torch.stack([n[1] for n in onets]), generator=gen(7), nonlinear=False)
    assert att.shape == (3, 2, 3)
    upper = torch.triu(torch.ones(2, 3, dtype=torch.bool), diagonal=1)
    torch.testing.assert_close(att[:, upper], torch.ones(3, 3, dtype=D), rtol=1e-10, atol=0)
    r = interlayer_smoothness(ws, None, x, draws=2, generator=gen(8), nonlinear=False)
    assert r.shape == (3, 3, 6, 2) and torch.isinf(r).all()

"""Cushion measures (Arora et al. 2018) against closed forms, autograd and slow reference loops."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from theoryscope.core.measures import cushion
from theoryscope.core.measures.cushion import (
    activation_contraction, draw_quantile, interlayer_cushion, interlayer_smoothness, layer_cushion, layer_smoothness,
    min_interlayer_cushion, net_smoothness, noise_attenuation, pooled_smoothness, weight_norms,
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
    att = noise_attenuation(ws, None, x, generator=gen(3), noise_scale=1.0)  # ||M(x+-a) - x^2|| = ||x^2||
    assert att.shape == (1, 2) and torch.isnan(att[0, 0])
    assert att[0, 1].item() == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("delta", [0.05, 0.1, 0.25, 0.5])
def test_pooled_smoothness_is_the_old_pooled_quantile(delta):
    """Reference: torch.quantile per layer over the 21 flattened values; with N = 21 and these deltas the
    interpolated quantile is exactly the order statistic floor(delta N) (largest rho for 1-delta)."""
    r = torch.rand(3, 7, 3, generator=gen(4), dtype=D) + 0.5
    ref = torch.stack([torch.quantile(row.flatten(), delta) for row in r])
    torch.testing.assert_close(pooled_smoothness(r, delta), ref, rtol=1e-12, atol=0)
    ref2 = torch.sort(r.flatten(1), dim=1).values[:, math.floor(delta * 21)]
    torch.testing.assert_close(pooled_smoothness(r, delta), ref2, rtol=1e-12, atol=0)


def largest_rho_held(per_draw, delta):
    """Definition 4.4 read literally over D draws: the largest rho such that the fraction of draws whose
    ratio is >= rho (the inequality holds for every pair and sample) is at least 1 - delta."""
    values = per_draw.tolist()
    held = [rho for rho in values if sum(v >= rho for v in values) >= (1 - delta) * len(values) - 1e-12]
    return max(held)


@pytest.mark.parametrize("draws,delta", [(10, 0.1), (32, 0.1), (7, 0.1), (20, 0.25), (9, 0.5)])
def test_net_and_layer_smoothness_follow_definition_4_4(draws, delta):
    """Slow reference: per draw the minimum over layers and samples (net) or over samples (layer), then the
    largest rho held with probability >= 1 - delta over the draws (``largest_rho_held``); some ratios inf."""
    r = torch.rand(3, 4, draws, generator=gen(30), dtype=D) * 10 + 0.1
    r[0, :, 0] = math.inf
    r[:, :, 1] = math.inf
    for layer in range(3):
        per_draw = r[layer].amin(dim=0)
        assert layer_smoothness(r, delta)[layer].item() == largest_rho_held(per_draw, delta)
    assert net_smoothness(r, delta).item() == largest_rho_held(r.amin(dim=(0, 1)), delta)
    assert draw_quantile(r.amin(dim=(0, 1)), delta).item() == largest_rho_held(r.amin(dim=(0, 1)), delta)


def test_the_paper_asks_every_sample_at_once():
    """By construction: 10 samples x 10 draws, every ratio 100 except sample d in draw d (ratio 1). Every draw
    has a sample that fails at rho > 1, so rho_0.1 = 1 per net and per layer; the pooled figure sees 10% of
    pairs fail and reports the interpolated quantile 1 + 0.9 * 99 = 90.1. One draw failing in ten holds with
    probability 0.9: rho_0.1 = 100 then, rho_0.05 = 1; no hidden layer: rho = inf (no pair i < j)."""
    r = torch.full((1, 10, 10), 100.0, dtype=D)
    r[0, torch.arange(10), torch.arange(10)] = 1.0
    assert net_smoothness(r, 0.1).item() == 1.0 and layer_smoothness(r, 0.1).tolist() == [1.0]
    assert pooled_smoothness(r, 0.1).item() == pytest.approx(90.1, rel=1e-12)
    r = torch.full((1, 10, 10), 100.0, dtype=D)
    r[0, 3, 7] = 1.0
    assert net_smoothness(r, 0.1).item() == 100.0 and net_smoothness(r, 0.05).item() == 1.0
    assert torch.isinf(net_smoothness(torch.zeros(2, 0, 5, 4, dtype=D), 0.1)).all()


def recording(monkeypatch):
    """Record every unit-noise tensor the measures draw, in order."""
    drawn = []
    original = cushion.unit_noise

    def record(shape, generator, like):
        eta = original(shape, generator, like)
        drawn.append(eta)
        return eta

    monkeypatch.setattr(cushion, "unit_noise", record)
    return drawn


@pytest.mark.parametrize("bias", [False, True])
def test_smoothness_ratios_match_a_slow_loop(monkeypatch, bias):
    """Oracle: per layer i, sample and draw, with the very noise drawn (recorded), Definition 4.4's ratio
    min_j ||eta|| ||x^j|| / (||x^i|| ||M^{i,j}(x^i + eta) - J (x^i + eta)||) with M the plain per-sample map
    and J its autograd Jacobian at x^i. A budget of 2 samples per block exercises the blocks."""
    monkeypatch.setattr(cushion, "SMOOTHNESS_BUDGET", 2 * 3 * max(WIDTHS[1:]))
    drawn = recording(monkeypatch)
    ws, bs, x = make_net(31, bias=bias, n=5)
    bs = bs if bias else None
    got = interlayer_smoothness(ws, bs, x, noise_scale=0.3, draws=3, generator=gen(32))
    assert got.shape == (3, 5, 3) and len(drawn) == 3 * 3  # 3 layers x 3 blocks (2 + 2 + 1 samples)
    assert torch.isfinite(got).sum() > 20  # units flip: the ratios are not all the trivial inf
    for i in range(1, 4):
        unit = torch.cat(drawn[3 * (i - 1):3 * i])  # [n, draws, h^i]
        for s, x0 in enumerate(x):
            xi = preacts(ws, bs, x0, True)
            for d in range(3):
                eta = unit[s, d] * 0.3 * xi[i].norm()
                ratios = []
                for j in range(i + 1, 5):
                    jac = jacobian(segment(ws, bs, i, j, True), xi[i])
                    gap = (segment(ws, bs, i, j, True)(xi[i] + eta) - jac @ (xi[i] + eta)).norm()
                    ratios.append((eta.norm() * xi[j].norm() / (xi[i].norm() * gap)).item() if gap > 0 else math.inf)
                assert got[i - 1, s, d].item() == pytest.approx(min(ratios), rel=1e-9)


def test_attenuation_matches_a_slow_loop(monkeypatch):
    """Oracle (Arora et al. Figure 1): per layer i and later layer j the median over the 5 samples of
    ||M^{i,j}(x^i + eta) - x^j|| / ||x^j||, eta the recorded unit noise times 0.1 ||x^i||, by a plain loop."""
    drawn = recording(monkeypatch)
    ws, bs, x = make_net(33, n=5)
    got = noise_attenuation(ws, bs, x, generator=gen(34), noise_scale=0.1)
    assert got.shape == (3, 4) and len(drawn) == 3
    for i in range(1, 4):
        for j in range(1, 5):
            if j <= i:
                assert math.isnan(got[i - 1, j - 1])
                continue
            rel = []
            for s, x0 in enumerate(x):
                xi = preacts(ws, bs, x0, True)
                eta = drawn[i - 1][s] * 0.1 * xi[i].norm()
                rel.append(((segment(ws, bs, i, j, True)(xi[i] + eta) - xi[j]).norm() / xi[j].norm()).item())
            assert got[i - 1, j - 1].item() == pytest.approx(sorted(rel)[2], rel=1e-10)


def orthogonal_net(seed, h=5, depth=3):
    g = gen(seed)
    ws = [torch.linalg.qr(torch.randn(h, h, generator=g, dtype=D))[0] for _ in range(depth)]
    return ws, torch.randn(6, h, generator=g, dtype=D)


def test_noise_attenuation_orthogonal_linear_net_is_one():
    """Closed form: bias-free linear net of orthogonal Q's: M(x^i + eta) - x^j = Q eta and
    ||Q eta|| = ||eta|| = ||x^i|| = ||x^j||, so every ratio is exactly 1; NaN for j <= i."""
    ws, x = orthogonal_net(7)
    att = noise_attenuation(ws, None, x, generator=gen(5), nonlinear=False, noise_scale=1.0)
    upper = torch.triu(torch.ones(2, 3, dtype=torch.bool), diagonal=1)
    assert att.shape == (2, 3) and torch.isnan(att[~upper]).all()
    torch.testing.assert_close(att[upper], torch.ones(3, dtype=D), rtol=1e-10, atol=0)
    att = noise_attenuation(ws, None, x, generator=gen(5), nonlinear=False)  # default: 10% noise, ratio 0.1
    torch.testing.assert_close(att[upper], torch.full((3,), 0.1, dtype=D), rtol=1e-10, atol=0)


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
    for reduce in (pooled_smoothness, layer_smoothness, net_smoothness):
        torch.testing.assert_close(reduce(r, 0.1), torch.stack([reduce(rf, 0.1) for rf in r]), **close)
    relu = interlayer_smoothness(ws, bs, x, draws=5, generator=gen(9))
    for f, (w, b, xf) in enumerate(nets):  # the noise is shared: each member alone sees the same draws
        torch.testing.assert_close(relu[f], interlayer_smoothness(w, b, xf, draws=5, generator=gen(9)), **close)
    onets = [orthogonal_net(20 + f) for f in range(3)]
    ows = [torch.stack([n[0][k] for n in onets]) for k in range(3)]
    att = noise_attenuation(ows, None, torch.stack([n[1] for n in onets]), generator=gen(7), nonlinear=False,
                            noise_scale=1.0)
    assert att.shape == (3, 2, 3)
    upper = torch.triu(torch.ones(2, 3, dtype=torch.bool), diagonal=1)
    torch.testing.assert_close(att[:, upper], torch.ones(3, 3, dtype=D), rtol=1e-10, atol=0)
    r = interlayer_smoothness(ws, None, x, draws=2, generator=gen(8), nonlinear=False)
    assert r.shape == (3, 3, 6, 2) and torch.isinf(r).all()


def test_a_sample_with_a_zero_layer_input_does_not_constrain_the_cushions():
    """A sample whose layer input is zero meets mu ||A|| ||x|| <= ||A x|| (0 <= 0) for every
    mu: its per-sample cushions there are +inf and the others are those of the remaining
    samples. A sample whose ReLU zeroes a whole nonzero layer makes the contraction
    infinite; a zero sample (x^i = 0) does not constrain it."""
    ws, _, x = make_net(3, bias=False)
    ws[0] = -ws[0].abs()  # a positive input turns layer 1 off entirely
    x = x[[all((h > 0).any() for h in preacts(ws, None, x0, True)[1:-1]) for x0 in x]]
    assert len(x) >= 3
    zero, off = torch.zeros(1, WIDTHS[0], dtype=D), x[:1].abs() + 0.1
    lc, ic = layer_cushion(ws, None, torch.cat([x, zero, off])), min_interlayer_cushion(ws, None, torch.cat([x, zero, off]))
    assert torch.isinf(lc[:, -2]).all()  # the zero sample, at every layer; mu_{i,i} = 1/sqrt(h^i) still counts
    torch.testing.assert_close(ic[:, -2], torch.tensor([h**-0.5 for h in WIDTHS[1:]], dtype=D))
    assert torch.isfinite(lc[0, -1]) and torch.isinf(lc[1:, -1]).all()  # off: phi(x^1) = 0 above layer 1
    torch.testing.assert_close(lc[:, :-2], layer_cushion(ws, None, x))
    torch.testing.assert_close(ic[:, :-2], min_interlayer_cushion(ws, None, x))
    torch.testing.assert_close(activation_contraction(ws, None, torch.cat([x, zero])), activation_contraction(ws, None, x))
    assert math.isinf(activation_contraction(ws, None, torch.cat([x, off]))[0].item())

"""Matrix-Project compression and Theorem 4.1 (Arora et al. 2018) against closed-form moments, lemmas and
hand-built nets whose premises hold or fail by construction."""

from __future__ import annotations

import math

import pytest
import torch

from theoryscope.core.measures.bound import Layered, bound_quantities, premises
from theoryscope.core.measures.compression import (
    choose_helpers, compress, effective_params, expected_relative_error, given_helpers, helpers_for_error,
    layer_output_error, margins, matrix_project, projection_variance, relative_variance,
)
from theoryscope.core.measures.cushion import (
    activation_contraction, interlayer_smoothness, layer_cushion, min_interlayer_cushion, net_smoothness,
)
from theoryscope.core.models import Params
from theoryscope.core.train import StackedData

D = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_k1_helper_has_pm1_entries():
    """Closed form for k = 1: A_hat = <A, M> M with M in {-1, +1}^{m x n}, so A_hat / A_hat[0, 0] is
    entrywise +-1 and <A_hat, A>  = <A, M>^2 = A_hat[0, 0]^2 >= 0."""
    a = torch.randn(4, 5, generator=gen(0), dtype=D)
    ah = matrix_project(a, 1, gen(1))
    assert ah.shape == a.shape and ah.dtype == D
    ratio = ah / ah[0, 0]
    torch.testing.assert_close(ratio.abs(), torch.ones_like(a), rtol=1e-12, atol=0)
    assert (ah * a).sum().item() == pytest.approx(ah[0, 0].item() ** 2, rel=1e-10)


def test_linear_in_a_with_same_helpers():
    """The helpers are independent of A: with identical generators, P(2A + B) = 2 P(A) + P(B)."""
    g = gen(2)
    a, b = torch.randn(2, 6, 3, generator=g, dtype=D)
    lhs = matrix_project(2 * a + b, 70, gen(3), chunk=16)
    rhs = 2 * matrix_project(a, 70, gen(3), chunk=16) + matrix_project(b, 70, gen(3), chunk=16)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-12)


def test_unbiased():
    """E[A_hat] = A; entry (a, b) of one projection has variance (||A||_F^2 - A_ab^2) / k, so the mean
    of T independent draws (one generator, consumed in turn) is within 5 standard errors of A.
    k = 100 with chunk = 16 also exercises a ragged last chunk."""
    a = torch.randn(4, 3, generator=gen(4), dtype=D)
    g, k, t = gen(5), 100, 400
    mean = sum(matrix_project(a, k, g, chunk=16) for _ in range(t)) / t
    se = ((a.norm() ** 2 - a**2) / (k * t)).sqrt()
    assert ((mean - a).abs() <= 5 * se).all(), (mean - a) / se


def test_bilinear_variance_closed_form():
    """Closed form: for Rademacher M, E[<A,M>^2 <B,M>^2] = ||A||^2||B||^2 + 2<A,B>^2 - 2 sum A^2 B^2,
    so with B = u v^T, Var[u^T A_hat v] = (||A||^2 ||u||^2 ||v||^2 + <A,B>^2 - 2 sum A^2 B^2) / k.
    The empirical variance over 4000 draws is within 10%; the empirical mean within 4 standard errors."""
    g = gen(6)
    a = torch.randn(5, 4, generator=g, dtype=D)
    u, v = torch.randn(5, generator=g, dtype=D), torch.randn(4, generator=g, dtype=D)
    b, k, t = torch.outer(u, v), 8, 4000
    var = ((a.norm() * b.norm()) ** 2 + (a * b).sum() ** 2 - 2 * (a**2 * b**2).sum()) / k
    draws = torch.stack([u @ matrix_project(a, k, g, chunk=5) @ v for _ in range(t)])
    assert draws.var().item() == pytest.approx(var.item(), rel=0.10)
    assert abs(draws.mean() - u @ a @ v) <= 4 * (var / t).sqrt()


def test_error_lemma():
    """Paper's Lemma (Matrix-Project): |u^T (A_hat - A) v| <= eps ||A||_F ||u|| ||v|| with probability
    >= 1 - eta for k = O(log(1/eta) / eps^2). The paper hides the constant; we use the Gaussian-tail
    one, k = ceil(2 ln(2/eta) / eps^2) (P[|Z| > eps sqrt(k)] <= 2 exp(-k eps^2 / 2) = eta, the
    normalised error having variance <= 2/k and typically ~1/k), on fresh helpers per (u, v) pair."""
    eps, eta = 0.25, 0.1
    k = math.ceil(2 * math.log(2 / eta) / eps**2)
    g = gen(7)
    a = torch.randn(6, 5, generator=g, dtype=D)
    ok = []
    for _ in range(300):
        u, v = torch.randn(6, generator=g, dtype=D), torch.randn(5, generator=g, dtype=D)
        err = (u @ (matrix_project(a, k, g) - a) @ v).abs()
        ok.append(bool(err <= eps * a.norm() * u.norm() * v.norm()))
    assert sum(ok) / len(ok) >= 1 - eta


def test_family_uses_same_helpers():
    """A stacked [F, m, n] family equals each member projected with an identically seeded generator."""
    fam = torch.randn(3, 4, 6, generator=gen(8), dtype=D)
    got = matrix_project(fam, 40, gen(9), chunk=16)
    assert got.shape == fam.shape
    for f in range(3):
        torch.testing.assert_close(got[f], matrix_project(fam[f], 40, gen(9), chunk=16), rtol=1e-12, atol=1e-14)


def test_compress_per_layer_draws():
    """compress keeps shapes, is a function of the seed, gives two identical layers different helpers
    (their projections differ), and averages to the weights over seeds (5 standard errors)."""
    a = torch.randn(4, 3, generator=gen(10), dtype=D)
    ws = [a, a.clone(), torch.randn(2, 4, generator=gen(11), dtype=D)]
    out = compress(ws, 20, seed=0)
    assert [o.shape for o in out] == [w.shape for w in ws]
    for o, p in zip(out, compress(ws, 20, seed=0)):
        assert torch.equal(o, p)
    assert not torch.allclose(out[0], out[1])
    assert not torch.allclose(out[0], compress(ws, 20, seed=1)[0])
    t = 300
    mean = sum(compress(ws, 20, seed=s)[2] for s in range(t)) / t
    se = ((ws[2].norm() ** 2 - ws[2] ** 2) / (20 * t)).sqrt()
    assert ((mean - ws[2]).abs() <= 5 * se).all()


def test_margins_by_hand():
    """Hand values: margin = output[label] - max over the other classes (ties give 0, wrong gives < 0)."""
    out = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, -1.0], [0.0, 2.0, 1.0], [2.0, 2.0, 0.0]], dtype=D)
    labels = torch.tensor([1, 0, 0, 0])
    expected = torch.tensor([1.0, 5.0, -2.0, 0.0], dtype=D)
    torch.testing.assert_close(margins(out, labels), expected, rtol=0, atol=0)
    fam = torch.stack([out, -out])
    fam_labels = torch.stack([labels, torch.tensor([0, 2, 1, 2])])
    # -out rows: [-1,-3,-2] l0 -> 1; [-5,0,1] l2 -> 1; [0,-2,-1] l1 -> -2; [-2,-2,0] l2 -> 2
    torch.testing.assert_close(margins(fam, fam_labels),
                               torch.stack([expected, torch.tensor([1.0, 1.0, -2.0, 2.0], dtype=D)]),
                               rtol=0, atol=0)


def test_effective_params_by_hand():
    """Hand value: c=2, d=3, max norm 1.5, gamma 0.3; sum 1/(mu^2 mu_to^2) = 16 + 16 + 25 = 57,
    so 4 * 9 * 2.25 * 57 / 0.09 = 51300."""
    got = effective_params(2.0, 3, 1.5, [0.5, 0.25, 1.0], [0.5, 1.0, 0.2], 0.3)
    assert isinstance(got, float)
    assert got == pytest.approx(51300.0, rel=1e-12)


def test_projection_variance_is_the_sum_of_the_bilinear_variances():
    """Closed form: k E||(A_hat - A) z||^2 = sum over output coordinates a of the bilinear variance
    (||A||^2 ||e_a||^2 ||z||^2 + <A, e_a z^T>^2 - 2 sum A^2 (e_a z^T)^2), written here as a plain loop."""
    g = gen(12)
    a, z = torch.randn(5, 4, generator=g, dtype=D), torch.randn(3, 4, generator=g, dtype=D)
    ref = torch.zeros(3, dtype=D)
    for s in range(3):
        for row in range(5):
            b = torch.outer(torch.eye(5, dtype=D)[row], z[s])
            ref[s] += (a.norm() * b.norm()) ** 2 + (a * b).sum() ** 2 - 2 * (a**2 * b**2).sum()
    torch.testing.assert_close(projection_variance(a, z), ref, rtol=1e-12, atol=0)
    fam = torch.stack([a, 2 * a])
    torch.testing.assert_close(projection_variance(fam, torch.stack([z, z])), torch.stack([ref, 4 * ref]),
                               rtol=1e-12, atol=0)


def test_projection_variance_matches_monte_carlo():
    """Oracle: the average of ||(A_hat - A) z||^2 over 2000 independent projections with k = 4 is
    within 12% of projection_variance / k, per vector z."""
    g = gen(13)
    a, z = torch.randn(5, 4, generator=g, dtype=D), torch.randn(3, 4, generator=g, dtype=D)
    k, t = 4, 2000
    errors = torch.stack([((matrix_project(a, k, g, chunk=4) - a) @ z.T).square().sum(dim=0) for _ in range(t)])
    torch.testing.assert_close(errors.mean(dim=0), projection_variance(a, z) / k, rtol=0.12, atol=0)


def test_rank_one_layer_with_cushion_one_by_hand():
    """Hand value: A = u v^T and z = v (layer cushion 1): ||Az|| = ||A||_F ||z|| and
    sum_ab A_ab^2 z_b^2 = ||u||^2 sum_b v_b^4, so relative_variance = h_out + 1 - 2 sum v^4 / ||v||^4."""
    g = gen(14)
    u, v = torch.randn(6, generator=g, dtype=D), torch.randn(4, generator=g, dtype=D)
    expected = 6 + 1 - 2 * (v**4).sum() / v.norm() ** 4
    torch.testing.assert_close(relative_variance(torch.outer(u, v), v.unsqueeze(0)), expected, rtol=1e-12, atol=0)


def test_helpers_for_error_is_the_smallest_k_meeting_the_target():
    """Closed form: k = ceil(relative_variance / eps^2) meets sqrt(relative_variance / k) <= eps and k - 1 does
    not; a Monte Carlo average over 600 projections of the mean-square relative error at that k is within 15% of
    relative_variance / k (so <= 1.15 eps^2). A layer with a larger cushion needs fewer helpers."""
    g = gen(15)
    a, z = torch.randn(6, 8, generator=g, dtype=D), torch.randn(10, 8, generator=g, dtype=D)
    eps = 0.8
    k = int(helpers_for_error(a, z, eps))
    assert expected_relative_error(a, z, k) <= eps < expected_relative_error(a, z, k - 1)
    mse = torch.stack([layer_output_error(a, matrix_project(a, k, g), z) ** 2 for _ in range(600)]).mean()
    assert mse.item() == pytest.approx((relative_variance(a, z) / k).item(), rel=0.15)
    assert mse <= 1.15 * eps**2
    aligned = torch.outer(torch.randn(6, generator=g, dtype=D), z[0])  # cushion 1 on z[0]
    assert helpers_for_error(aligned, z[:1], eps) < helpers_for_error(a, z[:1], eps)


def test_per_member_counts_use_one_helper_sequence():
    """A family projected with counts [0, 5, 70] equals member 0 kept as it is and members 1, 2 projected alone
    with 5 and 70 helpers from identically seeded generators (the first k helpers of one sequence)."""
    fam = torch.randn(3, 4, 6, generator=gen(16), dtype=D)
    got = matrix_project(fam, torch.tensor([0, 5, 70]), gen(17), chunk=16)
    torch.testing.assert_close(got[0], fam[0], rtol=0, atol=0)
    for f, k in ((1, 5), (2, 70)):
        torch.testing.assert_close(got[f], matrix_project(fam[f], k, gen(17), chunk=16), rtol=1e-12, atol=1e-14)


def test_layer_output_error_by_hand():
    """Hand values: A_hat = A gives 0; A_hat = 2A gives ||Az|| / ||Az|| = 1 on every vector; A_hat = A + E
    with E z_1 = 0 and ||E z_2|| = ||A z_2|| gives sqrt((0 + 1) / 2)."""
    a = torch.eye(2, dtype=D)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D)
    assert layer_output_error(a, a, z).item() == 0
    assert layer_output_error(a, 2 * a, z).item() == pytest.approx(1.0, rel=1e-12)
    e = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=D)
    assert layer_output_error(a, a + e, z).item() == pytest.approx(math.sqrt(0.5), rel=1e-12)


def test_choose_helpers_keeps_layers_that_would_not_shrink():
    """The target's k where it is below fan_in * fan_out and max_k; 0 (kept as it is) where the target needs
    fan_in * fan_out helpers or more, or more than max_k; explicit counts of 0 or >= fan_in * fan_out keep it.
    By construction: a random 30 x 40 layer needs about h_out * n_in / eps^2 = 1200 / 2.25 helpers; a 4 x 3
    layer whose inputs lie almost in its null space (cushion 0.01) needs far more than its 12 weights."""
    g = gen(18)
    big, z_big = torch.randn(2, 30, 40, generator=g, dtype=D), torch.randn(2, 12, 40, generator=g, dtype=D)
    small = torch.zeros(2, 4, 3, dtype=D)
    small[..., 0] = 1.0
    z_small = torch.tensor([0.01, 1.0, 1.0], dtype=D).expand(2, 5, 3)
    used, needed = choose_helpers([big, small], [z_big, z_small], 1.5, max_k=10**6)
    ref = helpers_for_error(big, z_big, 1.5)
    assert (ref < 1200).all() and torch.equal(used[0], ref.to(torch.int64)) and torch.equal(needed[0], ref)
    assert (needed[1] >= 12).all() and torch.equal(used[1], torch.zeros(2, dtype=torch.int64))
    capped, _ = choose_helpers([big], [z_big], 1.5, max_k=int(ref.min()) - 1)
    assert torch.equal(capped[0], torch.zeros(2, dtype=torch.int64))
    assert [c.tolist() for c in given_helpers([big, small, small], [100, 12, 0])] == [[100, 100], [0, 0], [0, 0]]


def test_premises_by_hand():
    """Theorem 4.1's premises, one member per case: rho_delta >= 3d (d = 3: 9 holds, 8.9 fails, inf holds),
    gamma > 0 (0 fails), every cushion positive and finite (a 0 or a NaN fails); premise = all three."""
    rho = torch.tensor([9.0, 8.9, math.inf, 20.0, 20.0], dtype=D)
    gamma = torch.tensor([1.0, 1.0, 0.5, 0.0, 2.0], dtype=D)
    mu = torch.full((5, 3), 0.3, dtype=D)
    mu_to = mu.clone()
    mu_to[4, 1] = math.nan
    mu[2, 0] = 0.0
    held = premises(rho, 3, gamma, mu, mu_to)
    assert held["premise_smoothness"].tolist() == [True, False, True, True, True]
    assert held["premise_margin"].tolist() == [True, True, True, False, True]
    assert held["premise_cushions"].tolist() == [True, True, False, True, False]
    assert held["premise"].tolist() == [True, False, False, False, False]
    assert premises(rho, 3, None, mu, mu_to)["premise_margin"].tolist() == [False] * 5  # regression


def linear_classifier_family():
    """Two bias-free deep linear nets (depth 2) on 20 samples, labelled by their own argmax (so every training
    margin is positive) for member 0 and by the argmin for member 1 (every margin negative)."""
    g = gen(19)
    ws = [torch.randn(2, 5, 4, generator=g, dtype=D), torch.randn(2, 3, 5, generator=g, dtype=D)]
    x = torch.randn(2, 20, 4, generator=g, dtype=D)
    out = x @ ws[0].mT @ ws[1].mT
    y = torch.stack([out[0].argmax(-1), out[1].argmin(-1)])
    return Params(ws, None), StackedData(x, y, x, y, True)


def test_the_bound_is_printed_only_where_its_premises_hold():
    """Hand-built: member 0 has positive margins and (deep linear: M = J) infinite smoothness, so every premise
    holds and bound = bound_formula = L_gamma + sqrt(q / m) with q of Theorem 4.1; member 1's margins are
    negative (premise_margin fails) and a rho_delta below 3d = 6 fails premise_smoothness: bound NULL there,
    bound_formula still the formula."""
    params, data = linear_classifier_family()
    w, x = params.weights, data.x_train
    per_sample = {"layer_cushion": layer_cushion(w, None, x, nonlinear=False),
                  "interlayer_cushion": min_interlayer_cushion(w, None, x, nonlinear=False)}
    ratios = interlayer_smoothness(w, None, x, draws=16, generator=gen(20), nonlinear=False)
    rho = net_smoothness(ratios, 0.1)
    assert torch.isinf(rho).all()
    contraction = activation_contraction(w, None, x, nonlinear=False)
    row = bound_quantities(Layered.dense(params, False), per_sample, contraction, rho, data, 20, 10.0)
    assert row["premise"].tolist() == [True, False] and row["premise_margin"].tolist() == [True, False]
    assert row["premise_smoothness"].all() and row["premise_cushions"].all()
    mu, mu_to = per_sample["layer_cushion"][0].amin(-1), per_sample["interlayer_cushion"][0].amin(-1)
    q = effective_params(1.0, 2, float(row["max_output_norm"][0]), mu.tolist(), mu_to.tolist(), float(row["margin"][0]))
    assert row["effective_params"][0] == pytest.approx(q, rel=1e-10)
    assert row["bound"][0] == row["bound_formula"][0] == pytest.approx(row["margin_loss"][0] + math.sqrt(q / 20))
    assert row["margin"][1] < 0 and math.isnan(row["bound"][1]) and math.isfinite(row["bound_formula"][1])
    net = Layered.dense(params, False)
    rough = bound_quantities(net, per_sample, contraction, torch.tensor([5.9, 6.0], dtype=D), data, 20, 10.0)
    assert rough["premise_smoothness"].tolist() == [False, True] and math.isnan(rough["bound"][0])
    assert rough["bound_formula"][0] == row["bound_formula"][0]


def test_a_relu_net_whose_hidden_unit_flips_fails_the_smoothness_premise():
    """Closed form (width-1 hidden layer, tests/test_cushion.py): with noise of twice the signal a draw that
    turns the unit off has ratio 2, one that keeps it on ratio inf; over 64 draws of 2 samples more than 10%
    of the draws turn some unit off, so rho_0.1 = 2 < 3d = 6. The same net fed a unit that noise of 1% cannot
    turn off has rho = inf >= 6."""
    ws = [torch.ones(1, 1, dtype=D), torch.tensor([[3.0], [-2.0]], dtype=D)]
    x = torch.tensor([[1.0], [0.5]], dtype=D)
    rho = net_smoothness(interlayer_smoothness(ws, None, x, noise_scale=2.0, draws=64, generator=gen(21)), 0.1)
    assert rho.item() == pytest.approx(2.0, rel=1e-12)
    assert not premises(rho, 2, torch.tensor(1.0), torch.ones(2), torch.ones(2))["premise_smoothness"]
    calm = net_smoothness(interlayer_smoothness(ws, None, x, noise_scale=0.01, draws=64, generator=gen(22)), 0.1)
    assert torch.isinf(calm) and premises(calm, 2, torch.tensor(1.0), torch.ones(2), torch.ones(2))["premise"]


def test_a_zero_input_vector_is_reproduced_exactly_and_left_out():
    """z = 0 (a sample whose ReLU zeroed the layer's input): (Â - A) 0 = 0 for any Â, so the
    vector demands nothing; a nonzero z with A z = 0 makes the relative error infinite."""
    g = torch.Generator().manual_seed(4)
    a, z = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    with_zero = torch.cat([z, torch.zeros(1, 5, dtype=torch.float64)])
    torch.testing.assert_close(relative_variance(a, with_zero), relative_variance(a, z), rtol=1e-14, atol=0)
    projected = matrix_project(a, 3, g)
    torch.testing.assert_close(layer_output_error(a, projected, with_zero), layer_output_error(a, projected, z),
                               rtol=1e-14, atol=0)
    flat = torch.cat([a[:, :4], torch.zeros(6, 1, dtype=torch.float64)], dim=1)  # A e_5 = 0
    assert math.isinf(relative_variance(flat, torch.eye(5, dtype=torch.float64)[4:]).item())

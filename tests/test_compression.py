"""Matrix-Project compression (Arora et al. 2018) against closed-form moments and lemmas."""

from __future__ import annotations

import math

import pytest
import torch

from theoryscope.core.measures.compression import compress, effective_params, margins, matrix_project

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
    draws = torch.stack([u @ matrix_project(a, k, g, chunk=3) @ v for _ in range(t)])
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

"""Invertibility of a conv layer (Gilbert et al. 2017) against explicit matrices, slow
reference loops, autograd and closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from theoryscope.core.measures.invertibility import (
    RipScale, column_norms, conv, conv_transpose, gaussian_filters_like, gaussian_model_rip, iht, iht_bound,
    model_projection, model_rip, model_sparse_codes, operator_norm_sq, reconstruct, relative_error, relu_pool,
    sign_pairs, unpool,
)

D = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def conv_matrix(w1: torch.Tensor, h: int, wd: int) -> torch.Tensor:
    """Slow reference: the matrix of one member's zero-padded 'same' cross-correlation,
    rows (o, i, j) of the output, columns (c, i', j') of the input."""
    c_out, c_in, k, _ = w1.shape
    pad = k // 2
    a = torch.zeros(c_out * h * wd, c_in * h * wd, dtype=D)
    for o in range(c_out):
        for i in range(h):
            for j in range(wd):
                for c in range(c_in):
                    for di in range(k):
                        for dj in range(k):
                            ii, jj = i + di - pad, j + dj - pad
                            if 0 <= ii < h and 0 <= jj < wd:
                                a[(o * h + i) * wd + j, (c * h + ii) * wd + jj] += w1[o, c, di, dj]
    return a


def test_conv_and_transpose_match_explicit_matrix():
    g = gen(0)
    f, n, c_out, c_in, k, h, wd = 2, 3, 3, 2, 3, 4, 5
    w = torch.randn(f, c_out, c_in, k, k, generator=g, dtype=D)
    x = torch.randn(f, n, c_in, h, wd, generator=g, dtype=D)
    z = torch.randn(f, n, c_out, h, wd, generator=g, dtype=D)
    y, xt = conv(w, x), conv_transpose(w, z)
    for m in range(f):
        a = conv_matrix(w[m], h, wd)
        torch.testing.assert_close(y[m].reshape(n, -1), x[m].reshape(n, -1) @ a.T, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(xt[m].reshape(n, -1), z[m].reshape(n, -1) @ a, rtol=1e-12, atol=1e-12)


def test_transpose_is_the_adjoint_by_autograd():
    g = gen(1)
    w = torch.randn(3, 4, 2, 3, 3, generator=g, dtype=D)
    x = torch.randn(3, 2, 2, 6, 4, generator=g, dtype=D, requires_grad=True)
    z = torch.randn(3, 2, 4, 6, 4, generator=g, dtype=D)
    (grad,) = torch.autograd.grad((conv(w, x) * z).sum(), x)
    torch.testing.assert_close(grad, conv_transpose(w, z), rtol=1e-12, atol=1e-12)
    lhs = (conv(w, x) * z).flatten(1).sum(-1)
    rhs = (x * conv_transpose(w, z)).flatten(1).sum(-1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_members_never_mix():
    g = gen(2)
    w = torch.randn(3, 4, 2, 3, 3, generator=g, dtype=D)
    x = torch.randn(3, 2, 2, 4, 4, generator=g, dtype=D)
    family = reconstruct(w, x, pool=2, steps=30)
    for m in range(3):
        alone = reconstruct(w[m:m + 1], x[m:m + 1], pool=2, steps=30)
        torch.testing.assert_close(family.transposed[m], alone.transposed[0], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(family.iht[m], alone.iht[0], rtol=1e-6, atol=1e-9)


def test_sign_pairs_planted_pairs():
    g = gen(3)
    half = torch.randn(2, 4, 3, 3, 3, generator=g, dtype=D)
    w = torch.cat([half, -1.7 * half], dim=1)[:, torch.randperm(8, generator=g)]
    pairs = sign_pairs(w)
    torch.testing.assert_close(pairs.cosine, torch.ones(2, 8, dtype=D), rtol=0, atol=1e-12)
    torch.testing.assert_close(pairs.fraction, torch.ones(2, dtype=D))


def test_sign_pairs_random_filters_and_reference():
    g = gen(4)
    w = torch.randn(3, 16, 16, 3, 3, generator=g, dtype=D)  # 144 dimensions per filter
    pairs = sign_pairs(w, threshold=0.5)
    assert (pairs.fraction < 0.1).all()
    for m in range(3):
        flat = w[m].reshape(16, -1)
        for i in range(16):
            best = max(float(flat[i] @ -flat[j] / (flat[i].norm() * flat[j].norm())) for j in range(16) if j != i)
            assert pairs.cosine[m, i].item() == pytest.approx(best, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2 filters"):
        sign_pairs(w[:, :1])


def test_relu_pool_and_unpool_match_reference_loops():
    g = gen(5)
    f, n, c_out, c_in, p, h, wd = 2, 3, 3, 2, 2, 4, 6
    w = torch.randn(f, c_out, c_in, 3, 3, generator=g, dtype=D)
    x = torch.randn(f, n, c_in, h, wd, generator=g, dtype=D)
    layer = relu_pool(w, x, p)
    act = torch.relu(conv(w, x))
    z = unpool(layer.pooled, layer.switches, p)
    ref_z = torch.zeros_like(act)
    for m in range(f):
        for s in range(n):
            nonzero = 0
            for c in range(c_out):
                for bi in range(h // p):
                    for bj in range(wd // p):
                        block = act[m, s, c, bi * p:(bi + 1) * p, bj * p:(bj + 1) * p]
                        assert layer.pooled[m, s, c, bi, bj] == block.max()
                        i, j = divmod(int(layer.switches[m, s, c, bi, bj]), wd)
                        assert bi * p <= i < (bi + 1) * p and bj * p <= j < (bj + 1) * p
                        assert act[m, s, c, i, j] == block.max()
                        ref_z[m, s, c, i, j] = block.max()
                        nonzero += int(block.max() > 0)
            assert layer.blocks[m, s] == nonzero
            assert layer.density[m, s].item() == pytest.approx(nonzero / (c_out * h * wd / p**2))
            assert layer.relu_density[m, s].item() == pytest.approx((act[m, s] > 0).double().mean().item())
    torch.testing.assert_close(z, ref_z, rtol=0, atol=0)


def test_model_projection_matches_reference():
    g = gen(6)
    f, n, c, h, wd, p = 2, 3, 2, 4, 4, 2
    z = torch.randn(f, n, c, h, wd, generator=g, dtype=D)
    k = torch.tensor([[0, 1, 3], [5, 8, 2]])
    out = model_projection(z, k, p)
    for m in range(f):
        for s in range(n):
            best = []
            for ch in range(c):
                for bi in range(h // p):
                    for bj in range(wd // p):
                        cells = [(abs(z[m, s, ch, i, j].item()), (ch, i, j)) for i in range(bi * p, bi * p + p)
                                 for j in range(bj * p, bj * p + p)]
                        best.append(max(cells))
            ref = torch.zeros(c, h, wd, dtype=D)
            for _, where in sorted(best, reverse=True)[:int(k[m, s])]:
                ref[where] = z[m, s][where]
            torch.testing.assert_close(out[m, s], ref, rtol=0, atol=0)
    torch.testing.assert_close(model_projection(out, k, p), out, rtol=0, atol=0)  # a projection


def test_model_sparse_codes_lie_in_the_model():
    z = model_sparse_codes((2, 50, 3, 4, 6, ), k=5, pool=2, generator=gen(7))
    per_block = (z != 0).reshape(2, 50, 3, 2, 2, 3, 2).sum(dim=(4, 6))  # [.., C, H/p, W/p]
    assert per_block.max() == 1
    assert ((per_block > 0).flatten(2).sum(-1) == 5).all()
    torch.testing.assert_close(model_projection(z, 5, 2), z, rtol=0, atol=0)


def test_column_norms_are_the_explicit_matrix_column_norms():
    g = gen(8)
    w = torch.randn(2, 3, 2, 3, 3, generator=g, dtype=D)
    norms = column_norms(w, (4, 5))
    for m in range(2):
        ref = conv_matrix(w[m], 4, 5).norm(dim=1)  # rows of W = columns of Wᵀ
        torch.testing.assert_close(norms[m].reshape(-1), ref, rtol=1e-12, atol=1e-12)


def test_model_rip_is_zero_for_an_isometry_on_the_model():
    g = gen(9)
    q, _ = torch.linalg.qr(torch.randn(2, 5, 3, generator=g, dtype=D))  # orthonormal columns
    w = q.transpose(1, 2).reshape(2, 3, 5, 1, 1)  # 1x1 conv whose Wᵀ is an isometry
    for scale in RipScale:
        est = model_rip(w, (4, 4), k=4, pool=2, draws=64, generator=gen(10), scale=scale)
        assert est.delta.abs().max() < 1e-12, scale
    # k = 1 and unit filters with one tap (the centre): every column has norm 1, none truncated
    centre = torch.zeros(2, 4, 3, 3, 3, dtype=D)
    centre[..., 1, 1] = torch.randn(2, 4, 3, generator=g, dtype=D)
    centre = centre / centre.flatten(2).norm(dim=-1)[..., None, None, None]
    assert model_rip(centre, (4, 4), 1, 2, 64, gen(11), RipScale.NONE).delta.max() < 1e-12
    # k = 1 with normalised columns: r = 1 for any filters
    dense = torch.randn(2, 4, 3, 3, 3, generator=g, dtype=D)
    assert model_rip(dense, (4, 4), 1, 2, 64, gen(12)).delta.max() < 1e-12


def test_gaussian_model_rip_shrinks_as_input_channels_grow():
    """The paper's argument: Wᵀ z is a sum of k atoms (filters at positions), each a vector
    in the C_in k^2 dimensions of the input around its position; Gaussian atoms of that
    dimension are nearly orthogonal, their inner products ~ 1/sqrt(C_in k^2). So with
    C_out, the map, the filter size and k fixed, delta_k falls as C_in grows."""
    deltas = []
    for c_in in (2, 8, 32, 128):
        w = torch.empty(3, 8, c_in, 3, 3, dtype=D)
        est = gaussian_model_rip(w, (6, 6), k=4, pool=2, draws=400, generator=gen(13))
        deltas.append(est.delta.mean().item())
    assert all(a > b for a, b in zip(deltas, deltas[1:])), deltas
    assert deltas[-1] < 0.2 and deltas[0] < 1, deltas


def test_rip_normalisations_are_scale_free():
    w = torch.randn(2, 4, 3, 3, 3, generator=gen(19), dtype=D)
    for scale in (RipScale.COLUMNS, RipScale.GLOBAL):
        a = model_rip(w, (4, 4), 3, 2, 50, gen(20), scale)
        b = model_rip(5 * w, (4, 4), 3, 2, 50, gen(20), scale)
        torch.testing.assert_close(a.delta, b.delta, rtol=1e-10, atol=1e-12)
    raw = model_rip(w, (4, 4), 3, 2, 50, gen(20), RipScale.NONE)
    torch.testing.assert_close(model_rip(5 * w, (4, 4), 3, 2, 50, gen(20), RipScale.NONE).r_max, 25 * raw.r_max)


def test_gaussian_filters_have_unit_expected_norm():
    w = gaussian_filters_like(torch.empty(4, 64, 8, 3, 3, dtype=D), gen(14))
    assert w.flatten(2).pow(2).sum(-1).mean().item() == pytest.approx(1.0, abs=0.05)


def test_operator_norm_matches_the_explicit_matrix():
    g = gen(15)
    w = torch.randn(2, 3, 2, 3, 3, generator=g, dtype=D)
    est = operator_norm_sq(w, (4, 4), iterations=300)
    for m in range(2):
        top = torch.linalg.matrix_norm(conv_matrix(w[m], 4, 4), ord=2).item() ** 2
        assert est[m].item() == pytest.approx(top, rel=1e-6)
        assert est[m].item() <= top * (1 + 1e-12)


def test_iht_recovers_an_exact_model_sparse_code():
    g = gen(16)
    w = gaussian_filters_like(torch.empty(2, 32, 16, 3, 3, dtype=D), g)  # Wᵀ: 2048 -> 1024 dimensions
    z_true = model_sparse_codes((2, 3, 32, 8, 8), k=4, pool=2, generator=g)
    x = conv_transpose(w, z_true)
    found = iht(w, x, 4, 2, steps=2000, tol=1e-13)
    assert found.iterations < 2000
    assert relative_error(conv_transpose(w, found.z), x).max() < 1e-6
    assert relative_error(found.z, z_true).max() < 1e-6


@pytest.mark.parametrize("fixed", [False, True])
def test_iht_residual_never_increases(fixed):
    """Normalised IHT (its backtracking) and plain IHT with mu = 1 / ||W||^2 both decrease
    ||x - Wᵀ z|| at every step, here for an x that is no sparse code."""
    g = gen(21)
    w = torch.randn(2, 8, 3, 3, 3, generator=g, dtype=D)
    x = torch.randn(2, 4, 3, 6, 6, generator=g, dtype=D)
    # 1.001: the power iteration's estimate is from below
    step = 1 / operator_norm_sq(w, (6, 6)) / 1.001 if fixed else None
    z, residuals = None, []
    for _ in range(25):
        z = iht(w, x, 5, 2, z0=z, step=step, steps=1).z
        residuals.append((x - conv_transpose(w, z)).flatten(2).norm(dim=-1))
    r = torch.stack(residuals)
    assert ((r[1:] - r[:-1]) <= 1e-12).all()
    assert (r[-1] < x.flatten(2).norm(dim=-1)).all()


def test_iht_bound_hand_values():
    c, ok = iht_bound(0.1, 0.1)
    assert c.item() == pytest.approx(5 * 0.1 / 0.9 * math.sqrt(1.1 / 0.9)) and bool(ok)
    c, ok = iht_bound(torch.tensor([0.05, 0.2, 0.5]), torch.tensor([0.1, 0.3, 1.0]))
    assert c[0].item() == pytest.approx(0.5 / 0.95 * math.sqrt(1.1 / 0.9))
    assert c[1].item() == pytest.approx(1.5 / 0.8 * math.sqrt(1.3 / 0.7))
    assert math.isinf(c[2].item())
    assert ok.tolist() == [True, False, False]
    assert iht_bound(0.0, 0.0)[0].item() == 0.0


def test_relative_error_closed_forms():
    x = torch.randn(1, 2, 3, generator=gen(17), dtype=D)
    torch.testing.assert_close(relative_error(2 * x, x), torch.ones(1, 2, dtype=D))
    torch.testing.assert_close(relative_error(2 * x, x, fit_scale=True), torch.zeros(1, 2, dtype=D))
    e = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=D)
    o = torch.tensor([[[0.0, 1.0, 0.0]]], dtype=D)
    assert relative_error(o, e).item() == pytest.approx(math.sqrt(2))
    assert relative_error(o, e, fit_scale=True).item() == pytest.approx(1.0)
    assert relative_error(0 * e, e, fit_scale=True).item() == pytest.approx(1.0)
    assert math.isnan(relative_error(e, 0 * e).item())


def test_reconstruct_from_a_forward_pass():
    g = gen(18)
    w = gaussian_filters_like(torch.empty(2, 8, 3, 3, 3, dtype=D), g)
    w = torch.cat([w, -w], dim=1)  # the paper's negated pairs
    x = torch.randn(2, 4, 3, 6, 6, generator=g, dtype=D)
    rec = reconstruct(w, x, pool=2, steps=200)
    layer = relu_pool(w, x, 2)
    torch.testing.assert_close(rec.blocks, layer.blocks)
    z0 = unpool(layer.pooled, layer.switches, 2)
    plain = relative_error(conv_transpose(w, z0), x)
    assert (rec.transposed <= plain + 1e-12).all()  # least squares beats s = 1
    assert (rec.iht <= plain + 1e-9).all()  # IHT with mu = 1/||W||^2 never increases the residual
    assert (rec.transposed < 1).all() and (rec.iht < 1).all()

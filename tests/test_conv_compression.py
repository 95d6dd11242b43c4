"""Matrix-Project-Conv (Arora et al. 2018, Algorithm 4) against a literal loop of the
algorithm, Monte Carlo of its own draws, closed forms and the family/member contract."""

from __future__ import annotations

import math

import pytest
import torch

from theoryscope.core.measures.compression import choose_helpers, compress, given_helpers, layer_output_error
from theoryscope.core.measures.conv_compression import (
    ConvLayer, conv_per_position, helpers_for_error, matrix_project_conv, mean_square_error, relative_error2,
    subspace_moments,
)
from theoryscope.core.measures.invertibility import conv

D = torch.float64


def kernels_and_maps(seed=0, members=2, c_out=2, c_in=1, kernel=3, side=4, samples=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(members, c_out, c_in, kernel, kernel, generator=g, dtype=D),
            torch.randn(members, samples, c_in, side, side, generator=g, dtype=D))


def literal_algorithm_4(a: torch.Tensor, k: int, p: int, positions: int, g: torch.Generator) -> torch.Tensor:
    """Algorithm 4 as the paper writes it, for one kernel: a uniformly random subspace S of
    dimension k p (the span of k p Gaussian vectors), and at every position k Gaussian
    tensors M_l, M'_l = sqrt(N / (k p)) Proj_S(M_l), Â = (1/k) sum_l <A, M'_l> M'_l."""
    n, d = a.numel(), k * p
    basis = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=D)).Q
    filters = []
    for _ in range(positions):
        total = torch.zeros(n, dtype=D)
        for _ in range(k):
            m = math.sqrt(n / d) * basis @ (basis.T @ torch.randn(n, generator=g, dtype=D))
            total += (a.flatten() @ m) * m
        filters.append((total / k).view(a.shape))
    return torch.stack(filters)


def test_the_closed_form_error_matches_the_literal_algorithm_and_its_sampler():
    """E||(Â - A) * z||^2: the closed form, the mean over 3,000 draws of this module's
    sampler, and the mean over 3,000 runs of the literal algorithm agree to 6 % (kernels of
    18 entries, k = 3, p = 2: a subspace of 6 of the 18 dimensions)."""
    a, z = kernels_and_maps()
    exact = conv(a, z)
    k, p, trials = 3, 2, 3000
    ours, literal = torch.zeros(2, 3, dtype=D), torch.zeros(3, dtype=D)
    g = torch.Generator().manual_seed(1)
    for t in range(trials):
        ours += (conv_per_position(matrix_project_conv(a, k, p, 16, t, "test"), z) - exact).square().sum(dim=(2, 3, 4))
        filters = literal_algorithm_4(a[0], k, p, 16, g)
        literal += (conv_per_position(filters[None], z[:1]) - exact[:1]).square().sum(dim=(2, 3, 4))[0]
    expected = mean_square_error(a, z, torch.tensor([k, k]), p)
    torch.testing.assert_close(ours / trials, expected, rtol=0.06, atol=0)
    torch.testing.assert_close(literal / trials, expected[0], rtol=0.06, atol=0)


def test_the_projection_moments_hold_for_random_subspaces():
    """E[P_ij P_kl] = alpha d_ij d_kl + beta (d_ik d_jl + d_il d_jk) for a random rank-d
    projection: checked on E[(a'Pa)(u'Pu)] and E[(a'Pu)^2] over 20,000 subspaces; d = N
    gives the identity (alpha 1, beta 0)."""
    n, d = 6, 2
    alpha, beta = subspace_moments(n, torch.tensor(float(d)))
    g = torch.Generator().manual_seed(2)
    a, u = torch.randn(n, generator=g, dtype=D), torch.randn(n, generator=g, dtype=D)
    q = torch.linalg.qr(torch.randn(20000, n, d, generator=g, dtype=D)).Q
    pa, pu = q.mT @ a, q.mT @ u
    first = (pa.square().sum(-1) * pu.square().sum(-1)).mean()
    second = (pa * pu).sum(-1).square().mean()
    assert first.item() == pytest.approx((alpha * a.square().sum() * u.square().sum() + 2 * beta * (a @ u) ** 2).item(),
                                         rel=0.03)
    assert second.item() == pytest.approx((alpha * (a @ u) ** 2 + beta * (a.square().sum() * u.square().sum()
                                                                       + (a @ u) ** 2)).item(), rel=0.03)
    whole = subspace_moments(n, torch.tensor(float(n)))
    assert whole[0].item() == pytest.approx(1.0) and whole[1].item() == 0.0


def test_with_the_whole_space_the_error_is_gaussian_helpers():
    """Closed form at k p >= N: (C_out ||A||^2 sum_p ||patch_p||^2 + ||A * z||^2) / k, a
    plain loop over output channels and positions (zero-padded patches)."""
    a, z = kernels_and_maps(members=1)
    k = 20  # k p = 40 >= 18
    padded = torch.nn.functional.pad(z[0], (1, 1, 1, 1))
    energy = sum(padded[s, :, i:i + 3, j:j + 3].square().sum() for s in range(1) for i in range(4) for j in range(4))
    y = conv(a, z[:, :1]).square().sum()
    expected = (2 * a.square().sum() * energy + y) / k
    assert mean_square_error(a, z[:, :1], torch.tensor([k]), 2)[0, 0].item() == pytest.approx(expected.item(), rel=1e-12)


def test_helpers_for_error_is_the_least_k_meeting_the_target():
    a, z = kernels_and_maps(seed=3, c_in=4, c_out=3)  # 108 entries
    p = 2
    need = helpers_for_error(a, z, 0.8, p)
    for f in range(2):
        k = int(need[f])
        meets = relative_error2(a[f:f + 1], z[f:f + 1], torch.tensor([k]), p)
        misses = relative_error2(a[f:f + 1], z[f:f + 1], torch.tensor([k - 1]), p)
        assert meets.item() <= 0.64 < misses.item()
    errors = [relative_error2(a, z, torch.tensor([k, k]), p)[0].item() for k in range(1, 80)]
    assert errors == sorted(errors, reverse=True)  # the error falls with k (bisection's premise)


def test_a_family_draws_what_its_members_draw_alone():
    """Member f uses the first k_f p basis vectors and k_f helpers of shared sequences: its
    filters are the same alone (up to the rounding of a wider QR), and a count of 0 keeps A
    at every position."""
    a, _ = kernels_and_maps(seed=4, members=3, c_in=3)  # 54 entries
    together = matrix_project_conv(a, torch.tensor([5, 0, 12]), 3, 16, 7, "layer")
    for f, k in enumerate([5, 0, 12]):
        alone = matrix_project_conv(a[f:f + 1], torch.tensor([k]), 3, 16, 7, "layer")
        torch.testing.assert_close(together[f:f + 1], alone, rtol=1e-9, atol=1e-11)
    assert torch.equal(together[1], a[1].expand(16, *a.shape[1:]))
    assert not torch.allclose(together[0, 0], together[0, 1])  # a filter of its own per position
    with pytest.raises(ValueError, match="smaller than the kernel's 54 entries"):
        matrix_project_conv(a, 18, 3, 16, 7, "layer")


def test_the_conv_kind_chooses_stores_and_measures_its_compression():
    """Through compression's generic functions: k from the target, k p numbers stored, a
    layer kept when k p would reach its entries, and one draw's measured error near the
    expected one (mean over 200 draws within 15 %)."""
    a, z = kernels_and_maps(seed=5, c_in=8, c_out=4, side=6)  # 288 entries
    kind = ConvLayer(4, 36)
    used, needed = choose_helpers([a], [z], 1.5, max_k=10**6, kinds=[kind])
    assert torch.equal(used[0], torch.where(needed[0] <= 71, needed[0], 0).to(torch.int64))  # (288 - 1) // 4
    assert given_helpers([a], [72], [kind])[0].tolist() == [0, 0] and given_helpers([a], [71], [kind])[0].tolist() == [71, 71]
    k = torch.tensor([30, 30])
    draws = torch.stack([layer_output_error(a, compress([a], [k], seed, [kind])[0], z, kind) ** 2
                         for seed in range(200)]).mean(dim=0)
    torch.testing.assert_close(draws, kind.relative_error2(a, z, k), rtol=0.15, atol=0)
    assert kind.stored(k).tolist() == [120, 120]

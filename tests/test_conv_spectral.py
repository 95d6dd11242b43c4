"""The FFT singular values of a convolution (Sedghi et al. 2019) against the explicit
matrix of the same convolution, built by applying it to every basis image."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as nnf

from theoryscope.core.measures.conv_spectral import (
    conv_singular_values, conv_spectral_norm, frequency_matrices, zero_padding_norm_bound,
)

F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)


def conv_matrix(w: torch.Tensor, n: int, padding: str) -> torch.Tensor:
    """The ``[C_out n^2, C_in n^2]`` matrix of one kernel's "same" conv on n x n maps,
    padding "circular" or "zeros": column j is the conv of the j-th basis image."""
    c_out, c_in, k, _ = w.shape
    basis = torch.eye(c_in * n * n, dtype=w.dtype).view(-1, c_in, n, n)
    if padding == "circular":
        images = nnf.conv2d(nnf.pad(basis, (k // 2,) * 4, mode="circular"), w)
    else:
        images = nnf.conv2d(basis, w, padding=k // 2)
    return images.reshape(c_in * n * n, c_out * n * n).T


def kernels(f: int, c_out: int, c_in: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(f, c_out, c_in, k, k, generator=g, dtype=F64)


CASES = [(5, 2, 3, 3), (5, 3, 2, 3), (4, 2, 2, 3), (6, 3, 3, 5), (5, 2, 3, 1)]  # n, C_out, C_in, k


@pytest.mark.parametrize("n, c_out, c_in, k", CASES)
def test_the_norm_is_the_largest_singular_value_of_the_circular_conv_matrix(n, c_out, c_in, k):
    w = kernels(3, c_out, c_in, k)
    expected = torch.stack([torch.linalg.svdvals(conv_matrix(m, n, "circular"))[0] for m in w])
    torch.testing.assert_close(conv_spectral_norm(w, n), expected, **TOL)


@pytest.mark.parametrize("n, c_out, c_in, k", CASES)
def test_every_singular_value_is_one_of_the_circular_conv_matrix(n, c_out, c_in, k):
    w = kernels(2, c_out, c_in, k, seed=1)
    got = conv_singular_values(w, n)
    assert got.shape == (2, n * n * min(c_out, c_in))
    for member, values in zip(w, got):
        torch.testing.assert_close(values, torch.linalg.svdvals(conv_matrix(member, n, "circular"))[:len(values)], **TOL)


def test_the_one_sided_spectrum_holds_every_singular_value_of_the_full_one():
    n = 6
    w = kernels(2, 2, 3, 3, seed=2)
    assert frequency_matrices(w, n).shape == (2, n, n, 2, 3)
    full = torch.linalg.svdvals(frequency_matrices(w, n))  # [F, u, v, s]
    half = torch.linalg.svdvals(frequency_matrices(w, n, onesided=True))
    torch.testing.assert_close(half, full[:, :, :n // 2 + 1], **TOL)
    # P(-u, -v) = conj(P(u, v)) for a real kernel: the columns v > n/2 repeat the others.
    negated = -torch.arange(n) % n
    torch.testing.assert_close(full[:, negated][:, :, negated], full, **TOL)


@pytest.mark.parametrize("n, c_out, c_in, k", CASES)
def test_zero_padding_is_bounded_by_the_circular_norm_on_maps_k_half_larger(n, c_out, c_in, k):
    w = kernels(4, c_out, c_in, k, seed=3)
    zero = torch.stack([torch.linalg.svdvals(conv_matrix(m, n, "zeros"))[0] for m in w])
    bound = zero_padding_norm_bound(w, n)
    torch.testing.assert_close(bound, conv_spectral_norm(w, n + k // 2), rtol=0, atol=0)
    for size in range(n + k // 2, n + k + 3):
        assert (zero <= conv_spectral_norm(w, size) * (1 + 1e-12)).all()


def test_the_circular_norm_on_the_same_map_does_not_bound_zero_padding():
    # The 1-D second difference (-1, 2, -1) along rows: on 3 x 3 maps the circular conv
    # has norm max |2 - 2 cos(2 pi u / 3)| = 3, the zero-padded one (a tridiagonal
    # Toeplitz matrix) 2 - 2 cos(3 pi / 4) = 2 + sqrt(2).
    w = torch.zeros(1, 1, 1, 3, 3, dtype=F64)
    w[0, 0, 0, 1] = torch.tensor([-1.0, 2.0, -1.0], dtype=F64)
    zero = torch.linalg.svdvals(conv_matrix(w[0], 3, "zeros"))[0]
    torch.testing.assert_close(conv_spectral_norm(w, 3), torch.tensor([3.0], dtype=F64), **TOL)
    torch.testing.assert_close(zero, torch.tensor(2 + math.sqrt(2), dtype=F64), **TOL)
    assert zero > conv_spectral_norm(w, 3)[0]
    assert zero <= zero_padding_norm_bound(w, 3)[0]


def test_a_map_smaller_than_the_kernel_or_a_bad_kernel_shape_is_refused():
    with pytest.raises(ValueError, match="at least the kernel size 5"):
        conv_spectral_norm(kernels(1, 1, 1, 5), 4)
    with pytest.raises(ValueError, match=r"\[F, C_out, C_in, k, k\]"):
        conv_spectral_norm(torch.zeros(2, 3, 3, 3), 5)

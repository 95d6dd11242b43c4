"""The exact singular values of a convolution, after Sedghi, Gupta & Long, "The singular
values of convolutional layers", ICLR 2019.

A conv layer with kernel K of shape ``[C_out, C_in, k, k]`` acting on n x n maps with
CIRCULAR (periodic) padding is a linear map R^{C_in n^2} -> R^{C_out n^2}. The 2-D DFT
block-diagonalises it: with P(u, v) the C_out x C_in matrix of the kernel's DFT, each
channel pair's k x k kernel zero-padded to n x n,

    P(u, v)_{ij} = sum_{a, b < k} K_{ij}[a, b] exp(-2 pi i (u a + v b) / n),

its singular values are the union over the n^2 frequencies (u, v) of the singular values
of P(u, v), and its spectral norm is max_{u, v} ||P(u, v)||_2. Shifting the kernel's
centre (PyTorch's "same" padding k // 2) or flipping it (cross-correlation, as
``conv2d`` computes, against convolution) multiplies P by unit phases or conjugates it,
which leaves every singular value alone.

Zero padding ("same", k // 2 zeros each side, as ``core.cnn`` uses) is not covered by the
theorem, and the circular norm at the same n is *not* a bound for it: the 1-D kernel
(-1, 2, -1) on a 3 x 3 map has circular norm 3 and zero-padded norm 2 + sqrt(2) (the tests
check this). What does hold: the zero-padded conv on n x n maps is the circular conv on
N x N maps applied to the image embedded in zeros, cropped back to n x n, for any
N >= n + k // 2 (then no wrapped-around tap reaches a non-zero pixel). Embedding is an
isometry and cropping a contraction, so

    ||zero-padded conv on n x n||_2 <= ||circular conv on N x N||_2   for every N >= n + k // 2,

and both are <= sup over continuous frequencies of ||P(omega)||_2 (the circular norm
tends to it as N grows). ``zero_padding_norm_bound`` is the bound with N = n + k // 2.
Delattre, Barthelemy & Allauzen (2024, "Spectral norm of convolutional layers with
circular and zero paddings") study the gap between the two.

Every function takes a family of kernels ``[F, C_out, C_in, k, k]`` and works on all
members and frequencies at once.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def frequency_matrices(w: Tensor, n: int, onesided: bool = False) -> Tensor:
    """P(u, v) for every frequency: ``[F, n, n, C_out, C_in]`` complex (``onesided``:
    v in [0, n // 2] only, ``[F, n, n // 2 + 1, C_out, C_in]``; the kernel is real, so
    P(-u, -v) is the conjugate of P(u, v) and has the same singular values)."""
    _check(w, n)
    transform = torch.fft.rfft2 if onesided else torch.fft.fft2
    return transform(w, s=(n, n)).permute(0, 3, 4, 1, 2)


def conv_spectral_norm(w: Tensor, n: int) -> Tensor:
    """``[F]``: the spectral norm of each member's conv on n x n maps with circular
    padding, max over frequencies of ||P(u, v)||_2 (exact; half the spectrum suffices)."""
    return torch.linalg.matrix_norm(frequency_matrices(w, n, onesided=True), ord=2).flatten(1).amax(1)


def conv_singular_values(w: Tensor, n: int) -> Tensor:
    """``[F, n^2 min(C_out, C_in)]``: every singular value of each member's circular conv
    on n x n maps, in descending order (the rest of the C_out n^2 x C_in n^2 matrix's are 0)."""
    s = torch.linalg.svdvals(frequency_matrices(w, n))
    return s.flatten(1).sort(dim=1, descending=True).values


def zero_padding_norm_bound(w: Tensor, n: int) -> Tensor:
    """``[F]``: an upper bound on the spectral norm of each member's conv on n x n maps
    with zero "same" padding: its circular norm on (n + k // 2) x (n + k // 2) maps."""
    return conv_spectral_norm(w, n + w.shape[-1] // 2)


def _check(w: Tensor, n: int) -> None:
    if w.dim() != 5 or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"kernels must be [F, C_out, C_in, k, k], got {list(w.shape)}")
    if n < w.shape[-1]:
        raise ValueError(f"the map size n must be at least the kernel size {w.shape[-1]}, got {n}")

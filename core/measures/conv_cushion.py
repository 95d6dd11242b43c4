"""Noise stability of CNNs: the quantities of Arora, Ge, Neyshabur & Zhang, "Stronger
generalization bounds for deep nets via a compression approach" (ICML 2018), Section 5
and Appendix C (definitions numbered as in arXiv:1802.05296v4), on the CNNs of ``core.cnn``.

The paper's notation, with the layers numbered as it numbers them: layer i = 1..D is conv
block i and layer L = D + 1 the linear head. x^0 is the image, x^i = A^i phi(x^{i-1})
(+ b^i) is block i's convolution output ``[C, H_i, W_i]`` before its ReLU (x^L: the
outputs), and phi(x^i) = maxpool(ReLU(x^i)), phi(x^0) := x^0. Pooling is read as part of
the activation: like the ReLU it is piecewise linear, so the Jacobian J^{i,j}_{x^i} of
x^i -> x^j is the product of the convolutions with the ReLU masks and the pooling
switches recorded at x, exact per sample. (The paper's CNNs have no pooling.) Then:

* layer cushion mu_i (Definition 4): ``||A^i phi(x^{i-1})|| / (||A^i||_F ||phi(x^{i-1})||)``
  with ``||A^i||_F`` the Frobenius norm of the kernel tensor, in whose terms Appendix C
  bounds a compressed layer's error (the convolution's matrix has a norm about
  sqrt(H_i W_i) times larger);
* interlayer cushion (Definition 8, the convolution setting): ``sqrt(H_i W_i) ||J x^i|| /
  (||J||_F ||x^i||)`` with J the whole Jacobian, and mu_{i,i} = 1/sqrt(C_i);
* activation contraction and interlayer smoothness: Definitions 6 and 7 as written;
* the well-distributed Jacobian of Definition 9: the least beta with
  ``||J^{i,j}_x[:, :, p]||_F <= beta ||J^{i,j}_x||_F / sqrt(H_i W_i)`` for every sample x,
  every j >= i and every position p of x^i (the paper's sqrt(n_1 n_2)), where
  ``J[:, :, p]`` holds the columns of position p over all channels. beta = 1 when every
  position carries the same share (J^{i,i} = I gives exactly 1) and grows when a few
  positions carry the Jacobian. The head's output has one position: beta 1.

Theorem 5.1 puts beta^2 ceil(kappa_i / s_i)^2 (kernel size over stride: k here, stride 1)
beside each layer's 1 / (mu_i^2 mu_{i->}^2): each input pixel enters k^2 patches, so the
error of a compressed kernel reaches up to k^2 outputs per pixel, and an uneven Jacobian
lets it add up.

Every function takes a family (``core.cnn.ConvParams`` with a leading F, images
``[F, n, C, H, W]``) and returns per-member results; perturbations are drawn on the CPU,
shared by the members (common random numbers), in blocks whose size does not depend on
F, so a family measures what its members measure alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as nnf

from theoryscope.core.cnn import ConvParams
from theoryscope.core.measures.conv_compression import conv_per_position
from theoryscope.core.measures.conv_spectral import conv_spectral_norm
from theoryscope.core.measures.cushion import (
    JACOBIAN_BUDGET, SMOOTHNESS_BUDGET, unconstrained_inf, unit_noise,
)
from theoryscope.core.measures.invertibility import conv, conv_transpose

Tensor = torch.Tensor


@dataclass(frozen=True)
class ConvPass:
    """A family's forward pass in the paper's notation (see the module docstring)."""

    xs: list[Tensor]  # x^0..x^L: images [F, n, C, H, W], conv outputs [F, n, C, H_i, W_i], outputs [F, n, o]
    phis: list[Tensor]  # phi(x^0)..phi(x^D): the images, then every block's pooled ReLU map
    switches: list[Tensor]  # per block i = 1..D, the pooling switches (flat in the H_i x W_i plane)
    pool: int

    @property
    def layers(self) -> int:
        return len(self.xs) - 1

    def shape(self, i: int) -> tuple[int, ...]:
        """One sample's x^i."""
        return tuple(self.xs[i].shape[2:])


def forward_pass(params: ConvParams, images: Tensor, pool: int) -> ConvPass:
    """x^0..x^L, phi(x^0)..phi(x^D) and the switches, biases included."""
    xs, phis, switches = [images], [images], []
    for i in range(1, len(params.convs) + 1):
        xs.append(_affine(params, i, phis[-1]))
        pooled, where = _relu_pool(xs[-1], pool)
        phis.append(pooled)
        switches.append(where)
    xs.append(_affine(params, len(params.convs) + 1, phis[-1]))
    return ConvPass(xs, phis, switches, pool)


def _relu_pool(x: Tensor, pool: int) -> tuple[Tensor, Tensor]:
    """phi on ``[F, m, C, H, W]``: max-pool(ReLU), with the switches."""
    f, m = x.shape[:2]
    pooled, where = nnf.max_pool2d(torch.relu(x).flatten(end_dim=1), pool, return_indices=True)
    return pooled.view(f, m, *pooled.shape[1:]), where.view(f, m, *where.shape[1:])


def _apply(params: ConvParams, i: int, z: Tensor) -> Tensor:
    """A^i z, no bias, for z ``[F, m, ...]`` living where layer i's input lives. A conv
    layer given as one filter per output position ``[F, H W, C_out, C_in, k, k]`` (the net
    compressed by Matrix-Project-Conv) applies each at its own position."""
    if i <= len(params.convs):
        w = params.convs[i - 1]
        return conv_per_position(w, z) if w.dim() == 6 else conv(w, z)
    return torch.bmm(z.flatten(start_dim=2), params.head.transpose(1, 2))


def _apply_transpose(params: ConvParams, i: int, g: Tensor, shape: tuple[int, ...]) -> Tensor:
    """(A^i)ᵀ g for g ``[F, m, ...]`` living at x^i; ``shape`` of one sample's layer input."""
    if i <= len(params.convs):
        return conv_transpose(params.convs[i - 1], g)
    return torch.bmm(g, params.head).reshape(*g.shape[:2], *shape)


def _affine(params: ConvParams, i: int, z: Tensor) -> Tensor:
    """A^i z + b^i."""
    out = _apply(params, i, z)
    if params.conv_biases is None:
        return out
    if i <= len(params.convs):
        return out + params.conv_biases[i - 1][:, None, :, None, None]
    return out + params.head_bias.unsqueeze(1)


def kernel_norms(params: ConvParams) -> Tensor:
    """``[F, L]``: ||A^i||_F, the kernel tensors' and the head's Frobenius norms."""
    return torch.stack([w.flatten(start_dim=1).norm(dim=-1) for w in (*params.convs, params.head)], dim=-1)


def _norms(t: Tensor, start: int = 2) -> Tensor:
    return t.flatten(start_dim=start).norm(dim=-1)


def layer_cushion(params: ConvParams, cp: ConvPass) -> Tensor:
    """Per-sample layer cushion, ``[F, L, n]``: ``||A^i phi(x^{i-1})|| / (||A^i||_F
    ||phi(x^{i-1})||)``; the paper's mu_i is the minimum over the samples (+inf where the
    layer input is 0, which meets the definition for every mu)."""
    fro = kernel_norms(params)
    rows = [unconstrained_inf(_norms(_apply(params, i, cp.phis[i - 1])), fro[:, i - 1, None] * _norms(cp.phis[i - 1]))
            for i in range(1, cp.layers + 1)]
    return torch.stack(rows, dim=1)


def activation_contraction(cp: ConvPass) -> Tensor:
    """Per block, ``[F, D]``: max over samples of ``||x^i|| / ||phi(x^i)||`` (1 where x^i =
    0; +inf where pooling and ReLU zero a nonzero x^i)."""
    rows = []
    for i in range(1, cp.layers):
        size, kept = _norms(cp.xs[i]), _norms(cp.phis[i])
        rows.append(torch.where(size > 0, size / kept, 1.0).amax(dim=-1))
    return torch.stack(rows, dim=1)


# --- the linearised map and its transpose --------------------------------------------


def _linear_step(params: ConvParams, cp: ConvPass, i: int, z: Tensor, samples: slice) -> Tensor:
    """J^{i,i+1} z at the recorded masks and switches, for z ``[F, s, r, *x^i]`` (r vectors
    per sample of ``samples``): the ReLU mask of x^i, the pooled entries, A^{i+1}."""
    f, s, r = z.shape[:3]
    x = cp.xs[i][:, samples].unsqueeze(2)
    where = cp.switches[i - 1][:, samples].unsqueeze(2).expand(f, s, r, *cp.switches[i - 1].shape[2:])
    kept = (z * (x > 0)).flatten(start_dim=-2).gather(-1, where.flatten(start_dim=-2))
    pooled = kept.view(f, s * r, *where.shape[3:])
    return _apply(params, i + 1, pooled).reshape(f, s, r, *cp.shape(i + 1))


def _linear_step_transpose(params: ConvParams, cp: ConvPass, i: int, g: Tensor, samples: slice) -> Tensor:
    """(J^{i,i+1})ᵀ g for g ``[F, s, r, *x^{i+1}]``: (A^{i+1})ᵀ, the values back at their
    switches (zeros elsewhere), the ReLU mask of x^i."""
    f, s, r = g.shape[:3]
    pooled_shape = cp.phis[i].shape[2:]
    back = _apply_transpose(params, i + 1, g.reshape(f, s * r, *g.shape[3:]), tuple(pooled_shape))
    where = cp.switches[i - 1][:, samples].unsqueeze(2).expand(f, s, r, *pooled_shape)
    channels, height, wide = cp.shape(i)
    spread = back.new_zeros(f, s, r, channels, height * wide)
    spread.scatter_(-1, where.flatten(start_dim=-2), back.reshape(f, s, r, channels, -1))
    return spread.view(f, s, r, channels, height, wide) * (cp.xs[i][:, samples].unsqueeze(2) > 0)


def _true_step(params: ConvParams, i: int, z: Tensor, pool: int) -> Tensor:
    """M^{i,i+1}(z) = A^{i+1} phi(z) + b^{i+1} for z ``[F, s, r, *x^i]``."""
    f, s, r = z.shape[:3]
    pooled, _ = _relu_pool(z.flatten(start_dim=1, end_dim=2), pool)
    out = _affine(params, i + 1, pooled)
    return out.reshape(f, s, r, *out.shape[2:])


# --- Jacobian sums: interlayer cushions and the well-distributed Jacobian -------------


@dataclass(frozen=True)
class JacobianSums:
    """Per pair i < j of layers and sample, ``[F, n]`` each: ||J^{i,j}||_F^2, ||J^{i,j} x^i||^2
    and (i a conv layer) the largest squared Frobenius norm of one position's columns."""

    frobenius2: dict[tuple[int, int], Tensor]
    image2: dict[tuple[int, int], Tensor]
    position2: dict[tuple[int, int], Tensor]


def jacobian_sums(params: ConvParams, cp: ConvPass) -> JacobianSums:
    """The sums over every Jacobian J^{i,j}_{x^i}, 1 <= i < j <= L, per sample.

    Next layers in closed form (``_adjacent_sums``). For j >= i + 2 the rows of J^{i,j}
    (one basis vector of x^j each) are pushed down through the transposed linearised
    layers, giving at each i <= j - 2 the rows of J^{i,j}. Rows and samples are taken in
    chunks of at most ``JACOBIAN_BUDGET`` numbers; every sum is over rows, so the chunks
    change nothing but the order of the additions."""
    f, n = cp.xs[0].shape[:2]
    frobenius2, image2, position2 = {}, {}, {}
    for i in range(1, cp.layers):
        frobenius2[i, i + 1], image2[i, i + 1], position2[i, i + 1] = _adjacent_sums(params, cp, i)
    for j in range(3, cp.layers + 1):
        for i in range(1, j - 1):
            frobenius2[i, j] = cp.xs[0].new_zeros(f, n)
            image2[i, j] = cp.xs[0].new_zeros(f, n)
            position2[i, j] = cp.xs[0].new_zeros(f, n, *cp.shape(i)[1:])
        rows = math.prod(cp.shape(j))
        widest = max(math.prod(cp.shape(i)) for i in range(1, j + 1))
        per_row = f * widest * 2  # a cotangent and the conv's output beside it
        chunk_rows = max(1, min(rows, JACOBIAN_BUDGET // per_row))
        chunk_samples = max(1, JACOBIAN_BUDGET // (per_row * chunk_rows))
        for start in range(0, n, chunk_samples):
            samples = slice(start, min(n, start + chunk_samples))
            s = samples.stop - start
            for first in range(0, rows, chunk_rows):
                r = min(rows, first + chunk_rows) - first
                g = cp.xs[0].new_zeros(f, s, r, rows)
                rows_here = torch.arange(r, device=g.device)
                g[:, :, rows_here, first + rows_here] = 1.0
                g = g.view(f, s, r, *cp.shape(j))
                for i in range(j - 1, 0, -1):
                    g = _linear_step_transpose(params, cp, i, g, samples)
                    if i == j - 1:
                        continue  # in closed form
                    squares = g.square()
                    frobenius2[i, j][:, samples] += squares.flatten(start_dim=2).sum(dim=-1)
                    along = (g * cp.xs[i][:, samples].unsqueeze(2)).flatten(start_dim=3).sum(dim=-1)
                    image2[i, j][:, samples] += along.square().sum(dim=-1)
                    position2[i, j][:, samples] += squares.sum(dim=(2, 3))
    return JacobianSums(frobenius2, image2,
                        {key: t.flatten(start_dim=2).amax(dim=-1) for key, t in position2.items()})


def _adjacent_sums(params: ConvParams, cp: ConvPass, i: int) -> tuple[Tensor, Tensor, Tensor]:
    """||J||_F^2, ||J x^i||^2 and the squared norms of every position's columns
    ``[F, n, H_i, W_i]`` for J = J^{i,i+1} = A^{i+1} P_i, where P_i keeps, of x^i, the
    entry at each pooling switch whose ReLU is on (a 0/1 selection). J's columns are
    A^{i+1}'s columns at the kept entries and zero elsewhere, so ||J||_F^2 sums A^{i+1}'s
    squared column norms over them, and J x^i = A^{i+1} phi(x^i) (the kept entries of x^i
    are phi(x^i)). Exact, at the cost of one pass over the maps."""
    x, where = cp.xs[i], cp.switches[i - 1]
    f, n, channels, height, wide = x.shape
    flat_where = where.flatten(start_dim=-2)
    on = (x.flatten(start_dim=-2).gather(-1, flat_where) > 0).to(x.dtype)  # [F, n, C, pooled]
    kept = on * _column_norms2(params, i + 1, tuple(where.shape[-2:])).unsqueeze(1)
    per_position = x.new_zeros(f, n, channels, height * wide).scatter_(-1, flat_where, kept)
    image = _norms(_apply(params, i + 1, cp.phis[i])).square()
    return kept.sum(dim=(2, 3)), image, per_position.sum(dim=2).view(f, n, height, wide)


def _column_norms2(params: ConvParams, k: int, size: tuple[int, int]) -> Tensor:
    """||A^k e_(c, p)||^2 for every input channel c and position p of layer k's input
    (a ``size`` map), ``[F, C, positions]``. A conv's column is the kernel slice
    K[:, c] placed around p, cut at the zero-padded border: the sum of sum_o K[o, c]^2
    over the taps that land inside the map, a transposed convolution of a map of ones.
    The head's: the squared norms of its matrix's columns."""
    if k > len(params.convs):
        head = params.head.square().sum(dim=1)  # [F, features]
        return head.view(head.shape[0], -1, size[0] * size[1])
    w = params.convs[k - 1]
    f, _, c_in, kernel, _ = w.shape
    energy = w.square().sum(dim=1).reshape(1, f * c_in, kernel, kernel)
    ones = w.new_ones(1, 1, *size)
    return nnf.conv_transpose2d(ones, energy, padding=kernel // 2).view(f, c_in, size[0] * size[1])


def interlayer_cushions(params: ConvParams, cp: ConvPass, sums: JacobianSums | None = None) -> Tensor:
    """Per layer and sample, ``[F, L, n]``: Definition 8's min(1/sqrt(h^i), min_{i<j<=L}
    sqrt(n^i) ||J^{i,j} x^i|| / (||J^{i,j}||_F ||x^i||)), with h^i the channels and n^i =
    H_i W_i the positions of x^i (the head's output: its size, one position). Its minimum
    over the samples is the paper's mu_{i->}. (Noise independent across pixels would give
    ||J eta|| ~ ||J||_F ||eta|| / sqrt(h^i n^i), whence the sqrt(n^i) against Definition 5.)"""
    sums = sums or jacobian_sums(params, cp)
    rows = []
    for i in range(1, cp.layers + 1):
        shape = cp.shape(i)
        positions = math.prod(shape[1:])
        best = torch.full(cp.xs[0].shape[:2], 1 / math.sqrt(shape[0]), dtype=cp.xs[0].dtype, device=cp.xs[0].device)
        for j in range(i + 1, cp.layers + 1):
            ratio = unconstrained_inf(math.sqrt(positions) * sums.image2[i, j].sqrt(),
                                      sums.frobenius2[i, j].sqrt() * _norms(cp.xs[i]))
            best = torch.minimum(best, ratio)
        rows.append(best)
    return torch.stack(rows, dim=1)


def jacobian_spread(params: ConvParams, cp: ConvPass, sums: JacobianSums | None = None) -> Tensor:
    """Per layer and sample, ``[F, L, n]``: the least beta of Definition 9 at that sample,
    max over j >= i of sqrt(H_i W_i max_p ||J^{i,j}[:, :, p]||_F^2 / ||J^{i,j}||_F^2)
    (1 from J^{i,i} = I; a zero Jacobian does not constrain). The paper's beta is the
    maximum over samples (and layers). The head's output has one position: 1."""
    sums = sums or jacobian_sums(params, cp)
    f, n = cp.xs[0].shape[:2]
    rows = []
    for i in range(1, cp.layers + 1):
        beta = cp.xs[0].new_ones(f, n)
        if i < cp.layers:
            positions = math.prod(cp.shape(i)[1:])
            for j in range(i + 1, cp.layers + 1):
                fro2 = sums.frobenius2[i, j]
                ratio = torch.where(fro2 > 0, positions * sums.position2[i, j] / fro2, 0.0).sqrt()
                beta = torch.maximum(beta, ratio)
        rows.append(beta)
    return torch.stack(rows, dim=1)


# --- smoothness and attenuation --------------------------------------------------------


def interlayer_smoothness(params: ConvParams, cp: ConvPass, noise_scale: float = 0.1, draws: int = 32,
                          generator: torch.Generator | None = None) -> Tensor:
    """Per block i, sample and draw, ``[F, D, n, draws]``: Definition 4.4's largest rho,
    min over j > i of ``||eta|| ||x^j|| / (||x^i|| ||M^{i,j}(x^i + eta) - J^{i,j}(x^i +
    eta)||)``, eta Gaussian of norm ``noise_scale ||x^i||`` (as ``cushion.interlayer_smoothness``
    for MLPs, whose ``net_smoothness`` and ``layer_smoothness`` read these ratios)."""
    f, n = cp.xs[0].shape[:2]
    rows = []
    for i in range(1, cp.layers):
        size = math.prod(cp.shape(i))
        block = max(1, SMOOTHNESS_BUDGET // (draws * max(math.prod(cp.shape(j)) for j in range(i, cp.layers + 1))))
        ratio = cp.xs[0].new_empty(f, n, draws)
        for start in range(0, n, block):
            samples = slice(start, min(n, start + block))
            unit = unit_noise((samples.stop - start, draws, size), generator, cp.xs[0])
            ratio[:, samples] = _smoothness_block(params, cp, i, unit.view(*unit.shape[:2], *cp.shape(i)),
                                                  noise_scale, samples)
        rows.append(ratio)
    return torch.stack(rows, dim=1)


def _smoothness_block(params: ConvParams, cp: ConvPass, i: int, unit: Tensor, noise_scale: float,
                      samples: slice) -> Tensor:
    xi = cp.xs[i][:, samples]
    size = _norms(xi)  # [F, s]
    eta = unit * (noise_scale * size)[:, :, None, None, None, None]
    true = lin = xi.unsqueeze(2) + eta
    ratio = torch.full(eta.shape[:3], math.inf, dtype=xi.dtype, device=xi.device)
    for k in range(i, cp.layers):
        true = _true_step(params, k, true, cp.pool)
        lin = _linear_step(params, cp, k, lin, samples)
        gap = _norms(true - lin, 3)
        scale = _norms(eta, 3) * (_norms(cp.xs[k + 1][:, samples]) / size).unsqueeze(-1)
        ratio = torch.minimum(ratio, torch.where(gap > 0, scale / gap, math.inf))
    return ratio


def noise_attenuation(params: ConvParams, cp: ConvPass, generator: torch.Generator | None = None,
                      noise_scale: float = 0.1) -> Tensor:
    """``[F, D, L]``: for 1 <= i < j <= L the median over samples of ``||M^{i,j}(x^i + eta) -
    x^j|| / ||x^j||``, eta Gaussian of norm ``noise_scale ||x^i||`` (one draw per sample);
    NaN where j <= i (the paper's Figure 1, as ``cushion.noise_attenuation``)."""
    f, n = cp.xs[0].shape[:2]
    out = torch.full((f, cp.layers - 1, cp.layers), math.nan, dtype=cp.xs[0].dtype, device=cp.xs[0].device)
    for i in range(1, cp.layers):
        xi = cp.xs[i]
        unit = unit_noise((n, math.prod(cp.shape(i))), generator, xi).view(n, *cp.shape(i))
        noisy = (xi + unit * (noise_scale * _norms(xi))[:, :, None, None, None]).unsqueeze(2)
        for k in range(i, cp.layers):
            noisy = _true_step(params, k, noisy, cp.pool)
            rel = _norms(noisy.squeeze(2) - cp.xs[k + 1]) / _norms(cp.xs[k + 1])
            out[:, i - 1, k] = rel.nanmedian(dim=-1).values  # 0/0 (x^j = 0, unmoved): left out
    return out


def weight_norms(params: ConvParams, cp: ConvPass) -> dict[str, Tensor]:
    """Per layer ``[F, L]``: the Frobenius norm of the kernel (the head's matrix), the
    operator norm (a conv's on its H x W input with circular padding, exact
    by the FFT of Sedghi et al. 2019; the head's largest singular value) and the stable
    rank of the operator, ||A||_F^2 / ||A||_2^2 with the circular conv's ||A||_F^2 =
    H W ||kernel||_F^2."""
    from theoryscope.core.measures.cushion import weight_norms as matrix_norms

    fro = kernel_norms(params)
    head = matrix_norms([params.head])
    spectral, stable = [], []
    for i, w in enumerate(params.convs, start=1):
        height, wide = cp.shape(i)[1:]
        if height != wide:
            raise ValueError(f"the FFT norm needs square maps, got {height}x{wide}")
        norm = conv_spectral_norm(w, height)
        spectral.append(norm)
        stable.append(height * wide * w.flatten(start_dim=1).square().sum(dim=-1) / norm**2)
    return {"frobenius": fro, "spectral": torch.stack([*spectral, head["spectral"][..., 0]], dim=-1),
            "stable_rank": torch.stack([*stable, head["stable_rank"][..., 0]], dim=-1)}

"""Compression and the compression-based bound of Arora, Ge, Neyshabur & Zhang (ICML 2018).

Matrix-Project (the paper's projection step): draw k helper matrices M_1..M_k with iid +-1
entries from a seed chosen *before* seeing data, and replace a layer's matrix A by

    Â = (1/k) sum_l <A, M_l> M_l,

which is stored as the k numbers <A, M_l> (plus the seed). Â is unbiased, and for fixed
u, v the error u^T Â v - u^T A v has variance
(||A||_F^2 ||u||^2 ||v||^2 + <A, uv^T>^2 - 2 sum_ab A_ab^2 u_a^2 v_b^2) / k, so
|u^T Â v - u^T A v| <= eps ||A||_F ||u|| ||v|| with probability 1 - eta once
k = O(log(1/eta) / eps^2). Noise stability (large cushions) is what keeps these
per-layer errors from growing through the net.

Summing that variance over a layer's output coordinates gives the expected error of the
layer's output in closed form (``projection_variance``), so the k that meets a target
relative error eps of each layer's output follows directly (``helpers_for_error``); a
layer whose k would reach fan_in * fan_out is kept as it is (``choose_helpers``).

Theorem 4.1 bounds the classification error of the compressed net by the training
margin loss plus sqrt(q / m) (up to log factors), with q the effective number of parameters

    q = c^2 d^2 max_{x in S} ||f(x)||^2 sum_i 1 / (mu_i^2 mu_{i->}^2) / gamma^2.

The functions that choose, apply and judge a compression per layer (``choose_helpers``,
``given_helpers``, ``compress``, ``layer_output_error``) take each layer's kind as a
``LayerCompression``: ``DENSE`` here (Matrix-Project of a matrix), or a convolution's
``core.measures.conv_compression.ConvLayer`` (Matrix-Project-Conv, the paper's Algorithm 4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch

from theoryscope.core.seeding import generator as named_generator

Tensor = torch.Tensor


def matrix_project(a: Tensor, k: int | Tensor, generator: torch.Generator, chunk: int = 64) -> Tensor:
    """Â for ``a`` of shape ``[m, n]`` or ``[F, m, n]``. ``k`` is one count, or one per
    member (``[F]``): member f uses the first k_f helpers of one shared sequence (the
    helpers depend on the generator only), and a member with k_f = 0 keeps A. Helpers are
    drawn ``chunk`` at a time on the CPU, always whole chunks, so the sequence is the same
    whatever the counts."""
    single = a.dim() == 2
    stacked = a.unsqueeze(0) if single else a
    f, m, n = stacked.shape
    counts = torch.as_tensor(k, dtype=torch.int64).reshape(-1).expand(f).to(stacked.device)
    flat = stacked.reshape(f, m * n)
    total = torch.zeros_like(flat)
    for start in range(0, int(counts.max()), chunk):
        helpers = random_signs(chunk * m * n, generator).to(stacked).view(chunk, m * n)
        used = (start + torch.arange(chunk, device=stacked.device)) < counts.unsqueeze(-1)  # [F, chunk]
        coefficients = (flat @ helpers.T) * used  # <A, M_l> for the helpers member f uses
        total += coefficients @ helpers
    kept = (counts == 0).unsqueeze(-1)
    projected = torch.where(kept, flat, total / counts.clamp_min(1).unsqueeze(-1).to(flat.dtype)).view_as(stacked)
    return projected.squeeze(0) if single else projected


def projection_variance(a: Tensor, z: Tensor) -> Tensor:
    """k times the expected squared error of Matrix-Project on the vectors z, per vector:

        k E||(Â - A) z||^2 = h_out ||A||_F^2 ||z||^2 + ||A z||^2 - 2 sum_ab A_ab^2 z_b^2,

    the bilinear variance of the module docstring with u = e_a, summed over the h_out
    output coordinates a (k helpers average k independent one-helper estimates). ``a``
    ``[..., m, n]``, ``z`` ``[..., s, n]`` -> ``[..., s]``."""
    h_out = a.shape[-2]
    fro2 = a.square().sum(dim=(-2, -1)).unsqueeze(-1)
    az = z @ a.mT
    cross = z.square() @ a.square().mT  # [..., s, m]: sum_b A_ab^2 z_b^2
    return h_out * fro2 * z.square().sum(dim=-1) + az.square().sum(dim=-1) - 2 * cross.sum(dim=-1)


def relative_variance(a: Tensor, z: Tensor) -> Tensor:
    """k times the expected mean-square relative error over the vectors z,
    mean_s k E||(Â - A) z_s||^2 / ||A z_s||^2, ``[...]``; infinite where some A z_s = 0
    with z_s != 0. A vector z_s = 0 (a sample whose ReLU zeroed the layer's input) is
    reproduced exactly by any Â and is left out of the mean."""
    az2 = (z @ a.mT).square().sum(dim=-1)
    ratio = torch.where(az2 > 0, projection_variance(a, z) / az2, math.inf)
    return _over_nonzero(ratio, z)


def _over_nonzero(per_vector: Tensor, z: Tensor) -> Tensor:
    """The mean of ``per_vector [..., s]`` over the vectors z_s that are not zero."""
    return per_vector.masked_fill(z.square().sum(dim=-1) == 0, math.nan).nanmean(dim=-1)


def expected_relative_error(a: Tensor, z: Tensor, k: Tensor | int) -> Tensor:
    """The RMS over the vectors z of the relative error ||(Â - A) z|| / ||A z|| in
    expectation over the helpers, sqrt(relative_variance / k)."""
    return torch.sqrt(relative_variance(a, z) / k)


def helpers_for_error(a: Tensor, z: Tensor, eps: float) -> Tensor:
    """The smallest k whose expected mean-square relative error over z is at most eps^2,
    ceil(relative_variance / eps^2), as floats (infinite where no k reaches it). With
    mu = ||A z|| / (||A||_F ||z||) the layer cushion (Definition 4.1), k is about
    h_out / (mu^2 eps^2): large cushions give small k. (Theorem 4.1's count q, with
    1 / (mu_i^2 mu_{i->}^2) per layer, also holds the interlayer cushion because it aims
    at the error of the net's output; a target for each layer's own output needs mu_i.)"""
    return torch.ceil(relative_variance(a, z) / eps**2 - 1e-9)


def layer_output_error(a: Tensor, projected: Tensor, z: Tensor, kind: LayerCompression | None = None) -> Tensor:
    """The RMS over the vectors z of ||(Â - A) z|| / ||A z||: one draw's relative error of
    a layer's output (``kind``'s; default dense), the measured counterpart of
    ``expected_relative_error``. Vectors (or maps) z = 0 are left out."""
    kind = kind or DENSE
    exact = kind.apply(a, z)
    start = z.dim() - kind.input_rank  # where one vector's (map's) dimensions begin
    moved = (kind.apply_projected(projected, z) - exact).flatten(start_dim=start).norm(dim=-1)
    rel = (moved / exact.flatten(start_dim=start).norm(dim=-1)).square()
    zero = z.flatten(start_dim=start).square().sum(dim=-1) == 0
    return rel.masked_fill(zero, math.nan).nanmean(dim=-1).sqrt()


def random_signs(count: int, generator: torch.Generator) -> Tensor:
    """``count`` iid +-1 values (int8, CPU): random bytes unpacked into bits, several
    times faster than drawing each sign on its own."""
    raw = torch.randint(0, 256, ((count + 7) // 8,), generator=generator, dtype=torch.uint8)
    bits = (raw.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.view(-1)[:count].to(torch.int8) * 2 - 1


def compress(weights: Sequence[Tensor], k: int | Sequence[int | Tensor], seed: int,
             kinds: Sequence[LayerCompression] | None = None) -> list[Tensor]:
    """Compress every layer (Matrix-Project, or each layer's ``kinds``) with helpers of its
    own, drawn from ``seed``: ``k`` one count for every layer, or one per layer (an
    integer, or one per member ``[F]``); a count of 0 keeps the layer as it is."""
    counts = [k] * len(weights) if isinstance(k, int) else list(k)
    if len(counts) != len(weights):
        raise ValueError(f"need one helper count per layer ({len(weights)}), got {len(counts)}")
    return [kind.project(w, c, seed, layer)
            for layer, (w, c, kind) in enumerate(zip(weights, counts, kinds or [DENSE] * len(weights)), start=1)]


def margins(outputs: Tensor, labels: Tensor) -> Tensor:
    """Classification margin f(x)[y] - max_{j != y} f(x)[j], ``[..., n]``."""
    true = outputs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    others = outputs.scatter(-1, labels.unsqueeze(-1), -math.inf)
    return true - others.amax(dim=-1)


def margin_loss(margin: Tensor, gamma: Tensor | float) -> Tensor:
    """The gamma-margin loss: fraction of samples with margin <= gamma."""
    if isinstance(gamma, Tensor):
        gamma = gamma.unsqueeze(-1)
    return (margin <= gamma).to(margin.dtype).mean(dim=-1)


def effective_params(c: float, depth: int, max_output_norm: float, mu: Sequence[float],
                     mu_to: Sequence[float], gamma: float) -> float:
    """q of Theorem 4.1: c^2 d^2 max ||f(x)||^2 sum_i 1/(mu_i^2 mu_{i->}^2) / gamma^2."""
    total = sum(1.0 / (m**2 * t**2) for m, t in zip(mu, mu_to))
    return c**2 * depth**2 * max_output_norm**2 * total / gamma**2


class LayerCompression(Protocol):
    """How one kind of layer is compressed, for the functions below. ``a`` is a layer's
    A (a family's: ``[F, ...]``, or one net's for ``DENSE``) and ``z`` its inputs on the
    samples; ``k`` helpers, one count or one per member. ``rank``: the dimensions of one
    member's A; ``input_rank``: of one input vector (or map)."""

    rank: int
    input_rank: int

    def apply(self, a: Tensor, z: Tensor) -> Tensor:
        """A z, ``[..., s, *outputs]``."""

    def entries(self, a: Tensor) -> int:
        """The numbers one member's A holds."""

    def max_helpers(self, a: Tensor) -> int:
        """The most helpers that store fewer numbers than A holds."""

    def stored(self, k: Tensor) -> Tensor:
        """The numbers k helpers store (with the seed of the helpers)."""

    def relative_error2(self, a: Tensor, z: Tensor, k: Tensor | int) -> Tensor:
        """The expected mean-square relative error of the layer's output over z, ``[F]``."""

    def helpers_for_error(self, a: Tensor, z: Tensor, eps: float) -> Tensor:
        """The least k whose ``relative_error2`` is at most eps^2, ``[F]`` (floats)."""

    def project(self, a: Tensor, k: Tensor | int, seed: int, layer: int) -> Tensor:
        """The compressed layer, from helpers named by ``seed`` and ``layer``."""

    def apply_projected(self, projected: Tensor, z: Tensor) -> Tensor:
        """The compressed layer's outputs on z, as ``apply``'s."""


class DenseLayer:
    """A fully connected layer ``[out, in]`` on vectors: Matrix-Project."""

    rank = 2
    input_rank = 1

    def apply(self, a: Tensor, z: Tensor) -> Tensor:
        return z @ a.mT

    def entries(self, a: Tensor) -> int:
        return a.shape[-1] * a.shape[-2]

    def max_helpers(self, a: Tensor) -> int:
        return self.entries(a) - 1

    def stored(self, k: Tensor) -> Tensor:
        return k

    def relative_error2(self, a: Tensor, z: Tensor, k: Tensor | int) -> Tensor:
        return relative_variance(a, z) / k

    def helpers_for_error(self, a: Tensor, z: Tensor, eps: float) -> Tensor:
        return helpers_for_error(a, z, eps)

    def project(self, a: Tensor, k: Tensor | int, seed: int, layer: int) -> Tensor:
        return matrix_project(a, k, named_generator(seed, "matrix-project", layer))

    def apply_projected(self, projected: Tensor, z: Tensor) -> Tensor:
        return self.apply(projected, z)


DENSE = DenseLayer()


def choose_helpers(weights: Sequence[Tensor], inputs: Sequence[Tensor], eps: float, max_k: int,
                   kinds: Sequence[LayerCompression] | None = None) -> tuple[list[Tensor], list[Tensor]]:
    """Per layer, the helper counts from a target error (``helpers_for_error``): ``[F]``
    counts used (0: the layer is kept as it is) and ``[F]`` counts the target needs. A
    layer is compressed only when its k helpers store fewer numbers than A has (a dense
    layer: fewer than fan_in * fan_out helpers) and k is at most ``max_k`` (each helper
    costs as many random numbers as A has entries). ``inputs[i]`` is phi(x^{i-1}) on the
    samples; ``kinds`` the layers' (default: all dense)."""
    used, needed = [], []
    for w, z, kind in zip(weights, inputs, kinds or [DENSE] * len(weights)):
        need = kind.helpers_for_error(w, z, eps).clamp_min(1)
        cap = min(max_k, kind.max_helpers(w))
        used.append(torch.where(need <= cap, need, 0).to(torch.int64))
        needed.append(need)
    return used, needed


def given_helpers(weights: Sequence[Tensor], k: Sequence[int], kinds: Sequence[LayerCompression] | None = None
                  ) -> list[Tensor]:
    """Per layer ``[F]`` counts from one given k per layer (``weights`` a family's, or a
    dense net's without F); a layer with k = 0, or whose k helpers would store no fewer
    numbers than A holds, is kept as it is."""
    counts = []
    for w, c, kind in zip(weights, k, kinds or [DENSE] * len(weights)):
        counts.append(torch.full(w.shape[:w.dim() - kind.rank], c if 0 < c <= kind.max_helpers(w) else 0, dtype=torch.int64,
                                 device=w.device))
    return counts

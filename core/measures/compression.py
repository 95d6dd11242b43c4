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

A convolutional layer (the paper's Section 5) is compressed the same way: its kernel
tensor ``[C_out, C_in, k, k]`` is projected on helper tensors of its own shape (the
paper's Tensor-Project is Matrix-Project of the kernel read as one vector), and each
output coordinate (channel o, position p) is the bilinear form <A, e_o (x) patch_p(z)>,
so the same variance summed over channels and positions gives the expected error of the
layer's output (``CONV.variance``). Every function takes the layer kind as ``op``:
``DENSE`` (a ``[out, in]`` matrix on vectors, the default) or ``CONV`` (kernels on maps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as nnf

from theoryscope.core.measures.invertibility import conv
from theoryscope.core.seeding import generator as named_generator

Tensor = torch.Tensor


def matrix_project(a: Tensor, k: int | Tensor, generator: torch.Generator, chunk: int = 64) -> Tensor:
    """Â for ``a`` of shape ``[m, n]`` or ``[F, m, n]``, or a family of kernels
    ``[F, C_out, C_in, k, k]`` (projected as one vector each: Tensor-Project). ``k`` is one
    count, or one per member (``[F]``): member f uses the first k_f helpers of one shared
    sequence (the helpers depend on the generator only), and a member with k_f = 0 keeps
    A. Helpers are drawn ``chunk`` at a time on the CPU, always whole chunks, so the
    sequence is the same whatever the counts."""
    single = a.dim() == 2
    stacked = a.unsqueeze(0) if single else a
    f, entries = stacked.shape[0], stacked[0].numel()
    counts = torch.as_tensor(k, dtype=torch.int64).reshape(-1).expand(f).to(stacked.device)
    flat = stacked.reshape(f, entries)
    total = torch.zeros_like(flat)
    for start in range(0, int(counts.max()), chunk):
        helpers = random_signs(chunk * entries, generator).to(stacked).view(chunk, entries)
        used = (start + torch.arange(chunk, device=stacked.device)) < counts.unsqueeze(-1)  # [F, chunk]
        coefficients = (flat @ helpers.T) * used  # <A, M_l> for the helpers member f uses
        total += coefficients @ helpers
    kept = (counts == 0).unsqueeze(-1)
    projected = torch.where(kept, flat, total / counts.clamp_min(1).unsqueeze(-1).to(flat.dtype)).view_as(stacked)
    return projected.squeeze(0) if single else projected


@dataclass(frozen=True)
class LinearMap:
    """How one kind of layer acts, for the functions below: ``apply(a, z)`` gives the
    outputs A z per vector, flattened, ``[..., s, outputs]``; ``variance(a, z)`` is k
    times the expected squared error of Matrix-Project on them, ``[..., s]``; ``norms2(z)``
    the squared norms of the vectors, ``[..., s]``; ``rank`` the dimensions of one
    layer's A (2 for a matrix, 4 for a kernel), before which come any family's."""

    apply: Callable[[Tensor, Tensor], Tensor]
    variance: Callable[[Tensor, Tensor], Tensor]
    norms2: Callable[[Tensor], Tensor]
    rank: int

    def entries(self, a: Tensor) -> int:
        """The numbers one member's A holds (with as many helpers, no fewer are stored)."""
        return math.prod(a.shape[-self.rank:])

    def members(self, a: Tensor) -> torch.Size:
        """The family's shape ahead of A's own dimensions (empty for a single layer)."""
        return a.shape[:-self.rank]


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


def conv_projection_variance(a: Tensor, z: Tensor) -> Tensor:
    """``projection_variance`` of a conv layer: kernels ``a [F, C_out, C_in, k, k]`` on maps
    ``z [F, s, C_in, H, W]`` (stride 1, zero "same" padding) -> ``[F, s]``,

        k E||(Â - A) z||^2 = C_out ||A||_F^2 sum_p ||patch_p(z)||^2 + ||A z||^2
                             - 2 sum_(o, p) sum_e A_oe^2 patch_p(z)_e^2,

    the bilinear variance with u (x) v = e_o (x) patch_p(z) summed over output channels o
    and positions p. Both sums over patches are convolutions: of z^2 with a kernel of ones
    (each pixel counted once per patch it falls in) and of z^2 with A^2."""
    c_out, k = a.shape[1], a.shape[-1]
    fro2 = a.square().flatten(start_dim=1).sum(dim=-1).unsqueeze(-1)  # [F, 1]
    ones = torch.ones(1, 1, k, k, dtype=z.dtype, device=z.device)
    z2 = z.square()
    patches = nnf.conv2d(z2.sum(dim=2).flatten(end_dim=1).unsqueeze(1), ones, padding=k // 2)
    patch_energy = patches.flatten(start_dim=1).sum(dim=-1).view(z.shape[:2])  # sum_p ||patch_p||^2
    az2 = conv(a, z).square().flatten(start_dim=2).sum(dim=-1)
    cross = conv(a.square(), z2).flatten(start_dim=2).sum(dim=-1)
    return c_out * fro2 * patch_energy + az2 - 2 * cross


DENSE = LinearMap(apply=lambda a, z: z @ a.mT, variance=projection_variance,
                  norms2=lambda z: z.square().sum(dim=-1), rank=2)
# A family's kernels [F, C_out, C_in, k, k] on maps [F, s, C_in, H, W].
CONV = LinearMap(apply=lambda a, z: conv(a, z).flatten(start_dim=2), variance=conv_projection_variance,
                 norms2=lambda z: z.square().flatten(start_dim=2).sum(dim=-1), rank=4)


def relative_variance(a: Tensor, z: Tensor, op: LinearMap = DENSE) -> Tensor:
    """k times the expected mean-square relative error over the vectors z,
    mean_s k E||(Â - A) z_s||^2 / ||A z_s||^2, ``[...]``; infinite where some A z_s = 0
    with z_s != 0. A vector z_s = 0 (a sample whose ReLU zeroed the layer's input) is
    reproduced exactly by any Â and is left out of the mean."""
    az2 = op.apply(a, z).square().sum(dim=-1)
    ratio = torch.where(az2 > 0, op.variance(a, z) / az2, math.inf)
    return _over_nonzero(ratio, op.norms2(z))


def _over_nonzero(per_vector: Tensor, norms2: Tensor) -> Tensor:
    """The mean of ``per_vector [..., s]`` over the vectors z_s that are not zero
    (``norms2`` their squared norms)."""
    return per_vector.masked_fill(norms2 == 0, math.nan).nanmean(dim=-1)


def expected_relative_error(a: Tensor, z: Tensor, k: Tensor | int, op: LinearMap = DENSE) -> Tensor:
    """The RMS over the vectors z of the relative error ||(Â - A) z|| / ||A z|| in
    expectation over the helpers, sqrt(relative_variance / k)."""
    return torch.sqrt(relative_variance(a, z, op) / k)


def helpers_for_error(a: Tensor, z: Tensor, eps: float, op: LinearMap = DENSE) -> Tensor:
    """The smallest k whose expected mean-square relative error over z is at most eps^2,
    ceil(relative_variance / eps^2), as floats (infinite where no k reaches it). With
    mu = ||A z|| / (||A||_F ||z||) the layer cushion (Definition 4.1), k is about
    h_out / (mu^2 eps^2): large cushions give small k. (Theorem 4.1's count q, with
    1 / (mu_i^2 mu_{i->}^2) per layer, also holds the interlayer cushion because it aims
    at the error of the net's output; a target for each layer's own output needs mu_i.)"""
    return torch.ceil(relative_variance(a, z, op) / eps**2 - 1e-9)


def layer_output_error(a: Tensor, projected: Tensor, z: Tensor, op: LinearMap = DENSE) -> Tensor:
    """The RMS over the vectors z of ||(Â - A) z|| / ||A z||: one draw's relative error of
    a layer's output, the measured counterpart of ``expected_relative_error``."""
    rel = (op.apply(projected - a, z).norm(dim=-1) / op.apply(a, z).norm(dim=-1)).square()
    return _over_nonzero(rel, op.norms2(z)).sqrt()


def random_signs(count: int, generator: torch.Generator) -> Tensor:
    """``count`` iid +-1 values (int8, CPU): random bytes unpacked into bits, several
    times faster than drawing each sign on its own."""
    raw = torch.randint(0, 256, ((count + 7) // 8,), generator=generator, dtype=torch.uint8)
    bits = (raw.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.view(-1)[:count].to(torch.int8) * 2 - 1


def compress(weights: Sequence[Tensor], k: int | Sequence[int | Tensor], seed: int) -> list[Tensor]:
    """Matrix-Project every layer with helpers of its own, drawn from ``seed``: ``k`` one
    count for every layer, or one per layer (an integer, or one per member ``[F]``); a
    count of 0 keeps the layer as it is."""
    counts = [k] * len(weights) if isinstance(k, int) else list(k)
    if len(counts) != len(weights):
        raise ValueError(f"need one helper count per layer ({len(weights)}), got {len(counts)}")
    return [matrix_project(w, c, named_generator(seed, "matrix-project", layer))
            for layer, (w, c) in enumerate(zip(weights, counts), start=1)]


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


def choose_helpers(weights: Sequence[Tensor], inputs: Sequence[Tensor], eps: float,
                   max_k: int, ops: Sequence[LinearMap] | None = None) -> tuple[list[Tensor], list[Tensor]]:
    """Per layer, the helper counts from a target error (``helpers_for_error``): ``[F]``
    counts used (0: the layer is kept as it is) and ``[F]`` counts the target needs. A
    layer is compressed only when it needs fewer helpers than A has entries (with as
    many, the k numbers are no fewer than A's entries) and at most ``max_k`` (each helper
    costs as many sign draws as A has entries). ``inputs[i]`` is phi(x^{i-1}) on the
    samples; ``ops`` the layers' kinds (default: all dense)."""
    used, needed = [], []
    for w, z, op in zip(weights, inputs, ops or [DENSE] * len(weights)):
        need = helpers_for_error(w, z, eps, op).clamp_min(1)
        cap = min(max_k, op.entries(w) - 1)
        used.append(torch.where(need <= cap, need, 0).to(torch.int64))
        needed.append(need)
    return used, needed


def given_helpers(weights: Sequence[Tensor], k: Sequence[int], ops: Sequence[LinearMap] | None = None
                  ) -> list[Tensor]:
    """Per layer ``[F]`` counts from one given k per layer; a layer with k = 0 or k at
    least its entries is kept as it is (no fewer numbers than A's entries)."""
    return [torch.full(op.members(w), c if 0 < c < op.entries(w) else 0, dtype=torch.int64, device=w.device)
            for w, c, op in zip(weights, k, ops or [DENSE] * len(weights))]

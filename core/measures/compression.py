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

Theorem 4.1 bounds the classification error of the compressed net by the training
margin loss plus sqrt(q / m) (up to log factors), with q the effective number of parameters

    q = c^2 d^2 max_{x in S} ||f(x)||^2 sum_i 1 / (mu_i^2 mu_{i->}^2) / gamma^2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from theoryscope.core.seeding import generator as named_generator

Tensor = torch.Tensor


def matrix_project(a: Tensor, k: int, generator: torch.Generator, chunk: int = 64) -> Tensor:
    """Â for ``a`` of shape ``[m, n]`` or ``[F, m, n]`` (the same helpers for every member;
    they depend on the generator only). Helpers are drawn ``chunk`` at a time on the CPU."""
    single = a.dim() == 2
    stacked = a.unsqueeze(0) if single else a
    m, n = stacked.shape[-2:]
    total = torch.zeros_like(stacked)
    left = k
    flat = stacked.reshape(stacked.shape[0], m * n)
    while left > 0:
        c = min(chunk, left)
        helpers = random_signs(c * m * n, generator).to(stacked).view(c, m * n)
        coefficients = flat @ helpers.T  # <A, M_l>, [F, c]
        total += (coefficients @ helpers).view_as(total)
        left -= c
    projected = total / k
    return projected.squeeze(0) if single else projected


def random_signs(count: int, generator: torch.Generator) -> Tensor:
    """``count`` iid +-1 values (int8, CPU): random bytes unpacked into bits, several
    times faster than drawing each sign on its own."""
    raw = torch.randint(0, 256, ((count + 7) // 8,), generator=generator, dtype=torch.uint8)
    bits = (raw.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.view(-1)[:count].to(torch.int8) * 2 - 1


def compress(weights: Sequence[Tensor], k: int, seed: int) -> list[Tensor]:
    """Matrix-Project every layer with k helpers of its own, drawn from ``seed``."""
    return [matrix_project(w, k, named_generator(seed, "matrix-project", layer))
            for layer, w in enumerate(weights, start=1)]


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

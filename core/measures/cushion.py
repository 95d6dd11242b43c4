"""Noise-stability measures of Arora, Ge, Neyshabur & Zhang, "Stronger generalization
bounds for deep nets via a compression approach", ICML 2018 (Section 4).

Notation of the paper: x^0 is the input, x^i = A^i phi(x^{i-1}) (+ b^i) the
pre-activation output of layer i (phi(x^0) := x^0), h^i the width of layer i, M^{i,j} the
map x^i -> x^j and J^{i,j}_{x^i} its Jacobian at x^i. For a ReLU net
J^{i,j}_{x^i} = A^j D^{j-1} A^{j-1} ... A^{i+1} D^i with D^k = diag(1[x^k > 0]): the exact
ReLU-mask product, computed here per sample (no elementwise shortcut).

Every function takes a single net (``weights`` a list of ``[out, in]`` matrices, ``x`` of
shape ``[n, in]``) or a stacked family (a leading ``F`` on every tensor) and returns
results with the same leading dimension. ``nonlinear=False`` makes phi the identity (a
deep linear net). Random perturbations are drawn once, from ``generator``, and shared by
all members of a family (common random numbers), so a family's results equal its
members' results computed one by one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Tensor = torch.Tensor
# Largest number of Jacobian entries held at once (chunks of samples keep memory bounded).
JACOBIAN_BUDGET = 2**25
# Perturbed activations held per member at once by interlayer_smoothness (samples x draws
# x width): the noise is drawn in blocks of samples of this size, whatever the family size.
SMOOTHNESS_BUDGET = 2**18


def _family(weights: Sequence[Tensor], biases: Sequence[Tensor] | None, x: Tensor):
    """Add a family dimension to a single net; return (weights, biases, x, was_single)."""
    single = weights[0].dim() == 2
    if single:
        weights = [w.unsqueeze(0) for w in weights]
        biases = None if biases is None else [b.unsqueeze(0) for b in biases]
        x = x.unsqueeze(0)
    return list(weights), None if biases is None else list(biases), x, single


def _out(t: Tensor, single: bool) -> Tensor:
    return t.squeeze(0) if single else t


def _phi(z: Tensor, nonlinear: bool) -> Tensor:
    return torch.relu(z) if nonlinear else z


def _layer(w: Tensor, b: Tensor | None, z: Tensor) -> Tensor:
    """A z (+ b) for a family: z ``[F, ..., in]`` -> ``[F, ..., out]``."""
    shape = z.shape
    out = torch.bmm(z.reshape(shape[0], -1, shape[-1]), w.transpose(1, 2)).reshape(*shape[:-1], w.shape[1])
    if b is not None:
        out = out + b.view(b.shape[0], *([1] * (out.dim() - 2)), b.shape[1])
    return out


def preactivations(weights, biases, x: Tensor, nonlinear: bool = True) -> list[Tensor]:
    """[x^0, x^1, ..., x^L] of a family (x^0 the input)."""
    xs = [x]
    for i, w in enumerate(weights):
        inp = xs[-1] if i == 0 else _phi(xs[-1], nonlinear)
        xs.append(_layer(w, None if biases is None else biases[i], inp))
    return xs


def _mask(z: Tensor, nonlinear: bool) -> Tensor:
    """Diagonal of D = phi'(z): 1[z > 0] for ReLU (autograd's convention at 0), else 1."""
    return (z > 0).to(z.dtype) if nonlinear else torch.ones_like(z)


def layer_cushion(weights, biases, x: Tensor, nonlinear: bool = True) -> Tensor:
    """Per-sample layer cushion (Definition 4.1), ``[L, n]``:
    ``||A^i phi(x^{i-1})|| / (||A^i||_F ||phi(x^{i-1})||)``. The paper's mu_i is the
    minimum over the samples. Biases are not part of A^i phi(x^{i-1})."""
    weights, biases, x, single = _family(weights, biases, x)
    xs = preactivations(weights, biases, x, nonlinear)
    rows = []
    for i, w in enumerate(weights, start=1):
        a = xs[0] if i == 1 else _phi(xs[i - 1], nonlinear)
        num = _layer(w, None, a).norm(dim=-1)
        den = torch.linalg.matrix_norm(w).unsqueeze(-1) * a.norm(dim=-1)
        rows.append(unconstrained_inf(num, den))
    return _out(torch.stack(rows, dim=1), single)


def activation_contraction(weights, biases, x: Tensor, nonlinear: bool = True) -> Tensor:
    """Per hidden layer, ``[L-1]``: max over samples of ``||x^i|| / ||phi(x^i)||``
    (Definition 4.3; the paper's c is the maximum over layers, 1 with no hidden layer)."""
    weights, biases, x, single = _family(weights, biases, x)
    xs = preactivations(weights, biases, x, nonlinear)
    # A sample with x^i = 0 meets ||phi(x^i)|| >= ||x^i|| / c for every c: ratio 1, the least.
    rows = [torch.where(xs[i].norm(dim=-1) > 0, xs[i].norm(dim=-1) / _phi(xs[i], nonlinear).norm(dim=-1), 1.0)
            .amax(dim=-1) for i in range(1, len(weights))]
    f = x.shape[0]
    return _out(torch.stack(rows, dim=1) if rows else x.new_zeros(f, 0), single)


def _jacobian_chunks(weights, xs: list[Tensor], i: int, nonlinear: bool):
    """For layer i, yield ``(samples, j, J)`` with J = J^{i,j}_{x^i} of shape
    ``[F, s, h^j, h^i]`` for j = i+1..L, over chunks of samples."""
    if i >= len(weights):
        return  # no layer above the last
    f, n = xs[0].shape[:2]
    widest = max(w.shape[1] for w in weights[i:])
    chunk = max(1, JACOBIAN_BUDGET // max(1, f * widest * xs[i].shape[-1]))
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        jac = None
        for j in range(i + 1, len(weights) + 1):
            w = weights[j - 1]  # A^j, [F, h^j, h^{j-1}]
            d = _mask(xs[j - 1][:, rows], nonlinear)  # D^{j-1}, [F, s, h^{j-1}]
            if jac is None:  # J^{i,i+1} = A^{i+1} D^i
                jac = w.unsqueeze(1) * d.unsqueeze(2)
            else:  # J^{i,j} = A^j D^{j-1} J^{i,j-1}
                jac = torch.matmul(w.unsqueeze(1), d.unsqueeze(-1) * jac)
            yield rows, j, jac


def _cushion_of(jac: Tensor, xi: Tensor) -> Tensor:
    """``||J x|| / (||J||_F ||x||)`` per sample, ``jac [F, s, a, b]``, ``xi [F, s, b]``."""
    jx = torch.matmul(jac, xi.unsqueeze(-1)).squeeze(-1)
    return unconstrained_inf(jx.norm(dim=-1), torch.linalg.matrix_norm(jac) * xi.norm(dim=-1))


def unconstrained_inf(num: Tensor, den: Tensor) -> Tensor:
    """A cushion's per-sample ratio ``num / den``; +inf where ``den`` is 0 (a zero layer
    input or Jacobian): there mu ||A|| ||x|| <= ||A x|| reads 0 <= 0 and holds for every
    mu, so the sample does not constrain the minimum."""
    return torch.where(den > 0, num / den, math.inf)


def interlayer_cushion(weights, biases, x: Tensor, i: int, j: int, nonlinear: bool = True) -> Tensor:
    """Per-sample interlayer cushion (Definition 4.2), ``[n]``, 1 <= i < j <= L:
    ``||J^{i,j}_{x^i} x^i|| / (||J^{i,j}_{x^i}||_F ||x^i||)``. The paper's mu_{i,j} is the
    minimum over the samples."""
    weights, biases, x, single = _family(weights, biases, x)
    if not 1 <= i < j <= len(weights):
        raise ValueError(f"need 1 <= i < j <= {len(weights)}, got i={i}, j={j}")
    xs = preactivations(weights, biases, x, nonlinear)
    out = x.new_empty(x.shape[0], x.shape[1])
    for rows, jj, jac in _jacobian_chunks(weights, xs, i, nonlinear):
        if jj == j:
            out[:, rows] = _cushion_of(jac, xs[i][:, rows])
    return _out(out, single)


def min_interlayer_cushion(weights, biases, x: Tensor, nonlinear: bool = True) -> Tensor:
    """Per layer and sample, ``[L, n]``: min(1/sqrt(h^i), min_{i<j<=L} of the interlayer
    ratio). Its minimum over samples is the paper's minimal interlayer cushion
    mu_{i->} = min_{i<=j<=L} mu_{i,j} (J^{i,i} = I gives mu_{i,i} = 1/sqrt(h^i))."""
    weights, biases, x, single = _family(weights, biases, x)
    xs = preactivations(weights, biases, x, nonlinear)
    rows = []
    for i in range(1, len(weights) + 1):
        best = torch.full(x.shape[:2], 1.0 / math.sqrt(xs[i].shape[-1]), dtype=x.dtype, device=x.device)
        for samples, _, jac in _jacobian_chunks(weights, xs, i, nonlinear):
            best[:, samples] = torch.minimum(best[:, samples], _cushion_of(jac, xs[i][:, samples]))
        rows.append(best)
    return _out(torch.stack(rows, dim=1), single)


def unit_noise(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Gaussian directions of unit norm along the last axis, drawn on the CPU."""
    eta = torch.randn(*shape, generator=generator, dtype=torch.float64)
    return (eta / eta.norm(dim=-1, keepdim=True)).to(device=like.device, dtype=like.dtype)


def _propagate(weights, biases, z: Tensor, i: int, nonlinear: bool) -> list[Tensor]:
    """[M^{i,i+1}(z), ..., M^{i,L}(z)] for z living at layer i (family, any middle dims)."""
    outs = []
    for k in range(i, len(weights)):
        z = _layer(weights[k], None if biases is None else biases[k], _phi(z, nonlinear))
        outs.append(z)
    return outs


def _linearised(weights, xs: list[Tensor], z: Tensor, i: int, nonlinear: bool) -> list[Tensor]:
    """[J^{i,j}_{x^i} z for j = i+1..L]: the map with every mask fixed at x's pattern
    (``xs`` the pre-activations of the same samples as ``z [F, n, draws, h^i]``)."""
    outs = []
    for k in range(i, len(weights)):
        z = _layer(weights[k], None, _mask(xs[k], nonlinear).unsqueeze(2) * z)
        outs.append(z)
    return outs


def _smoothness_block(weights, biases, xs: list[Tensor], i: int, eta_unit: Tensor, noise_scale: float,
                      nonlinear: bool) -> Tensor:
    """Definition 4.4's ratio at layer i for a block of samples, ``[F, s, draws]``:
    min over j > i of ||eta|| ||x^j|| / (||x^i|| ||M^{i,j}(x^i + eta) - J^{i,j}(x^i + eta)||)."""
    xi = xs[i]
    eta = eta_unit * (noise_scale * xi.norm(dim=-1))[..., None, None]
    z = xi.unsqueeze(2) + eta
    ratio = torch.full(eta.shape[:-1], math.inf, dtype=xi.dtype, device=xi.device)
    for j, (true, lin) in enumerate(zip(_propagate(weights, biases, z, i, nonlinear),
                                        _linearised(weights, xs, z, i, nonlinear)), start=i + 1):
        gap = (true - lin).norm(dim=-1)
        scale = eta.norm(dim=-1) * xs[j].norm(dim=-1).unsqueeze(-1) / xi.norm(dim=-1).unsqueeze(-1)
        ratio = torch.minimum(ratio, torch.where(gap > 0, scale / gap, math.inf))
    return ratio


def interlayer_smoothness(weights, biases, x: Tensor, noise_scale: float = 0.1, draws: int = 32,
                          generator: torch.Generator | None = None, nonlinear: bool = True) -> Tensor:
    """Per hidden layer i, sample and noise draw, ``[L-1, n, draws]``: the largest rho for
    which Definition 4.4's inequality holds at every later layer,

        min_{i<j<=L} ||eta|| ||x^j|| / (||x^i|| ||M^{i,j}(x^i + eta) - J^{i,j}_{x^i}(x^i + eta)||),

    with eta Gaussian of norm ``noise_scale * ||x^i||``, independent across layers, samples
    and draws (the paper's eta comes from compressing the layers below i; Gaussian noise
    of a chosen relative size stands in for it). Infinite where the map is linear along
    the perturbation. Draw d of every layer and sample together is one noise event:
    ``net_smoothness`` turns the ratios into the paper's rho_delta, ``layer_smoothness``
    into a per-layer figure.

    The noise is drawn in blocks of samples whose size depends on ``draws`` and the widths
    only, never on the family size, so a family measures what its members measure alone.
    """
    weights, biases, x, single = _family(weights, biases, x)
    xs = preactivations(weights, biases, x, nonlinear)
    f, n = x.shape[:2]
    rows = []
    for i in range(1, len(weights)):
        block = max(1, SMOOTHNESS_BUDGET // (draws * max(w.shape[1] for w in weights[i - 1:])))
        ratio = x.new_empty(f, n, draws)
        for start in range(0, n, block):
            samples = slice(start, min(n, start + block))
            eta = unit_noise((samples.stop - start, draws, xs[i].shape[-1]), generator, x)
            ratio[:, samples] = _smoothness_block(weights, biases, [t[:, samples] for t in xs], i, eta,
                                                  noise_scale, nonlinear)
        rows.append(ratio)
    if not rows:
        return _out(x.new_zeros(f, 0, n, draws), single)
    return _out(torch.stack(rows, dim=1), single)


def draw_quantile(per_draw: Tensor, delta: float) -> Tensor:
    """The largest rho that at least a 1 - delta fraction of the draws reach, over the last
    axis (D draws): the order statistic of rank D - ceil((1 - delta) D) (0-based), i.e.
    floor(delta D), with no interpolation. Fewer than 1/delta draws give the minimum."""
    draws = per_draw.shape[-1]
    required = math.ceil((1 - delta) * draws - 1e-9)  # draws that must hold; 1e-9 absorbs rounding of (1-delta)D
    return torch.sort(per_draw, dim=-1).values[..., draws - required]


def net_smoothness(ratios: Tensor, delta: float) -> Tensor:
    """rho_delta of Definition 4.4, one number per net: the largest rho such that, with
    probability at least 1 - delta over the noise, the inequality holds for *every* layer
    pair i < j and *every* sample at once. Per draw (one noise event) the minimum over
    layers and samples; then ``draw_quantile`` over the draws. ``ratios`` is
    ``[..., L-1, n, draws]`` from ``interlayer_smoothness``; with no hidden layer there is
    no pair i < j and rho_delta is infinite (the condition holds vacuously).

    The paper writes "the smallest number such that"; the inequality holds for every rho
    below any that satisfies it, so the informative reading, and the one Theorem 4.1's
    premise rho_delta >= 3d needs, is the largest."""
    if ratios.shape[-3] == 0 or ratios.shape[-2] == 0:
        return ratios.new_full(ratios.shape[:-3], math.inf)
    return draw_quantile(ratios.amin(dim=-2).amin(dim=-2), delta)


def layer_smoothness(ratios: Tensor, delta: float) -> Tensor:
    """rho_delta restricted to one layer i, ``[..., L-1]``: per draw the minimum over the
    samples (and over j > i, already in ``ratios``), then ``draw_quantile`` over the draws.
    The paper's rho_delta (``net_smoothness``) is at most the smallest of these."""
    if ratios.shape[-2] == 0:
        return ratios.new_full(ratios.shape[:-2], math.inf)
    return draw_quantile(ratios.amin(dim=-2), delta)


def pooled_smoothness(ratios: Tensor, delta: float) -> Tensor:
    """The pooled figure earlier versions reported as rho_delta, per layer: the
    delta-quantile (linear interpolation) of the ratios over samples and draws together,
    i.e. the largest rho for which the inequality holds for a 1 - delta fraction of the
    (sample, draw) pairs. Not the paper's quantity (it asks all samples at once); larger
    than ``layer_smoothness``. ``ratios`` is ``[..., L-1, n, draws]``."""
    flat = ratios.flatten(start_dim=-2)
    if flat.numel() == 0:  # no hidden layer
        return flat.new_zeros(flat.shape[:-1])
    finite = torch.where(torch.isinf(flat), torch.finfo(flat.dtype).max, flat)
    q = torch.quantile(finite, delta, dim=-1)
    return torch.where(q >= torch.finfo(flat.dtype).max, math.inf, q)


def noise_attenuation(weights, biases, x: Tensor, generator: torch.Generator | None = None,
                      nonlinear: bool = True, noise_scale: float = 0.1) -> Tensor:
    """How noise injected at layer i dies out upward (Arora et al. 2018, Figure 1),
    ``[L-1, L]``: for 1 <= i < j <= L the median over samples of
    ``||M^{i,j}(x^i + eta) - x^j|| / ||x^j||`` with Gaussian eta of norm
    ``noise_scale * ||x^i||`` (one draw per sample); NaN where j <= i. Column L is the
    output; at j = i the ratio would be ``noise_scale`` itself."""
    weights, biases, x, single = _family(weights, biases, x)
    xs = preactivations(weights, biases, x, nonlinear)
    f, n = x.shape[:2]
    depth = len(weights)
    out = torch.full((f, max(depth - 1, 0), depth), math.nan, dtype=x.dtype, device=x.device)
    for i in range(1, depth):
        xi = xs[i]
        eta = unit_noise((n, xi.shape[-1]), generator, x) * (noise_scale * xi.norm(dim=-1, keepdim=True))
        for j, noisy in enumerate(_propagate(weights, biases, xi + eta, i, nonlinear), start=i + 1):
            rel = (noisy - xs[j]).norm(dim=-1) / xs[j].norm(dim=-1)
            out[:, i - 1, j - 1] = rel.nanmedian(dim=-1).values  # 0/0 (x^j = 0, unmoved): left out
    return _out(out, single)


def weight_norms(weights: Sequence[Tensor]) -> dict[str, Tensor]:
    """Per layer ``[L]`` (or ``[F, L]``): Frobenius norm, spectral norm and stable rank
    ``||A||_F^2 / ||A||_2^2``."""
    fro = torch.stack([torch.linalg.matrix_norm(w) for w in weights], dim=-1)
    spec = torch.stack([_spectral_norm(w) for w in weights], dim=-1)
    return {"frobenius": fro, "spectral": spec, "stable_rank": fro**2 / spec**2}


def _spectral_norm(w: Tensor) -> Tensor:
    """sqrt of the largest eigenvalue of the smaller Gram matrix, in float64: as exact as
    an SVD and several times faster for batches on a GPU (measured on an H200: 0.5 s
    against 1.7 s for 256 matrices of 256 x 256, error 1e-15 against 5e-5 in float32)."""
    w64 = w.double()
    gram = w64.mT @ w64 if w.shape[-1] <= w.shape[-2] else w64 @ w64.mT
    return torch.linalg.eigvalsh(gram)[..., -1].clamp_min(0).sqrt().to(w.dtype)

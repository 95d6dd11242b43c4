"""Complexity measures of Jiang, Neyshabur, Mobahi, Krishnan & Bengio, "Fantastic
generalization measures and where to find them", ICLR 2020 (Appendix C), for a stacked
family of MLPs, deep linear nets or CNNs.

Notation of the paper: A_i (here ``weights[i]``, ``[F, out, in]``) the weight matrices,
A_i^0 those at initialization, w the vector of every parameter (weights and biases),
omega its length, m the number of training samples, gamma the 10th percentile of the
training margins. ``||.||_F`` is the Frobenius norm, ``||.||_sigma`` the spectral norm
(exact: ``cushion.weight_norms``, float64 Gram eigenvalues).

Choices the paper leaves open, made once here:

* Norm- and distance-based measures look at the weight matrices A_i only (as the
  reference code of Dziugaite et al. 2020, which implements Jiang's list, leaves the
  biases out); ``path_norm`` counts the bias paths too
  (a bias is an edge from a unit that is always 1, as Neyshabur et al. 2015 treat it);
  ``params`` and every flatness measure (PAC-Bayes, sharpness, Hessian) see every
  trainable parameter, weights and biases.
* Values are the formulas themselves; the reference code's rescaling by the sample
  size (sqrt(value / m), or (value - log m) / 2 for the log measures) is monotone at
  fixed m and left to the ranking.
* Random perturbations are drawn on the CPU from the ``generator`` passed in, without a
  family dimension, and shared by every member (common random numbers): a family's
  numbers equal its members' numbers computed alone, up to rounding.

The forward pass is chosen by ``net`` (``Net``): ``True`` / ``False`` for an MLP / a deep
linear net (``models.Params``, ``models.forward``), a ``cnn.ConvArch`` for a CNN
(``cnn.ConvParams``, ``cnn.forward`` on the flat inputs viewed as its images). A CNN's
"matrices" A_i are its conv layers, then the head, and Jiang et al.'s definitions read:

* ``||A_i||_F`` is the kernel tensor's norm (the reshaped kernel's, as in Dziugaite et
  al.'s reference code; the head is a plain matrix);
* ``||A_i||_sigma`` is the operator norm of the convolution on the n x n map the layer
  convolves, with CIRCULAR padding (``conv_spectral.conv_spectral_norm``: Sedghi, Gupta &
  Long 2019, exact, as the reference code's "_FFT" measures), not the net's zero padding,
  whose norm is not computed exactly: the circular norm is not a bound for it (see
  ``conv_spectral``); ``conv_spectral.zero_padding_norm_bound`` would be one, but it is
  the circular norm on larger maps, not the operator the reference code measures, and
  the circular operator's rows also give ``spectral_complexity``'s (2,1) norm exactly;
* ``spectral_complexity`` takes the same circular operator as the matrix A_i: each of its
  rows (an output channel at one position) holds that channel's whole kernel, so
  ``||A_i^T - M_i^T||_{2,1}`` = n^2 sum_c ||K_c - M_c||_F;
* ``path_norm`` is the net itself (max-pooling included) with every parameter squared on
  an all-ones image, outputs summed (Jiang's eq. 44 as the reference code computes it); a
  max over a window of non-negative maps is not a sum over paths, so with pooling it is
  the network's value, not a path enumeration;
* margins, PAC-Bayes, sharpness and the Hessian read the forward pass and every tensor
  of ``params.tensors()`` (kernels, head and biases), as for an MLP.

Every function takes a family (a leading ``F`` on every tensor) and returns ``[F]``
tensors, computed for all members at once.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch

from theoryscope.core import cnn, models, nets
from theoryscope.core.measures.complexity_defaults import (
    HESSIAN_ITERATIONS, MAGNITUDE_EPS, PACBAYES_DRAWS, PACBAYES_STEPS, PACBAYES_TARGET, PACBAYES_TOLERANCE,
    SHARPNESS_ALPHA, SHARPNESS_STEPS, SIGMA_RANGE,
)
from theoryscope.core.measures.compression import margins as classification_margins
from theoryscope.core.measures.conv_spectral import conv_spectral_norm
from theoryscope.core.measures.cushion import weight_norms
from theoryscope.core.train import StackedData, member_losses

Tensor = torch.Tensor
# What a family's nets are, which chooses the forward pass: True / False an MLP / a deep
# linear net (``models.forward``), a ``cnn.ConvArch`` a CNN (``cnn.forward``).
Net = bool | cnn.ConvArch

# Largest number of elements (perturbed parameters plus activations) one batched forward
# of perturbed nets holds; the draws are evaluated in chunks that fit. Cache-sized: on a
# CPU, 8 draws of a 64-member width-64 family cost 9.4 plain forwards in chunks of this
# size against 12.5 in one batch of 2^26 elements; a family of hundreds of members fills
# a GPU with one draw per chunk.
PERTURBED_BUDGET = 2**22


def _member_view(v: Tensor, like: Tensor) -> Tensor:
    """``[F]`` -> ``[F, 1, ...]`` broadcasting against ``like`` ``[F, ...]``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def forward(params: nets.Params, x: Tensor, net: Net) -> Tensor:
    """Outputs ``[F, n, o]`` of a family on flat inputs ``x`` ``[F, n, d]``: ``models.forward``
    (``net`` the nonlinearity flag) or, ``net`` a ``cnn.ConvArch``, ``cnn.forward`` on ``x``
    viewed as the images it flattens, ``[F, n, C, H, W]`` (a stride-0 ``x`` stays shared)."""
    conv = isinstance(net, cnn.ConvArch)
    if conv != isinstance(params, cnn.ConvParams):
        raise TypeError(f"net must be a cnn.ConvArch exactly for cnn.ConvParams (and a bool for models.Params), got "
                        f"{type(net).__name__} for {type(params).__name__}")
    if conv:
        return cnn.forward(params, x.view(*x.shape[:-1], *net.in_shape), net.pool)
    return models.forward(params, x, net)


# ---------------------------------------------------------------------------------------
# Norms and distances from initialization
# ---------------------------------------------------------------------------------------

def _finite_members(weights: list[Tensor]) -> Tensor:
    """``[F]``: whether every entry of a member's tensors is finite."""
    return torch.stack([torch.isfinite(w).flatten(1).all(dim=1) for w in weights], dim=-1).all(dim=-1)


def layer_norms(weights: list[Tensor]) -> dict[str, Tensor]:
    """``cushion.weight_norms`` (per layer ``[F, L]``: frobenius, spectral, stable_rank),
    NaN for a member with a non-finite entry (a diverged net) instead of an eigensolver
    error for the whole family."""
    finite = _finite_members(weights)
    norms = weight_norms([torch.where(_member_view(finite, w), w, 0.0) for w in weights])
    return {name: torch.where(finite.unsqueeze(-1), value, math.nan) for name, value in norms.items()}


def conv_maps(arch: cnn.ConvArch) -> list[int]:
    """n of the n x n map each conv block of ``arch`` convolves (its input's, "same" padding)."""
    maps = [b.map for b in arch.shapes.blocks]
    if any(height != wide for height, wide in maps):
        raise ValueError(f"the conv spectral norms need square maps, got {maps}")
    return [height for height, _ in maps]


def conv_layer_norms(weights: list[Tensor], maps: Sequence[int]) -> dict[str, Tensor]:
    """A CNN's layers, per layer ``[F, L]``: ``frobenius`` (the kernel tensor's norm) and
    ``spectral`` (the conv's operator norm on its n x n map with circular padding,
    ``conv_spectral_norm``, in float64) of the kernels ``[F, C_out, C_in, k, k]``, one per
    entry of ``maps`` (its n), then of the head ``[F, o, features]`` (``layer_norms``); NaN
    for a member with a non-finite entry."""
    finite = _finite_members(weights)
    clean = [torch.where(_member_view(finite, w), w, 0.0) for w in weights]
    kernels, head = clean[:len(maps)], clean[len(maps):]
    fro = torch.stack([w.flatten(1).norm(dim=1) for w in kernels], dim=-1)
    spec = torch.stack([conv_spectral_norm(w.double(), n).to(w.dtype) for w, n in zip(kernels, maps)], dim=-1)
    tail = weight_norms(head)
    out = {"frobenius": torch.cat([fro, tail["frobenius"]], dim=-1), "spectral": torch.cat([spec, tail["spectral"]], -1)}
    return {name: torch.where(finite.unsqueeze(-1), value, math.nan) for name, value in out.items()}


def _matrices(params: nets.Params) -> list[Tensor]:
    """The A_i: an MLP's weight matrices, a CNN's conv kernels and then its head."""
    if isinstance(params, cnn.ConvParams):
        return [*params.convs, params.head]
    return list(params.weights)


def matrix_norms(weights: list[Tensor], net: Net) -> dict[str, Tensor]:
    """Per layer ``[F, L]`` frobenius and spectral norms of the A_i (``_matrices``' order):
    ``layer_norms`` for an MLP, ``conv_layer_norms`` for a CNN."""
    if isinstance(net, cnn.ConvArch):
        return conv_layer_norms(weights, conv_maps(net))
    return layer_norms(weights)


def path_norm(params: nets.Params, net: Net = True) -> Tensor:
    """The l2 path norm (Neyshabur et al. 2015; Jiang et al. 2020, eq. 44), ``[F]``:
    sum over every input-to-output path of the product of its squared weights, i.e. the
    net with every parameter squared applied to an all-ones input, outputs summed. A
    bias b^i_j starts a path of its own (an edge from a constant unit), so it adds
    (b^i_j)^2 times the squared weights above it. Every entry is non-negative, so the
    ReLU is the identity on this net and the value is the same for MLPs and linear nets.
    A CNN (``net`` its ``cnn.ConvArch``) is run as it is, max-pooling included (the max of
    non-negative maps, not a sum over paths), on one all-ones image."""
    if isinstance(params, cnn.ConvParams):
        squared = nets.like(params, [t.square() for t in params.tensors()])
        ones = params.head.new_ones(1, 1, math.prod(net.in_shape)).expand(params.head.shape[0], 1, -1)  # shared
        return forward(squared, ones, net).sum(dim=(1, 2))
    first = params.weights[0]
    h = first.new_ones(first.shape[0], 1, first.shape[2])
    for i, w in enumerate(params.weights):
        h = torch.bmm(h, w.square().transpose(1, 2))
        if params.biases is not None:
            h = h + params.biases[i].square().unsqueeze(1)
    return h.sum(dim=(1, 2))


def spectral_complexity(weights: list[Tensor], reference: list[Tensor]) -> Tensor:
    """The spectral complexity R_A of Bartlett, Foster & Telgarsky 2017 ("Spectrally-
    normalized margin bounds for neural networks", Theorem 1.1), ReLU and identity being
    1-Lipschitz (rho_i = 1), with the init as reference matrices M_i, ``[F]``:

        R_A = prod_i ||A_i||_sigma * (sum_i (||A_i^T - M_i^T||_{2,1} / ||A_i||_sigma)^{2/3})^{3/2}.

    ``||B||_{2,1}`` is the sum of the l2 norms of B's columns, so for ``[out, in]``
    matrices ``||A^T - M^T||_{2,1}`` is the sum over A's rows (output units) of the l2
    norms of the rows of A - M."""
    spec = layer_norms(weights)["spectral"]
    l21 = torch.stack([(w - m.to(w)).norm(dim=-1).sum(dim=-1) for w, m in zip(weights, reference)], dim=-1)
    return spec.prod(dim=-1) * (l21 / spec).pow(2.0 / 3.0).sum(dim=-1).pow(1.5)


def conv_spectral_complexity(weights: list[Tensor], reference: list[Tensor], maps: Sequence[int]) -> Tensor:
    """``spectral_complexity`` of a CNN, ``[F]``: each conv layer is the matrix of its
    circular convolution on its n x n map (``maps``), whose spectral norm
    ``conv_layer_norms`` gives and whose rows, one per output channel c and position,
    each hold all of channel c's kernel K_c once, so ``||A^T - M^T||_{2,1}`` =
    n^2 sum_c ||K_c - M_c||_F; the head (last) is a plain matrix. Max-pooling is
    1-Lipschitz and, like the ReLU, adds no factor."""
    spec = conv_layer_norms(weights, maps)["spectral"]
    l21 = [n * n * (w - m.to(w)).flatten(2).norm(dim=-1).sum(dim=-1)
           for w, m, n in zip(weights, reference, maps)]
    l21 += [(w - m.to(w)).norm(dim=-1).sum(dim=-1) for w, m in zip(weights[len(maps):], reference[len(maps):])]
    l21 = torch.stack(l21, dim=-1)
    return spec.prod(dim=-1) * (l21 / spec).pow(2.0 / 3.0).sum(dim=-1).pow(1.5)


def parameter_count(params: nets.Params) -> Tensor:
    """omega, every trainable parameter (weights and biases) of one member, as ``[F]``
    float64 (exact up to 2^53) on the parameters' device."""
    tensors = params.tensors()
    count = sum(t[0].numel() for t in tensors)
    return torch.full((tensors[0].shape[0],), float(count), dtype=torch.float64, device=tensors[0].device)


def norm_measures(params: nets.Params, init: nets.Params, net: Net = True) -> dict[str, Tensor]:
    """Jiang et al. 2020, Appendix C, each ``[F]``:

    * ``log_prod_spec`` = sum_i log ||A_i||_sigma^2 (eq. 32),
    * ``log_prod_fro`` = sum_i log ||A_i||_F^2 (eq. 37),
    * ``sum_fro_over_spec`` = sum_i ||A_i||_F^2 / ||A_i||_sigma^2 (eq. 33),
    * ``param_norm`` = sum_i ||A_i||_F^2 (eq. 42), ``path_norm`` (eq. 44, ``path_norm``),
    * ``spectral_complexity`` (Bartlett et al. 2017, ``spectral_complexity``),
    * ``dist_fro`` = sum_i ||A_i - A_i^0||_F^2 (eq. 40),
      ``dist_spec`` = sum_i ||A_i - A_i^0||_sigma^2 (eq. 41),
    * ``params`` = omega (eq. 20).

    ``init`` holds the nets at initialization (the caller rebuilds it from the runs'
    seeds). For an MLP none of these depends on ``net`` (ReLU and identity are both
    1-Lipschitz and positively homogeneous); a CNN's ``cnn.ConvArch`` gives its map sizes
    and pooling (the CNN forms: the module's docstring)."""
    weights, start = _matrices(params), _matrices(init)
    norms = matrix_norms(weights, net)
    fro2, spec2 = norms["frobenius"].square(), norms["spectral"].square()
    gaps = matrix_norms([w - w0.to(w) for w, w0 in zip(weights, start)], net)
    if isinstance(net, cnn.ConvArch):
        complexity = conv_spectral_complexity(weights, start, conv_maps(net))
    else:
        complexity = spectral_complexity(weights, start)
    return {
        "log_prod_spec": spec2.log().sum(dim=-1),
        "log_prod_fro": fro2.log().sum(dim=-1),
        "sum_fro_over_spec": (fro2 / spec2).sum(dim=-1),
        "param_norm": fro2.sum(dim=-1),
        "path_norm": path_norm(params, net),
        "spectral_complexity": complexity,
        "dist_fro": gaps["frobenius"].square().sum(dim=-1),
        "dist_spec": gaps["spectral"].square().sum(dim=-1),
        "params": parameter_count(params),
    }


# ---------------------------------------------------------------------------------------
# Margins
# ---------------------------------------------------------------------------------------

def quantile_of(values: Tensor, q: float) -> Tensor:
    """The q-th percentile over the last axis with linear interpolation between order
    statistics (numpy's and torch.quantile's default), by one sort (no size limit)."""
    ordered = values.sort(dim=-1).values
    position = (q / 100.0) * (values.shape[-1] - 1)
    below = math.floor(position)
    above = min(below + 1, values.shape[-1] - 1)
    return ordered[..., below] + (position - below) * (ordered[..., above] - ordered[..., below])


def margin_measures(params: nets.Params, x_train: Tensor, y_train: Tensor, net: Net,
                    percentile: float = 10.0, norms: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Margin-based measures of Jiang et al. 2020 (Appendix C), classification only,
    each ``[F]``: ``margin`` gamma, the ``percentile``-th percentile (10th in the paper)
    of the training margins f(x)[y] - max_{j != y} f(x)[j];

    * ``inverse_margin`` = 1 / gamma^2 (eq. 22),
    * ``log_spec_over_margin`` = log(prod_i ||A_i||_sigma^2 / gamma^2) (eq. 31),
    * ``log_fro_over_margin`` = log(prod_i ||A_i||_F^2 / gamma^2) (eq. 36),
    * ``path_norm_over_margin`` = path_norm / gamma^2 (eq. 43).

    Where gamma <= 0 (more than the percentile of the samples misclassified) the four
    ratios are NaN: they are undefined, and Jiang's reference code, which takes |gamma|,
    would rank such a net as if it had a positive margin. ``norms``: the output of
    ``norm_measures`` (at least log_prod_spec, log_prod_fro, path_norm), to reuse."""
    if y_train.is_floating_point():
        raise ValueError("margin measures need class labels (classification); got floating-point targets")
    if norms is None:
        per_layer = matrix_norms(_matrices(params), net)
        norms = {"log_prod_spec": per_layer["spectral"].square().log().sum(-1),
                 "log_prod_fro": per_layer["frobenius"].square().log().sum(-1), "path_norm": path_norm(params, net)}
    with torch.no_grad():
        gamma = quantile_of(classification_margins(forward(params, x_train, net), y_train), percentile)
    positive = gamma > 0
    log_gamma2 = torch.where(positive, 2 * gamma.clamp_min(torch.finfo(gamma.dtype).tiny).log(), math.nan)
    inverse = torch.where(positive, 1 / gamma.square(), math.nan)
    return {
        "margin": gamma,
        "inverse_margin": inverse,
        "log_spec_over_margin": norms["log_prod_spec"].to(gamma) - log_gamma2,
        "log_fro_over_margin": norms["log_prod_fro"].to(gamma) - log_gamma2,
        "path_norm_over_margin": norms["path_norm"].to(gamma) * inverse,
    }


# ---------------------------------------------------------------------------------------
# Perturbed nets (shared by the flatness measures)
# ---------------------------------------------------------------------------------------

def _member_dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    """Per member, the inner product of two parameter lists (``[F, ...]`` each), ``[F]``."""
    return sum((x * y).flatten(1).sum(dim=1) for x, y in zip(a, b))


def _shared_draws(tensors: list[Tensor], draws: int, generator: torch.Generator, uniform: bool = False) -> list[Tensor]:
    """Per parameter tensor ``[F, *s]``, noise ``[draws, *s]`` shared by every member:
    standard normal (or uniform on [-1, 1]), drawn in float64 on the CPU."""
    out = []
    for t in tensors:
        shape = (draws, *t.shape[1:])
        raw = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1 if uniform
               else torch.randn(shape, generator=generator, dtype=torch.float64))
        out.append(raw.to(device=t.device, dtype=t.dtype))
    return out


def _training_objective(params: nets.Params, data: StackedData, net: Net, error: bool) -> Tensor:
    """Per member ``[F]``: the training 0-1 error (``error`` and classification) or loss,
    as ``train.member_losses`` defines them."""
    out = forward(params, data.x_train, net)
    if error and data.classification:
        # member_losses' 0-1 error alone: its cross-entropy would double the cost here.
        return (out.argmax(-1) != data.y_train).to(out.dtype).mean(1)
    return member_losses(out, data.y_train, data.classification)[0]


def _activation_units(params: nets.Params, d_in: int) -> int:
    """Numbers per sample in a member's widest layer output: a CNN's widest conv over its
    first (largest) map, ``d_in / C_in`` pixels."""
    if isinstance(params, cnn.ConvParams):
        return d_in // params.convs[0].shape[2] * max(w.shape[1] for w in params.convs)
    return max(w.shape[1] for w in params.weights)


def _perturbed_mean(params: nets.Params, data: StackedData, net: Net, noise: list[Tensor],
                    scale: Callable[[Tensor], Tensor]) -> Tensor:
    """Per member ``[F]``: the training error (loss for regression) of w + u averaged over
    the draws, u = scale(t) * z for each parameter tensor t and shared draw z. The draws
    x members are one bigger stacked family, evaluated in chunks of draws that fit
    ``PERTURBED_BUDGET``."""
    tensors = params.tensors()
    f, n, d_in = data.x_train.shape
    per_draw = f * (sum(t[0].numel() for t in tensors) + n * (d_in + _activation_units(params, d_in)))
    chunk = max(1, PERTURBED_BUDGET // per_draw)
    draws = noise[0].shape[0]
    total = data.x_train.new_zeros(f)
    for start in range(0, draws, chunk):
        c = min(chunk, draws - start)
        moved = [(t.unsqueeze(0) + scale(t).unsqueeze(0) * z[start:start + c].unsqueeze(1)).flatten(0, 1)
                 for t, z in zip(tensors, noise)]
        x = data.x_train.unsqueeze(0).expand(c, *data.x_train.shape).flatten(0, 1)
        y = data.y_train.unsqueeze(0).expand(c, *data.y_train.shape).flatten(0, 1)
        stacked = StackedData(x, y, x, y, data.classification)
        total += _training_objective(nets.like(params, moved), stacked, net, error=True).view(c, f).sum(0)
    return total / draws


# ---------------------------------------------------------------------------------------
# PAC-Bayes flatness
# ---------------------------------------------------------------------------------------

def _noise_scale(sigma: Tensor, magnitude_eps: float | None) -> Callable[[Tensor], Tensor]:
    """The standard deviation of the noise on each entry of a parameter tensor ``[F, ...]``:
    sigma (isotropic) or sqrt(sigma^2 w^2 + eps^2) (magnitude-aware), sigma ``[F]``."""
    if magnitude_eps is None:
        return lambda t: _member_view(sigma, t)
    return lambda t: (_member_view(sigma, t).square() * t.square() + magnitude_eps**2).sqrt()


def _members(params: nets.Params, data: StackedData, index: Tensor) -> tuple[nets.Params, StackedData]:
    """The members ``index`` of a family: their parameters and training data."""
    picked = [t.index_select(0, index) for t in params.tensors()]
    x, y = data.x_train.index_select(0, index), data.y_train.index_select(0, index)
    return nets.like(params, picked), StackedData(x, y, x, y, data.classification)


def _sigma_search(params: nets.Params, data: StackedData, net: Net, noise: list[Tensor],
                  baseline: Tensor, target: float, tolerance: float, steps: int, sigma_range: tuple[float, float],
                  magnitude_eps: float | None) -> Tensor:
    """Bisection on log(sigma), every member in its own interval at once: the largest
    tested sigma whose mean perturbed error (loss) deviates from ``baseline`` by at most
    ``target``, or ``sigma_range[0]`` if none did (NaN for a member whose unperturbed
    error is not finite). A member's search ends early at a tested sigma whose deviation
    is within ``tolerance`` of the target, as in Dziugaite et al.'s (2020) reference code
    (``displacement_tolerance``); that sigma is its result, and only the members still
    searching are evaluated after it. The draws are the same at every step, so with
    ``tolerance = 0`` the result is a non-decreasing function of ``target``."""
    f = baseline.shape[0]
    lo = baseline.new_full((f,), math.log(sigma_range[0]))
    hi = baseline.new_full((f,), math.log(sigma_range[1]))
    index = torch.isfinite(baseline).nonzero().squeeze(1)
    members, member_data = _members(params, data, index)
    for _ in range(steps):
        if index.numel() == 0:
            break
        mid = (lo[index] + hi[index]) / 2
        scale = _noise_scale(mid.exp(), magnitude_eps)
        deviation = (_perturbed_mean(members, member_data, net, noise, scale) - baseline[index]).abs()
        within, close = deviation <= target, (deviation - target).abs() < tolerance
        lo[index] = torch.where(within | close, mid, lo[index])
        hi[index] = torch.where(within | close, hi[index], mid)
        if bool(close.any()):  # those members are done: evaluate the others only
            keep = (~close).nonzero().squeeze(1)
            index = index[keep]
            members, member_data = _members(members, member_data, keep)
    return torch.where(torch.isfinite(baseline), lo.exp(), math.nan)


def pacbayes(params: nets.Params, init: nets.Params, data: StackedData, net: Net, *,
             generator: torch.Generator, target: float = PACBAYES_TARGET, tolerance: float = PACBAYES_TOLERANCE,
             draws: int = PACBAYES_DRAWS, bisection_steps: int = PACBAYES_STEPS, magnitude_eps: float = MAGNITUDE_EPS,
             sigma_range: tuple[float, float] = SIGMA_RANGE) -> dict[str, Tensor]:
    """PAC-Bayes flatness measures of Jiang et al. 2020 (Appendix C; the sigma search as in
    Dziugaite et al. 2020's reference code), each ``[F]``.

    ``pacbayes_sigma`` is the largest sigma such that isotropic noise u ~ N(0, sigma^2 I)
    on every parameter moves the training error (the loss for regression), averaged over
    ``draws`` Monte Carlo draws, by at most ``target`` from the unperturbed one (Jiang:
    accuracy deviation 0.1), found by ``bisection_steps`` steps of bisection on log sigma
    within ``sigma_range`` (Jiang bisects sigma itself on [0, 2]; the log keeps the
    relative precision the same for every net), ending early at a sigma whose deviation
    is within ``tolerance`` of the target (so it may exceed the target by less than
    that). With it, eq. 48 and eq. 53:

        pacbayes_bound = ||w - w^0||_2^2 / (4 sigma^2) + log(m / sigma) + 10,
        pacbayes_flatness = 1 / sigma^2.

    The magnitude-aware variant draws u_i ~ N(0, sigma'^2 w_i^2 + eps^2) (eps =
    ``magnitude_eps``) and gives ``pacbayes_mag_sigma`` sigma', ``pacbayes_mag_flatness``
    1 / sigma'^2 (eq. 61) and, as the paper writes eq. 56,

        pacbayes_mag_bound = 1/4 sum_i log((eps^2 + (sigma'^2 + 1) ||w - w^0||^2 / omega)
                                           / (eps^2 + sigma'^2 (w_i - w_i^0)^2)) + log(m / sigma') + 10.

    Both searches use the same draws z from ``generator`` (u = scale * z), shared by
    every member; w runs over weights and biases."""
    tensors, origin = params.tensors(), init.tensors()
    with torch.no_grad():
        baseline = _training_objective(params, data, net, error=True)
        noise = _shared_draws(tensors, draws, generator)
        search = functools.partial(_sigma_search, params, data, net, noise, baseline, target, tolerance,
                                   bisection_steps, sigma_range)
        sigma, mag_sigma = search(None), search(magnitude_eps)
        m = data.x_train.shape[1]
        gaps = [t - t0.to(t) for t, t0 in zip(tensors, origin)]
        dist2 = _member_dot(gaps, gaps)
        omega = sum(t[0].numel() for t in tensors)
        eps2 = magnitude_eps**2
        spread = eps2 + (mag_sigma.square() + 1) * dist2 / omega
        log_ratio = sum((_member_view(spread, g) / (eps2 + _member_view(mag_sigma, g).square() * g.square()))
                        .log().flatten(1).sum(1) for g in gaps)
    return {
        "pacbayes_sigma": sigma,
        "pacbayes_bound": dist2 / (4 * sigma.square()) + (m / sigma).log() + 10,
        "pacbayes_flatness": 1 / sigma.square(),
        "pacbayes_mag_sigma": mag_sigma,
        "pacbayes_mag_bound": log_ratio / 4 + (m / mag_sigma).log() + 10,
        "pacbayes_mag_flatness": 1 / mag_sigma.square(),
    }


# ---------------------------------------------------------------------------------------
# Sharpness and curvature
# ---------------------------------------------------------------------------------------

def sharpness(params: nets.Params, data: StackedData, net: Net, *, generator: torch.Generator,
              alpha: float = SHARPNESS_ALPHA, eps: float = MAGNITUDE_EPS, steps: int = SHARPNESS_STEPS) -> Tensor:
    """Sharpness in the sense of Keskar et al. 2017 ("On large-batch training for deep
    learning", Section 2.2), over Jiang et al. 2020's magnitude-aware box
    (Appendix C: |u_i| <= alpha (|w_i| + eps)), ``[F]``: the largest rise of the training
    loss found in the box,

        max_{|u_i| <= alpha (|w_i| + eps)} L(w + u) - L(w)  >= 0,

    an absolute rise (Keskar divides by 1 + L(w); Jiang reports the flatness variant
    1 / alpha'^2, the alpha' at which the rise reaches a target, which costs a search).
    The maximum is sought by ``steps`` steps of projected sign-gradient ascent (steepest
    ascent for a box; each step moves every coordinate by 2.5 / steps of its radius, so
    the iterates can cross the box) from a random point of the box (shared uniform draws
    from ``generator``); the largest loss over every iterate and w itself is reported, so
    alpha = 0 gives exactly 0. All members at once: the summed loss gives each member its
    own gradient."""
    tensors = [t.detach() for t in params.tensors()]
    radius = [alpha * (t.abs() + eps) for t in tensors]
    delta = [z[0].unsqueeze(0) * r for z, r in zip(_shared_draws(tensors, 1, generator, uniform=True), radius)]

    def loss_at(shift: list[Tensor]) -> Tensor:
        moved = [t + s for t, s in zip(tensors, shift)]
        return _training_objective(nets.like(params, moved), data, net, error=False)

    with torch.no_grad():
        base = loss_at([torch.zeros_like(t) for t in tensors])
    best = base.clone()
    for _ in range(steps):
        delta = [d.requires_grad_(True) for d in delta]
        loss = loss_at(delta)
        grads = torch.autograd.grad(loss.sum(), delta)
        best = torch.maximum(best, loss.detach())
        with torch.no_grad():
            delta = [torch.minimum(torch.maximum(d + 2.5 / steps * r * g.sign(), -r), r)
                     for d, r, g in zip(delta, radius, grads)]
    with torch.no_grad():
        best = torch.maximum(best, loss_at(delta))
    return best - base


def _normalized(v: list[Tensor]) -> list[Tensor]:
    norm = _member_dot(v, v).sqrt().clamp_min(torch.finfo(v[0].dtype).tiny)
    return [t / _member_view(norm, t) for t in v]


def hessian_top(params: nets.Params, data: StackedData, net: Net, *, generator: torch.Generator,
                iterations: int = HESSIAN_ITERATIONS) -> Tensor:
    """The largest eigenvalue of the Hessian of the training loss (the reported loss: MSE,
    or cross-entropy) with respect to every parameter, ``[F]``: the curvature that
    sharpness approximates (Keskar et al. 2017, Section 2.2). ``iterations`` steps of the
    Lanczos recurrence on Hessian-vector products (autograd twice) from a random start
    (shared normal draws from ``generator``), then the largest eigenvalue of the
    tridiagonal matrix it builds (Golub & Van Loan, "Matrix Computations", Section 10.1):
    the largest eigenvalue itself, not the one of largest magnitude, and far closer after
    k products than k power iterations. The summed loss of the family has a
    block-diagonal Hessian, so one product serves every member; no basis is kept (the
    largest Ritz value converges without reorthogonalization, losing orthogonality only
    repeats it). A member whose Krylov space is exhausted (the recurrence's next vector
    vanishes) keeps the Ritz values it has."""
    tensors = [t.detach().requires_grad_(True) for t in params.tensors()]
    loss = _training_objective(nets.like(params, tensors), data, net, error=False).sum()
    grads = torch.autograd.grad(loss, tensors, create_graph=True)

    def product(v: list[Tensor]) -> list[Tensor]:
        return [h.detach() for h in torch.autograd.grad(grads, tensors, grad_outputs=v, retain_graph=True)]

    q = _normalized([z[0].unsqueeze(0).expand_as(t).clone()
                     for z, t in zip(_shared_draws(tensors, 1, generator), tensors)])
    previous = [torch.zeros_like(t) for t in q]
    beta = loss.new_zeros(tensors[0].shape[0])
    alive = torch.ones_like(beta, dtype=torch.bool)
    alphas, betas = [], []
    for _ in range(iterations):
        w = product(q)
        alpha = _member_dot(w, q)
        w = [x - _member_view(alpha, x) * y - _member_view(beta, x) * z for x, y, z in zip(w, q, previous)]
        # An exhausted member repeats its first Rayleigh quotient (at most its largest
        # Ritz value) on a decoupled diagonal, which leaves that value the largest.
        alphas.append(torch.where(alive, alpha, alphas[0] if alphas else alpha))
        beta = _member_dot(w, w).sqrt()
        alive &= beta > torch.finfo(beta.dtype).eps * alphas[0].abs().clamp_min(torch.finfo(beta.dtype).tiny)
        beta = torch.where(alive, beta, 0.0)
        betas.append(beta)
        safe = beta.clamp_min(torch.finfo(beta.dtype).tiny)
        previous, q = q, [torch.where(_member_view(alive, x), x / _member_view(safe, x), 0.0) for x in w]
    diagonal = torch.stack(alphas, dim=1)
    off = torch.stack(betas[:-1], dim=1) if len(betas) > 1 else diagonal[:, :0]
    finite = torch.isfinite(diagonal).all(1) & torch.isfinite(off).all(1)  # NaN: a diverged member
    diagonal, off = torch.where(finite[:, None], diagonal, 0.0), torch.where(finite[:, None], off, 0.0)
    tridiagonal = torch.diag_embed(diagonal) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    return torch.where(finite, torch.linalg.eigvalsh(tridiagonal)[:, -1], math.nan).detach()

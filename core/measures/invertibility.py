"""Invertibility of one convolutional layer, after Gilbert, Zhang, Lee, Zhang & Lee,
"Towards understanding the invertibility of convolutional neural networks", IJCAI 2017.

The paper's model of a layer: convolution W (stride 1, zero "same" padding), ReLU, then
max-pooling over non-overlapping p x p blocks. Read backwards, the pooled output with its
switches is a *model-k-sparse* code z on the convolution's output grid ``[C_out, H, W]``:
at most one nonzero per pooling block (of each channel), k nonzero blocks in all. The
decoder is the transposed convolution, x ≈ Wᵀ z, and the layer is invertible when Wᵀ is
nearly an isometry on that model (model-RIP):

    (1 - delta_k) ||z||^2 <= ||Wᵀ z||^2 <= (1 + delta_k) ||z||^2   for all model-k-sparse z.

Then iterative hard thresholding in the model, z <- P_k(z + mu W (x - Wᵀ z)), recovers z
from x; the forward layer (conv, ReLU, pool) is its first step when the filters come in
negated pairs (ReLU of [W; -W] x keeps all of W x), as trained CNNs' filters nearly do.

Conventions: a family's weights ``w`` are ``[F, C_out, C_in, k, k]`` (k odd), a layer
input ``x`` is ``[F, n, C_in, H, W]``, codes ``z`` are ``[F, n, C_out, H, W]``, and the
pooling size p divides H and W. Members never mix: every function is one grouped
convolution over the family.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import NamedTuple

import torch
from torch.nn import functional as nnf

from theoryscope.core.cnn import as_groups, per_member

Tensor = torch.Tensor

DRAW_BUDGET = 1 << 24  # elements of one chunk of random codes in model_rip (memory, not results)


# --- the layer and its adjoint ---------------------------------------------------------


def _check_weights(w: Tensor) -> None:
    if w.dim() != 5 or w.shape[-1] != w.shape[-2] or w.shape[-1] % 2 == 0:
        raise ValueError(f"weights must be [F, C_out, C_in, k, k] with k odd, got shape {tuple(w.shape)}")


def _check_pool(size: tuple[int, int], pool: int) -> None:
    if pool < 1 or size[0] % pool or size[1] % pool:
        raise ValueError(f"pooling size must divide the map {size[0]}x{size[1]}, got {pool}")


def conv(w: Tensor, x: Tensor) -> Tensor:
    """W x: ``x [F, n, C_in, H, W]`` -> ``[F, n, C_out, H, W]``, stride 1, zero padding k//2
    (cross-correlation, as ``torch.nn.Conv2d``)."""
    _check_weights(w)
    if x.dim() != 5 or x.shape[0] != w.shape[0] or x.shape[2] != w.shape[2]:
        raise ValueError(f"input must be [F={w.shape[0]}, n, C_in={w.shape[2]}, H, W], got {tuple(x.shape)}")
    f, c_out, c_in, k, _ = w.shape
    out = nnf.conv2d(as_groups(x), w.reshape(f * c_out, c_in, k, k), padding=k // 2, groups=f)
    return per_member(out, f)


def conv_transpose(w: Tensor, z: Tensor) -> Tensor:
    """Wᵀ z, the adjoint of ``conv`` (<W x, z> = <x, Wᵀ z>): ``z [F, n, C_out, H, W]`` ->
    ``[F, n, C_in, H, W]``. The paper's decoder."""
    _check_weights(w)
    if z.dim() != 5 or z.shape[0] != w.shape[0] or z.shape[2] != w.shape[1]:
        raise ValueError(f"code must be [F={w.shape[0]}, n, C_out={w.shape[1]}, H, W], got {tuple(z.shape)}")
    f, c_out, c_in, k, _ = w.shape
    out = nnf.conv_transpose2d(as_groups(z), w.reshape(f * c_out, c_in, k, k), padding=k // 2, groups=f)
    return per_member(out, f)


# --- negated filter pairs ---------------------------------------------------------------


class SignPairs(NamedTuple):
    cosine: Tensor  # [F, C_out]: max_{j != i} cos(w_i, -w_j)
    fraction: Tensor  # [F]: share of filters whose value exceeds the threshold


def sign_pairs(w: Tensor, threshold: float = 0.9) -> SignPairs:
    """The paper's observation that trained filters come in near-negated pairs: for each
    filter w_i (flattened over ``C_in * k * k``) the largest ``cos(w_i, -w_j)``, j != i, and
    per member the fraction of filters above ``threshold``. A zero filter has cosine 0
    with everything. With exact pairs, ReLU([W; -W] x) determines W x."""
    _check_weights(w)
    if w.shape[1] < 2:
        raise ValueError(f"sign pairs need at least 2 filters per layer, got C_out={w.shape[1]}")
    flat = w.flatten(start_dim=2)
    norms = flat.norm(dim=-1, keepdim=True)
    unit = flat / torch.where(norms > 0, norms, 1.0)
    neg_cos = -(unit @ unit.transpose(1, 2))
    eye = torch.eye(w.shape[1], dtype=torch.bool, device=w.device)
    cosine = neg_cos.masked_fill(eye, -math.inf).amax(dim=-1)
    return SignPairs(cosine, (cosine > threshold).to(w.dtype).mean(dim=-1))


# --- ReLU, pooling and the model-sparse code ---------------------------------------------


class PooledLayer(NamedTuple):
    pooled: Tensor  # [F, n, C_out, H/p, W/p]: max over each block of ReLU(W x)
    switches: Tensor  # same shape, int64: argmax position of each block, flat in its H x W plane
    blocks: Tensor  # [F, n], int64: k, the number of nonzero pooling blocks
    density: Tensor  # [F, n]: nonzero fraction of the pooled output, k / (C_out H W / p^2)
    relu_density: Tensor  # [F, n]: nonzero fraction of ReLU(W x) before pooling


def relu_pool(w: Tensor, x: Tensor, pool: int) -> PooledLayer:
    """The forward layer, max-pool(ReLU(W x)), with its switches and sparsity, per sample.
    A member's figure is the mean over its samples (dim -1 of ``blocks``/``density``)."""
    _check_pool(x.shape[-2:], pool)
    f = w.shape[0]
    act = torch.relu(conv(w, x))
    pooled, switches = nnf.max_pool2d(as_groups(act), pool, return_indices=True)
    pooled, switches = per_member(pooled, f), per_member(switches, f)
    blocks = (pooled > 0).flatten(start_dim=2).sum(dim=-1)
    return PooledLayer(pooled, switches, blocks, blocks.to(x.dtype) / pooled[0, 0].numel(),
                       (act > 0).flatten(start_dim=2).to(x.dtype).mean(dim=-1))


def unpool(pooled: Tensor, switches: Tensor, pool: int) -> Tensor:
    """The model-sparse code z: pooled values at their switches, zeros elsewhere,
    ``[F, n, C_out, H, W]``."""
    f = pooled.shape[0]
    h, wd = pooled.shape[-2] * pool, pooled.shape[-1] * pool
    return per_member(nnf.max_unpool2d(as_groups(pooled), as_groups(switches), pool, output_size=(h, wd)), f)


def model_projection(z: Tensor, k: int | Tensor, pool: int) -> Tensor:
    """P_k, the Euclidean projection onto the model: in every p x p block (of every
    channel) keep the entry of largest magnitude, then keep the k blocks whose kept entry
    is largest. ``k`` is one count or one per sample (``[F, n]``)."""
    _check_pool(z.shape[-2:], pool)
    f, n = z.shape[:2]
    flat = as_groups(z)
    mag, idx = nnf.max_pool2d(flat.abs(), pool, return_indices=True)
    vals = flat.flatten(start_dim=2).gather(2, idx.flatten(start_dim=2)).view_as(mag)
    per_sample = per_member(mag, f).reshape(f, n, -1)
    rank = per_sample.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
    limit = torch.as_tensor(k, device=z.device).expand(f, n).unsqueeze(-1)
    keep = (rank < limit).reshape(z.shape[:3] + mag.shape[-2:])
    vals = vals * as_groups(keep.to(vals.dtype))
    return per_member(nnf.max_unpool2d(vals, idx, pool, output_size=z.shape[-2:]), f)


def model_sparse_codes(shape: tuple[int, int, int, int, int], k: int, pool: int,
                       generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                       device: torch.device | str | None = None) -> Tensor:
    """Random model-k-sparse codes ``[F, n, C_out, H, W]``: k distinct blocks (of the
    ``C_out H W / p^2``) chosen uniformly, a uniform position inside each, N(0, 1) values.
    Drawn on the CPU from ``generator``."""
    f, n, c, h, wd = shape
    _check_pool((h, wd), pool)
    hb, wb = h // pool, wd // pool
    if not 0 <= k <= c * hb * wb:
        raise ValueError(f"k must be between 0 and the {c * hb * wb} pooling blocks, got {k}")
    block = torch.rand(f, n, c * hb * wb, generator=generator).argsort(dim=-1)[..., :k]
    where = torch.randint(pool * pool, (f, n, k), generator=generator)
    vals = torch.randn(f, n, k, generator=generator, dtype=torch.float64)
    ch, rest = block // (hb * wb), block % (hb * wb)
    row, col = (rest // wb) * pool + where // pool, (rest % wb) * pool + where % pool
    z = torch.zeros(f, n, c * h * wd, dtype=torch.float64).scatter_(2, ch * h * wd + row * wd + col, vals)
    return z.reshape(shape).to(dtype=dtype, device=device)


# --- model-RIP --------------------------------------------------------------------------


class RipScale(str, Enum):
    """How W is normalised before delta_k is read off r = ||Wᵀ z||^2 / ||z||^2."""

    COLUMNS = "columns"  # every column of Wᵀ (filter at a position, border-truncated) to unit norm
    GLOBAL = "global"  # one scale per member: r divided by its mean over the draws
    NONE = "none"  # W as given (for filters already normalised as the user wants)


class RipEstimate(NamedTuple):
    delta: Tensor  # [F]: max(r_max - 1, 1 - r_min), r after the chosen normalisation
    r_min: Tensor  # [F]
    r_max: Tensor  # [F]
    r_mean: Tensor  # [F]


def column_norms(w: Tensor, size: tuple[int, int]) -> Tensor:
    """||Wᵀ e_(c,i,j)|| for every code position, ``[F, C_out, H, W]``: the norm of filter c
    placed at (i, j), with the taps that fall outside the zero-padded map cut off."""
    _check_weights(w)
    f, c_out, _, k, _ = w.shape
    energy = w.pow(2).sum(dim=2).reshape(f * c_out, 1, k, k)
    ones = w.new_ones(1, 1, *size)
    return nnf.conv2d(ones, energy, padding=k // 2).reshape(f, c_out, *size).sqrt()


def model_rip(w: Tensor, size: tuple[int, int], k: int, pool: int, draws: int = 256,
              generator: torch.Generator | None = None, scale: RipScale = RipScale.COLUMNS) -> RipEstimate:
    """Empirical model-RIP constant delta_k of Wᵀ on an H x W grid, per member.

    Draws ``draws`` random model-k-sparse z (``model_sparse_codes``, independent per
    member), computes r = ||Wᵀ D^-1 z||^2 / ||z||^2 and reports
    delta_k = max(max r - 1, 1 - min r). D normalises W (``scale``):

    * ``COLUMNS`` (default): D = diag of the column norms of Wᵀ, i.e. every atom (a filter
      at one position, truncated at the border) has unit norm, the paper's normalised
      filters taken to the columns. Then E_z ||Wᵀ D^-1 z||^2 = ||z||^2 exactly for this
      random model (the cross terms have mean zero), and delta_k measures only how far
      the atoms on a model support are from orthogonal.
    * ``GLOBAL``: D = sqrt(mean r) * I, one scale per member, so W stays a convolution;
      border truncation then counts against the isometry.
    * ``NONE``: D = I.

    A maximum over draws is a lower estimate of the supremum over the model; more draws
    can only raise it. An operator isometric on the model gives 0 under every scale.
    The r statistics returned are those after the normalisation."""
    _check_weights(w)
    _check_pool(size, pool)
    f, c_out, c_in = w.shape[:3]
    if scale is RipScale.COLUMNS:
        norms = column_norms(w, size)
        inv = torch.where(norms > 0, 1.0 / norms, 1.0).unsqueeze(1)
    else:
        inv = 1.0
    chunk = max(1, DRAW_BUDGET // (f * max(c_out, c_in) * size[0] * size[1]))
    ratios = []
    for start in range(0, draws, chunk):
        z = model_sparse_codes((f, min(chunk, draws - start), c_out, *size), k, pool, generator, w.dtype, w.device)
        num = conv_transpose(w, z * inv).flatten(start_dim=2).pow(2).sum(dim=-1)
        ratios.append(num / z.flatten(start_dim=2).pow(2).sum(dim=-1))
    r = torch.cat(ratios, dim=1)
    if scale is RipScale.GLOBAL:
        r = r / r.mean(dim=1, keepdim=True)
    r_min, r_max = r.amin(dim=1), r.amax(dim=1)
    return RipEstimate(torch.maximum(r_max - 1, 1 - r_min), r_min, r_max, r.mean(dim=1))


def gaussian_filters_like(w: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Random filters of ``w``'s shape, iid N(0, 1 / (C_in k^2)) so that every filter has
    expected squared norm 1: the paper's random-weight CNN."""
    _check_weights(w)
    fan = w.shape[2] * w.shape[3] * w.shape[4]
    g = torch.randn(*w.shape, generator=generator, dtype=torch.float64) / math.sqrt(fan)
    return g.to(dtype=w.dtype, device=w.device)


def gaussian_model_rip(w: Tensor, size: tuple[int, int], k: int, pool: int, draws: int = 256,
                       generator: torch.Generator | None = None,
                       scale: RipScale = RipScale.COLUMNS) -> RipEstimate:
    """``model_rip`` of Gaussian filters of ``w``'s shape (the paper's comparison): a
    fresh bank per member, then the same estimator."""
    return model_rip(gaussian_filters_like(w, generator), size, k, pool, draws, generator, scale)


# --- reconstruction ---------------------------------------------------------------------


def operator_norm_sq(w: Tensor, size: tuple[int, int], iterations: int = 100,
                     generator: torch.Generator | None = None) -> Tensor:
    """||W||_2^2 on an H x W grid per member, ``[F]``, by power iteration on W Wᵀ (a
    Rayleigh quotient: from below, converging to it)."""
    f, c_out = w.shape[:2]
    if generator is None:
        generator = torch.Generator().manual_seed(0)  # a local stream: the estimate, not the start, matters
    v = torch.randn(f, 1, c_out, *size, generator=generator, dtype=torch.float64).to(w)
    est = w.new_zeros(f)
    for _ in range(iterations):
        v = v / v.flatten(start_dim=1).norm(dim=-1).clamp_min(torch.finfo(w.dtype).tiny).view(f, 1, 1, 1, 1)
        u = conv(w, conv_transpose(w, v))
        est = (u * v).flatten(start_dim=1).sum(dim=-1)
        v = u
    return est


class IhtResult(NamedTuple):
    z: Tensor  # [F, n, C_out, H, W]: the model-sparse code found
    iterations: int  # steps taken (the same for the whole family)


def _sq(t: Tensor) -> Tensor:
    """Squared norm per sample, ``[F, n]``."""
    return t.flatten(start_dim=2).pow(2).sum(dim=-1)


def _per_sample(t: Tensor) -> Tensor:
    return t[..., None, None, None]


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)


def _normalised_step(w: Tensor, z: Tensor, g: Tensor, k: int | Tensor, pool: int) -> Tensor:
    """NIHT's mu = ||g_S||^2 / ||Wᵀ g_S||^2 per sample, S the support of z (of P_k(g) where
    z = 0 or g vanishes on z's support)."""
    def on(support: Tensor) -> Tensor:
        gs = g * support
        return _ratio(_sq(gs), _sq(conv_transpose(w, gs)))
    mu = on(z != 0)
    fresh = on(model_projection(g, k, pool) != 0)
    return torch.where(mu > 0, mu, fresh)


def _niht_step(w: Tensor, x: Tensor, z: Tensor, k: int | Tensor, pool: int, shrink: float = 2.0,
               c: float = 0.01, tries: int = 40) -> Tensor:
    """One step of normalised IHT (Blumensath & Davies 2010) with its backtracking: where
    the support changes, mu is divided by ``shrink`` until
    mu <= (1 - c) ||z_new - z||^2 / ||Wᵀ (z_new - z)||^2, which makes ||x - Wᵀ z|| decrease."""
    g = conv(w, x - conv_transpose(w, z))
    mu = _normalised_step(w, z, g, k, pool)
    support = z != 0
    for _ in range(tries):
        new = model_projection(z + _per_sample(mu) * g, k, pool)
        moved = (support != (new != 0)).flatten(start_dim=2).any(dim=-1) & support.flatten(start_dim=2).any(dim=-1)
        omega = (1 - c) * _ratio(_sq(new - z), _sq(conv_transpose(w, new - z)))
        bad = moved & (mu > omega)
        if not bool(bad.any()):
            break
        mu = torch.where(bad, mu / shrink, mu)
    return new


def iht(w: Tensor, x: Tensor, k: int | Tensor, pool: int, z0: Tensor | None = None, step: float | Tensor | None = None,
        steps: int = 500, tol: float = 1e-12, check_every: int = 10) -> IhtResult:
    """Model-based iterative hard thresholding for x ≈ Wᵀ z, z model-k-sparse (the
    paper's decoder view), ``x [F, n, C_in, H, W]``, k one count or ``[F, n]``:

        z <- P_k(z + mu W (x - Wᵀ z)).

    ``z0`` defaults to 0 (then the first step is P_k(mu W x), the forward layer's code up
    to the ReLU). ``step=None`` (the default) is normalised IHT (Blumensath & Davies 2010):
    per sample and step mu = ||g_S||^2 / ||Wᵀ g_S||^2 (g = W (x - Wᵀ z), S the support of
    z), halved while a support change would not decrease ||x - Wᵀ z||, so the residual
    never increases and no scale of W has to be known. A number (or ``[F]``) is a fixed mu,
    the paper's plain IHT (mu = 1 for RIP-normalised filters; 1 / ``operator_norm_sq``
    makes the residual non-increasing too). Stops after ``steps``, or once every sample's
    relative change ||z_new - z|| / ||z_new|| is at most ``tol`` (checked every
    ``check_every`` steps)."""
    f, n = x.shape[:2]
    z = x.new_zeros(f, n, w.shape[1], *x.shape[-2:]) if z0 is None else z0
    if step is not None:
        mu = torch.as_tensor(step, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1, 1).expand(f, 1, 1, 1, 1)
    for t in range(1, steps + 1):
        if step is None:
            new = _niht_step(w, x, z, k, pool)
        else:
            new = model_projection(z + mu * conv(w, x - conv_transpose(w, z)), k, pool)
        if t % check_every == 0 and bool((_sq(new - z) <= tol**2 * _sq(new)).all()):
            return IhtResult(new, t)
        z = new
    return IhtResult(z, steps)


def relative_error(x_hat: Tensor, x: Tensor, fit_scale: bool = False) -> Tensor:
    """||s x_hat - x|| / ||x|| per sample, ``[F, n]``; s = 1, or with ``fit_scale`` the
    least-squares s = <x, x_hat> / ||x_hat||^2 (0 for x_hat = 0), which makes the error
    the sine of the angle between them. NaN where x = 0."""
    a, b = x_hat.flatten(start_dim=2), x.flatten(start_dim=2)
    if fit_scale:
        den = a.pow(2).sum(dim=-1, keepdim=True)
        a = a * torch.where(den > 0, (a * b).sum(dim=-1, keepdim=True) / torch.where(den > 0, den, 1.0), 0.0)
    norm = b.norm(dim=-1)
    return torch.where(norm > 0, (a - b).norm(dim=-1) / torch.where(norm > 0, norm, 1.0), math.nan)


class Reconstruction(NamedTuple):
    transposed: Tensor  # [F, n]: error of s Wᵀ unpool(pooled), s fitted by least squares
    iht: Tensor  # [F, n]: error of Wᵀ z_IHT (no scale fitted: IHT fits the amplitudes)
    blocks: Tensor  # [F, n]: k of each sample (nonzero pooling blocks of the forward pass)
    iterations: int


def reconstruct(w: Tensor, x: Tensor, pool: int, steps: int = 500, tol: float = 1e-12,
                step: float | Tensor | None = None) -> Reconstruction:
    """Recover a layer's input from its pooled output and switches, two ways, with the
    relative error ||x_hat - x|| / ||x|| per sample (a member's figure: the mean over
    samples):

    (a) x_hat = s Wᵀ z, z = unpool(max-pool(ReLU(W x))), s fitted by least squares per
        sample (the ReLU and the pooling keep the code's support, not the input's scale);
    (b) x_hat = Wᵀ z_IHT, ``iht`` (normalised steps unless ``step`` is given) started
        from that z with each sample's own k; IHT fits the amplitudes, so no scale.

    (b) uses x itself, as IHT must: it measures how well x is a model-k-sparse code of
    the filters, the paper's sense of invertibility, and (b) <= the unscaled error of (a)."""
    layer = relu_pool(w, x, pool)
    z0 = unpool(layer.pooled, layer.switches, pool)
    transposed = relative_error(conv_transpose(w, z0), x, fit_scale=True)
    found = iht(w, x, layer.blocks, pool, z0=z0, step=step, steps=steps, tol=tol)
    return Reconstruction(transposed, relative_error(conv_transpose(w, found.z), x), layer.blocks, found.iterations)


def iht_bound(delta_k: Tensor | float, delta_2k: Tensor | float) -> tuple[Tensor, Tensor]:
    """The paper's per-step factor of model-IHT,

        c = 5 delta_2k / (1 - delta_k) * sqrt((1 + delta_2k) / (1 - delta_2k)),

    and whether its premise holds (0 <= delta_k, delta_2k < 1 and c < 1: the error
    contracts). c is +inf where a delta is 1 or more."""
    dk = torch.as_tensor(delta_k, dtype=torch.float64)
    d2 = torch.as_tensor(delta_2k, dtype=torch.float64)
    valid = (dk < 1) & (d2 < 1)
    safe_k, safe_2 = torch.where(valid, dk, 0.0), torch.where(valid, d2, 0.0)
    c = 5 * safe_2 / (1 - safe_k) * torch.sqrt((1 + safe_2) / (1 - safe_2))
    c = torch.where(valid, c, math.inf)
    return c, valid & (dk >= 0) & (d2 >= 0) & (c < 1)

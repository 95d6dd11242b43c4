"""Matrix-Project-Conv, the compression of a convolutional layer in Arora, Ge, Neyshabur &
Zhang (ICML 2018), Algorithm 4 (Appendix C of arXiv:1802.05296v4).

A kernel A in R^N (N = C_out C_in k^2, ``[C_out, C_in, k, k]`` read as one vector) is not
compressed once and shared by every position, whose errors would then be correlated, but
into a different filter Â(a, b) at every output position (a, b), p-wise independent:

    draw a uniformly random subspace S of R^N of dimension d = k p;
    at each position: k Gaussian tensors M_l, M'_l = sqrt(N / d) Proj_S(M_l),
    Â(a, b) = (1/k) sum_l <A, M'_l> M'_l,

so that every Â(a, b) is computed from Proj_S(A), d numbers (and the helper string).

Sampling here is exact in distribution and cheaper than the loop as written: with Q an
orthonormal basis of S and a = Qᵀ A, Proj_S(M_l) = Q c_l with c_l ~ N(0, I_d), and
Â(a, b) = (N / (d k)) Q W a with W = sum_l c_l c_lᵀ. Splitting each c_l along a / ||a||
and orthogonally to it gives, exactly, W a = ||a|| (X â + sqrt(X) ξ) with X ~ chi²_k and
ξ ~ N(0, I - â âᵀ) independent: one chi-square and one Gaussian vector of R^d per
position instead of k Gaussian tensors of R^N (``tests/test_conv_compression.py`` checks
the two samplers against each other).

The expected error has a closed form (``mean_square_error``). For one output coordinate,
the bilinear form <Â - A, U> with U = e_o (x) patch_p(z): given S, the Wishart moments
give E<Â, U>^2 = (N/d)^2 [((a_S·a_S)(u_S·u_S) + (a_S·u_S)^2) / k + (a_S·u_S)^2], and over
the random rank-d projection P = Q Qᵀ, E[P_ij P_kl] = α δ_ij δ_kl + β (δ_ik δ_jl + δ_il δ_jk)
with β = d (N - d) / (N (N - 1) (N + 2)) and α = d / N - (N + 1) β (from P^2 = P and
tr P = d). At d = N (S everything) it is the Gaussian helpers' (||A||^2 ||U||^2 + <A, U>^2) / k.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as nnf

from theoryscope.core.measures.invertibility import conv
from theoryscope.core.seeding import generator as named_generator

Tensor = torch.Tensor
CHUNK = 64  # random numbers are drawn this many basis vectors / helpers / coordinates at a time


def subspace_moments(entries: int, dim: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha, beta) of E[P_ij P_kl] for a uniformly random rank-``dim`` projection of R^entries."""
    n = float(entries)
    d = dim.to(torch.float64)
    beta = d * (n - d) / (n * (n - 1) * (n + 2)) if entries > 1 else torch.zeros_like(d)
    return d / n - (n + 1) * beta, beta


def patch_energy(z: Tensor, kernel: int) -> Tensor:
    """sum_p ||patch_p(z)||^2 per map, ``z [F, s, C, H, W]`` -> ``[F, s]``: each pixel
    counted once per k x k patch (zero "same" padding) it falls in."""
    ones = torch.ones(1, 1, kernel, kernel, dtype=z.dtype, device=z.device)
    counted = nnf.conv2d(z.square().sum(dim=2).flatten(end_dim=1).unsqueeze(1), ones, padding=kernel // 2)
    return counted.flatten(start_dim=1).sum(dim=-1).view(z.shape[:2])


def mean_square_error(a: Tensor, z: Tensor, k: Tensor, p: int) -> Tensor:
    """E||(Â - A) * z||^2 per map, over the subspace and the helpers: kernels ``a [F, C_out,
    C_in, k, k]``, maps ``z [F, s, C_in, H, W]``, ``k`` helpers per member ``[F]`` (d = min(k p,
    N)) -> ``[F, s]``. The sum over output channels o and positions p of Var <Â(p), e_o (x)
    patch_p(z)> (module docstring): with Y = ||A * z||^2 and E = C_out ||A||_F^2 sum_p
    ||patch_p||^2 (the sums of <A, U>^2 and ||A||^2 ||U||^2 over the coordinates),

        (N/d)^2 [((alpha + beta) E + (alpha + 3 beta) Y) / k + (alpha + beta) Y + beta E] - Y.
    """
    f, c_out, kernel = a.shape[0], a.shape[1], a.shape[-1]
    entries = a[0].numel()
    counts = torch.as_tensor(k, device=a.device).reshape(-1).expand(f).to(torch.float64)
    dim = torch.minimum(counts * p, torch.tensor(float(entries), dtype=torch.float64, device=a.device))
    alpha, beta = subspace_moments(entries, dim)
    scale = (entries / dim) ** 2
    y = conv(a, z).square().flatten(start_dim=2).sum(dim=-1).double()
    e = (c_out * a.square().flatten(start_dim=1).sum(dim=-1).unsqueeze(-1) * patch_energy(z, kernel)).double()
    col = lambda t: t.unsqueeze(-1)  # noqa: E731  [F] -> [F, 1]
    moment = col(scale) * ((col(alpha + beta) * e + col(alpha + 3 * beta) * y) / col(counts)
                           + col(alpha + beta) * y + col(beta) * e)
    return (moment - y).to(z.dtype)


def relative_error2(a: Tensor, z: Tensor, k: Tensor, p: int) -> Tensor:
    """The mean over the maps z (those with A * z != 0; zero maps are reproduced exactly
    and left out) of E||(Â - A) * z||^2 / ||A * z||^2, ``[F]``; infinite where A * z = 0
    for a nonzero map."""
    y = conv(a, z).square().flatten(start_dim=2).sum(dim=-1)
    ratio = torch.where(y > 0, mean_square_error(a, z, k, p) / y, math.inf)
    return ratio.masked_fill(z.square().flatten(start_dim=2).sum(dim=-1) == 0, math.nan).nanmean(dim=-1)


def helpers_for_error(a: Tensor, z: Tensor, eps: float, p: int) -> Tensor:
    """The least k whose expected mean-square relative error (``relative_error2``) is at most
    eps^2, per member ``[F]`` (float; infinite where no k reaches it). The error falls with
    k, and from k p >= N on it is the Gaussian helpers' g / k, so bisection over
    [1, max(ceil(N / p), ceil(g / eps^2))] finds it."""
    f, entries = a.shape[0], a[0].numel()
    whole = math.ceil(entries / p)  # from here on d = N, and the error is g / k
    g = relative_error2(a, z, torch.full((f,), whole, device=a.device), p).double() * whole
    top = torch.ceil(g / eps**2 - 1e-9).clamp_min(whole)
    finite = torch.isfinite(top)
    low, high = torch.zeros_like(top), torch.where(finite, top, 1.0)  # error(low) > eps^2 >= error(high)
    while bool((high - low > 1).any()):
        middle = torch.floor((low + high) / 2)
        meets = relative_error2(a, z, middle.clamp_min(1), p).double() <= eps**2
        high, low = torch.where(meets, middle, high), torch.where(meets, low, middle)
    return torch.where(finite, high, math.inf)


def matrix_project_conv(a: Tensor, k: Tensor | int, p: int, positions: int, seed: int, *name) -> Tensor:
    """Algorithm 4 on a family of kernels ``a [F, C_out, C_in, k, k]``: a filter for each of
    ``positions`` output positions, ``[F, positions, C_out, C_in, k, k]``. ``k`` helpers per
    member (``[F]``; 0 keeps A at every position), subspaces of dimension d = k p < N. The
    random numbers come from the named generators (``seed``, ``*name``, "basis" | "chi2" |
    "directions"), drawn in whole chunks of ``CHUNK``: member f uses the first d_f basis
    vectors and the first k_f helpers' chi-squares of one shared sequence, so a member gets
    what it would get alone."""
    f, entries = a.shape[0], a[0].numel()
    counts = torch.as_tensor(k, dtype=torch.int64).reshape(-1).expand(f).cpu()
    dims = counts * p
    if int(dims.max()) >= entries:
        raise ValueError(f"the subspace must be smaller than the kernel's {entries} entries, got k p = "
                         f"{int(dims.max())}")
    kept = a.unsqueeze(1).expand(f, positions, *a.shape[1:])
    if int(counts.max()) == 0:
        return kept.clone()
    basis = _chunks(lambda g: torch.randn(CHUNK, entries, generator=g, dtype=torch.float64), int(dims.max()),
                    named_generator(seed, *name, "basis"))  # [rows, N]
    q = torch.linalg.qr(basis.T).Q  # column j spans the first j + 1 draws: member f's S is q[:, :d_f]
    squares = _chunks(lambda g: torch.randn(positions, CHUNK, generator=g, dtype=torch.float64).square().T,
                      int(counts.max()), named_generator(seed, *name, "chi2")).T  # [positions, helpers]
    chi2 = torch.cumsum(squares, dim=1)[:, (counts - 1).clamp_min(0)].T  # [F, positions]: chi^2 of k_f
    xi = _chunks(lambda g: torch.randn(positions, CHUNK, generator=g, dtype=torch.float64).T, int(dims.max()),
                 named_generator(seed, *name, "directions")).T  # [positions, rows]
    rows = q.shape[1]  # the basis vectors drawn (at most N)
    xi = xi[:, :rows]
    inside = (torch.arange(rows) < dims.unsqueeze(-1)).to(torch.float64)  # [F, rows]
    coords = (a.reshape(f, entries).double().cpu() @ q[:, :rows]) * inside  # a_S = Qᵀ A, [F, rows]
    size = coords.norm(dim=-1, keepdim=True)
    unit = coords / torch.where(size > 0, size, 1.0)
    noise = xi.unsqueeze(0) * inside.unsqueeze(1)  # [F, positions, rows]
    noise = noise - (noise * unit.unsqueeze(1)).sum(dim=-1, keepdim=True) * unit.unsqueeze(1)
    wishart = size.unsqueeze(1) * (chi2.unsqueeze(-1) * unit.unsqueeze(1) + chi2.sqrt().unsqueeze(-1) * noise)
    scale = (entries / (dims * counts.clamp_min(1)).clamp_min(1)).to(torch.float64)
    hats = scale[:, None, None] * (wishart @ q[:, :rows].T)  # [F, positions, N]
    hats = hats.view(f, positions, *a.shape[1:]).to(device=a.device, dtype=a.dtype)
    return torch.where((counts == 0).to(a.device)[:, None, None, None, None, None], kept, hats)


def _chunks(draw, count: int, generator: torch.Generator) -> Tensor:
    """Rows drawn ``CHUNK`` at a time, always whole chunks, until there are ``count``."""
    return torch.cat([draw(generator) for _ in range(math.ceil(count / CHUNK))])


def conv_per_position(kernels: Tensor, z: Tensor) -> Tensor:
    """The convolution with a different filter at each output position: ``kernels [F,
    H W, C_out, C_in, k, k]`` on maps ``z [F, s, C_in, H, W]`` (stride 1, zero "same"
    padding) -> ``[F, s, C_out, H, W]``, output (o, p) = <kernels[p, o], patch_p(z)>."""
    f, positions, c_out, c_in, kernel, _ = kernels.shape
    s, height, wide = z.shape[1], z.shape[-2], z.shape[-1]
    patches = nnf.unfold(z.flatten(end_dim=1), kernel, padding=kernel // 2).view(f, s, c_in * kernel**2, positions)
    out = torch.einsum("fpoe,fsep->fsop", kernels.reshape(f, positions, c_out, -1), patches)
    return out.reshape(f, s, c_out, height, wide)


class ConvLayer:
    """A convolution (kernels ``[F, C_out, C_in, k, k]`` on maps ``[F, s, C_in, H, W]``,
    ``positions`` = H W outputs per channel) compressed by Matrix-Project-Conv with
    p-wise independent filters: k helpers store k p numbers."""

    rank = 4
    input_rank = 3

    def __init__(self, p: int, positions: int) -> None:
        self.p, self.positions = p, positions

    def apply(self, a: Tensor, z: Tensor) -> Tensor:
        return conv(a, z)

    def entries(self, a: Tensor) -> int:
        return math.prod(a.shape[-4:])

    def max_helpers(self, a: Tensor) -> int:
        return (self.entries(a) - 1) // self.p

    def stored(self, k: Tensor) -> Tensor:
        return k * self.p

    def relative_error2(self, a: Tensor, z: Tensor, k: Tensor | int) -> Tensor:
        return relative_error2(a, z, k, self.p)

    def helpers_for_error(self, a: Tensor, z: Tensor, eps: float) -> Tensor:
        return helpers_for_error(a, z, eps, self.p)

    def project(self, a: Tensor, k: Tensor | int, seed: int, layer: int) -> Tensor:
        return matrix_project_conv(a, k, self.p, self.positions, seed, "matrix-project-conv", layer)

    def apply_projected(self, projected: Tensor, z: Tensor) -> Tensor:
        return conv_per_position(projected, z)

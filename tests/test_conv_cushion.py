"""CNN cushions (Arora et al. 2018, Section 5) against plain per-member convolutions,
autograd Jacobians, closed forms and slow reference loops, in float64."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian
from torch.nn import functional as nnf

from theoryscope.core import cnn
from theoryscope.core.config import Init
from theoryscope.core.measures import conv_cushion
from theoryscope.core.measures.conv_cushion import (
    activation_contraction, forward_pass, interlayer_cushions, interlayer_smoothness, jacobian_spread, jacobian_sums,
    layer_cushion, noise_attenuation, weight_norms,
)
from theoryscope.core.measures.conv_spectral import conv_spectral_norm

D = torch.float64
POOL = 2


def family(bias: bool, members: int = 3, depth: int = 2, width: int = 3, n: int = 4, seed: int = 0):
    """``members`` CNNs on 2-channel images, 8 x 8 (16 x 16 from depth 3 on)."""
    side = 8 if depth < 3 else 16
    arch = cnn.ConvArch((2, side, side), depth, width, 3, POOL, 5, bias=bias)
    params = cnn.init_family(arch, list(range(members)), [1.0] * members, [Init.DEFAULT] * members, D,
                             torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    if bias:  # nonzero biases, so that the maps are affine, not linear
        params.conv_biases = [0.1 * torch.randn(b.shape, generator=g, dtype=D) for b in params.conv_biases]
        params.head_bias = 0.1 * torch.randn(params.head_bias.shape, generator=g, dtype=D)
    images = torch.randn(members, n, 2, side, side, generator=g, dtype=D)
    return params, images


def member(params: cnn.ConvParams, f: int) -> cnn.ConvParams:
    return cnn.ConvParams([w[f:f + 1] for w in params.convs], params.head[f:f + 1],
                          None if params.conv_biases is None else [b[f:f + 1] for b in params.conv_biases],
                          None if params.head_bias is None else params.head_bias[f:f + 1])


# --- a plain reference: one member, one sample, torch.nn.functional only ---------------


def phi(v: torch.Tensor) -> torch.Tensor:
    return nnf.max_pool2d(torch.relu(v).unsqueeze(0), POOL)[0]


def layer_map(params: cnn.ConvParams, f: int, k: int):
    """A^k (+ b^k) of member f on one layer input (a map, or the head's pooled map)."""
    def apply(v, bias=True):
        if k <= len(params.convs):
            b = params.conv_biases[k - 1][f] if bias and params.conv_biases is not None else None
            return nnf.conv2d(v.unsqueeze(0), params.convs[k - 1][f], b, padding=1)[0]
        out = params.head[f] @ v.flatten()
        return out + params.head_bias[f] if bias and params.head_bias is not None else out
    return apply


def reference_xs(params, f, image):
    """[x^0, ..., x^L] of member f on one image."""
    xs = [image]
    for k in range(1, len(params.convs) + 2):
        xs.append(layer_map(params, f, k)(xs[-1] if k == 1 else phi(xs[-1])))
    return xs


def segment(params, f, i, j):
    """M^{i,j}: x^i -> x^j of member f."""
    def run(v):
        for k in range(i + 1, j + 1):
            v = layer_map(params, f, k)(phi(v))
        return v
    return run


@pytest.mark.parametrize("bias", [False, True])
def test_layer_cushion_and_contraction_match_a_plain_conv_loop(bias):
    params, images = family(bias)
    passed = forward_pass(params, images, POOL)
    mu = layer_cushion(params, passed)
    contraction = activation_contraction(passed)
    fro = [w.flatten(start_dim=1).norm(dim=-1) for w in (*params.convs, params.head)]
    for f in range(images.shape[0]):
        worst = [0.0] * len(params.convs)
        for s in range(images.shape[1]):
            xs = reference_xs(params, f, images[f, s])
            torch.testing.assert_close(passed.xs[-1][f, s], xs[-1], rtol=1e-12, atol=1e-12)
            for i in range(1, len(xs)):
                a = xs[0] if i == 1 else phi(xs[i - 1])
                expected = layer_map(params, f, i)(a, bias=False).norm() / (fro[i - 1][f] * a.norm())
                assert mu[f, i - 1, s].item() == pytest.approx(expected.item(), rel=1e-12)
            for i in range(1, len(params.convs) + 1):
                worst[i - 1] = max(worst[i - 1], (xs[i].norm() / phi(xs[i]).norm()).item())
        assert contraction[f].tolist() == pytest.approx(worst, rel=1e-12)


@pytest.mark.parametrize("bias, depth", [(False, 2), (True, 2), (True, 3)])
def test_interlayer_cushions_and_the_jacobian_spread_match_autograd_jacobians(bias, depth):
    """mu_{i->} = min(1/sqrt(C_i), min_j sqrt(H_i W_i) ||J x^i|| / (||J||_F ||x^i||))
    (Definition 8) and beta of
    Definition 9 = max(1, max_j sqrt(H W max_p ||J[:, :, p]||_F^2 / ||J||_F^2)), with
    J = J^{i,j} the autograd Jacobian of the true map at x^i (next layers in closed form,
    the others by rows; depth 3 has a pair of conv layers two apart)."""
    params, images = family(bias, depth=depth)
    passed = forward_pass(params, images, POOL)
    mu_to, beta = interlayer_cushions(params, passed), jacobian_spread(params, passed)
    layers = len(params.convs) + 1
    for f in range(images.shape[0]):
        for s in range(images.shape[1]):
            xs = reference_xs(params, f, images[f, s])
            for i in range(1, layers):
                channels, height, wide = xs[i].shape
                best, spread = 1 / math.sqrt(channels), 1.0
                for j in range(i + 1, layers + 1):
                    jac = jacobian(segment(params, f, i, j), xs[i])  # [*x^j, C, H, W]
                    flat = jac.reshape(-1, xs[i].numel())
                    best = min(best, (math.sqrt(height * wide) * (flat @ xs[i].flatten()).norm()
                                      / (flat.norm() * xs[i].norm())).item())
                    per_position = jac.reshape(-1, *xs[i].shape).square().sum(dim=(0, 1))
                    spread = max(spread, math.sqrt(per_position.numel() * per_position.max().item()
                                                   / flat.square().sum().item()))
                assert mu_to[f, i - 1, s].item() == pytest.approx(best, rel=1e-10)
                assert beta[f, i - 1, s].item() == pytest.approx(spread, rel=1e-10)
            # the head: mu_{L->} = 1/sqrt(outputs) and beta = 1 (J^{L,L} = I, one position)
            assert mu_to[f, -1, s].item() == pytest.approx(1 / math.sqrt(5), rel=1e-12)
            assert beta[f, -1, s].item() == 1.0


def test_chunking_the_jacobian_changes_nothing_but_rounding(monkeypatch):
    params, images = family(True, depth=3)
    passed = forward_pass(params, images, POOL)
    whole = jacobian_sums(params, passed)
    monkeypatch.setattr(conv_cushion, "JACOBIAN_BUDGET", 500)  # one sample and a few rows at a time
    chunked = jacobian_sums(params, passed)
    for name in ("frobenius2", "image2", "position2"):
        for key, value in getattr(whole, name).items():
            torch.testing.assert_close(getattr(chunked, name)[key], value, rtol=1e-12, atol=0)


def one_channel_net(head: torch.Tensor) -> cnn.ConvParams:
    """One block: a 1 x 1 kernel of 1 (the identity conv), no pooling, a head ``head``."""
    return cnn.ConvParams([torch.ones(1, 1, 1, 1, 1, dtype=D)], head.unsqueeze(0), None, None)


def test_the_spread_of_a_head_that_reads_one_position_is_sqrt_hw_and_of_a_uniform_one_1():
    """Closed forms: on a positive image (every ReLU on) J^{1,2} is the head. A head
    reading all 16 positions of a 4x4 map alike spreads evenly, beta = 1; one reading a
    single position has all of ||J||_F there, beta = sqrt(16) = 4. The identity conv has
    layer cushion 1."""
    image = torch.rand(1, 3, 1, 4, 4, dtype=D) + 0.5
    one_position = torch.zeros(2, 16, dtype=D)
    one_position[:, 5] = torch.tensor([1.0, -2.0], dtype=D)
    for head, beta in ((torch.ones(2, 16, dtype=D), 1.0), (one_position, 4.0)):
        params = one_channel_net(head)
        passed = forward_pass(params, image, 1)
        spread = jacobian_spread(params, passed)
        torch.testing.assert_close(spread[0, 0], torch.full((3,), beta, dtype=D), rtol=1e-12, atol=0)
        torch.testing.assert_close(layer_cushion(params, passed)[0, 0], torch.ones(3, dtype=D), rtol=1e-12, atol=0)


def recorded_noise(monkeypatch) -> list[torch.Tensor]:
    drawn = []
    original = conv_cushion.unit_noise

    def record(*args, **kwargs):
        drawn.append(original(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(conv_cushion, "unit_noise", record)
    return drawn


@pytest.mark.parametrize("bias", [False, True])
def test_smoothness_ratios_match_a_slow_loop(monkeypatch, bias):
    """Definition 4.4 per sample and draw: min_j ||eta|| ||x^j|| / (||x^i|| ||M(x^i + eta)
    - J(x^i + eta)||) with the autograd Jacobian J = J^{i,j} at x^i and the same noise."""
    params, images = family(bias, n=3)
    passed = forward_pass(params, images, POOL)
    drawn = recorded_noise(monkeypatch)
    ratios = interlayer_smoothness(params, passed, noise_scale=0.3, draws=4, generator=torch.Generator().manual_seed(1))
    assert ratios.shape == (3, 2, 3, 4) and len(drawn) == 2  # one block of samples per hidden layer
    assert (ratios < 1e9).double().mean() > 0.5  # most perturbations flip some ReLU or switch
    for f in range(3):
        for s in range(3):
            xs = reference_xs(params, f, images[f, s])
            for i in (1, 2):
                for d in range(4):
                    eta = drawn[i - 1][s, d].view(xs[i].shape) * 0.3 * xs[i].norm()
                    worst = math.inf
                    for j in range(i + 1, 4):
                        jac = jacobian(segment(params, f, i, j), xs[i]).reshape(-1, xs[i].numel())
                        gap = (segment(params, f, i, j)(xs[i] + eta).flatten() - jac @ (xs[i] + eta).flatten()).norm()
                        worst = min(worst, (eta.norm() * xs[j].norm() / (xs[i].norm() * gap)).item())
                    got = ratios[f, i - 1, s, d].item()
                    if worst > 1e9:  # linear along eta: no ReLU or switch changed, the gap is rounding (or 0)
                        assert got > 1e9
                    else:
                        assert got == pytest.approx(worst, rel=1e-9)


def test_attenuation_matches_a_slow_loop(monkeypatch):
    params, images = family(True, n=5)
    passed = forward_pass(params, images, POOL)
    drawn = recorded_noise(monkeypatch)
    out = noise_attenuation(params, passed, torch.Generator().manual_seed(2), noise_scale=0.2)
    assert out.shape == (3, 2, 3) and out[:, 1, :2].isnan().all() and out[:, 0, 0].isnan().all()
    for f in range(3):
        for i in (1, 2):
            for j in range(i + 1, 4):
                rel = []
                for s in range(5):
                    xs = reference_xs(params, f, images[f, s])
                    eta = drawn[i - 1][s].view(xs[i].shape) * 0.2 * xs[i].norm()
                    rel.append(((segment(params, f, i, j)(xs[i] + eta) - xs[j]).norm() / xs[j].norm()).item())
                assert out[f, i - 1, j - 1].item() == pytest.approx(sorted(rel)[2], rel=1e-10)


def test_a_family_measures_what_its_members_measure_alone():
    params, images = family(True, members=3, n=6)
    passed = forward_pass(params, images, POOL)
    together = {"mu": layer_cushion(params, passed), "mu_to": interlayer_cushions(params, passed),
                "beta": jacobian_spread(params, passed), "c": activation_contraction(passed),
                "rho": interlayer_smoothness(params, passed, 0.1, 8, torch.Generator().manual_seed(3)),
                "attenuation": noise_attenuation(params, passed, torch.Generator().manual_seed(4))}
    for f in range(3):
        alone_params = member(params, f)
        alone = forward_pass(alone_params, images[f:f + 1], POOL)
        each = {"mu": layer_cushion(alone_params, alone), "mu_to": interlayer_cushions(alone_params, alone),
                "beta": jacobian_spread(alone_params, alone), "c": activation_contraction(alone),
                "rho": interlayer_smoothness(alone_params, alone, 0.1, 8, torch.Generator().manual_seed(3)),
                "attenuation": noise_attenuation(alone_params, alone, torch.Generator().manual_seed(4))}
        for name, value in each.items():
            torch.testing.assert_close(together[name][f:f + 1], value, rtol=1e-10, atol=1e-12, equal_nan=True)


def test_weight_norms_are_the_kernel_norm_the_fft_norm_and_the_operator_stable_rank():
    """The circular conv's matrix on H x W maps holds every kernel entry H W times, so its
    ||A||_F^2 is H W ||kernel||^2; checked against the explicit matrix of the circular
    conv (built column by column)."""
    params, images = family(False, members=2)
    passed = forward_pass(params, images, POOL)
    norms = weight_norms(params, passed)
    w = params.convs[1]  # acts on 4 x 4 maps
    for f in range(2):
        columns = []
        for e in torch.eye(3 * 16, dtype=D):
            padded = nnf.pad(e.view(1, 3, 4, 4), (1, 1, 1, 1), mode="circular")
            columns.append(nnf.conv2d(padded, w[f]).flatten())
        matrix = torch.stack(columns, dim=1)
        assert norms["frobenius"][f, 1].item() == pytest.approx(w[f].norm().item(), rel=1e-12)
        assert norms["spectral"][f, 1].item() == pytest.approx(torch.linalg.matrix_norm(matrix, 2).item(), rel=1e-10)
        assert norms["stable_rank"][f, 1].item() == pytest.approx(
            (matrix.norm() ** 2 / torch.linalg.matrix_norm(matrix, 2) ** 2).item(), rel=1e-10)
    torch.testing.assert_close(norms["spectral"][:, 0], conv_spectral_norm(params.convs[0], 8))
    torch.testing.assert_close(norms["spectral"][:, 2], torch.linalg.matrix_norm(params.head, 2))


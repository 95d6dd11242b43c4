"""Complexity measures (Jiang et al. 2020) against path enumeration, SVDs, the full
Hessian, plain per-matrix loops and the formulas written out."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.autograd.functional import hessian

from helpers import reference_uniform
from theoryscope.core import models
from theoryscope.core.config import ModelKind, ModelSpec
from theoryscope.core.measures import complexity as cx
from theoryscope.core.train import StackedData, member_losses

D = torch.float64
DIMS = [4, 5, 6, 3]  # a 3-layer net


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_params(seed: int, f: int = 3, dims=DIMS, bias: bool = True, scale: float = 1.0, dtype=D) -> models.Params:
    g = gen(seed)
    ws = [scale * torch.randn(f, o, i, generator=g, dtype=D) / math.sqrt(i) for i, o in zip(dims, dims[1:])]
    bs = [0.3 * torch.randn(f, o, generator=g, dtype=D) for o in dims[1:]] if bias else None
    return models.Params([w.to(dtype) for w in ws], None if bs is None else [b.to(dtype) for b in bs])


def member(params: models.Params, f: int) -> models.Params:
    return models.Params([w[f:f + 1] for w in params.weights],
                         None if params.biases is None else [b[f:f + 1] for b in params.biases])


def make_data(seed: int, f: int = 3, n: int = 30, dims=DIMS, classification: bool = True, dtype=D) -> StackedData:
    """Labels from a random teacher net, so that a trained-looking student is not needed."""
    g = gen(seed + 1000)
    x = torch.randn(f, n, dims[0], generator=g, dtype=D)
    teacher = make_params(seed + 2000, f, dims)
    out = models.forward(teacher, x, True)
    y = out.argmax(-1) if classification else out
    x = x.to(dtype)
    y = y if classification else y.to(dtype)
    return StackedData(x, y, x, y, classification)


def rebuild(params: models.Params, tensors: list[torch.Tensor]) -> models.Params:
    depth = len(params.weights)
    return models.Params(tensors[:depth], tensors[depth:] or None)


def member_data(data: StackedData, f: int) -> StackedData:
    s = slice(f, f + 1)
    return StackedData(data.x_train[s], data.y_train[s], data.x_test[s], data.y_test[s], data.classification)


# ---------------------------------------------------------------------------------------
# Norms
# ---------------------------------------------------------------------------------------

def enumerated_path_norm(ws: list[torch.Tensor], bs: list[torch.Tensor] | None) -> float:
    """Sum over every path (from an input, or from a bias) of its squared weights."""
    total = 0.0
    depth = len(ws)
    starts = [(0, i) for i in range(ws[0].shape[1])]  # (layer the path enters, unit there)
    if bs is not None:
        starts += [(k + 1, j) for k in range(depth) for j in range(ws[k].shape[0])]
    for layer, unit in starts:
        head = 1.0 if layer == 0 else bs[layer - 1][unit].item() ** 2
        for rest in itertools.product(*[range(w.shape[0]) for w in ws[layer:]]):
            product, previous = head, unit
            for w, j in zip(ws[layer:], rest):
                product *= w[j, previous].item() ** 2
                previous = j
            total += product
    return total


@pytest.mark.parametrize("bias", [True, False])
def test_path_norm_enumerates_every_path(bias):
    params = make_params(0, f=2, dims=[3, 4, 2, 2], bias=bias)
    got = cx.path_norm(params)
    for f in range(2):
        ws = [w[f] for w in params.weights]
        bs = None if params.biases is None else [b[f] for b in params.biases]
        assert got[f].item() == pytest.approx(enumerated_path_norm(ws, bs), rel=1e-12)


def test_norm_measures_against_per_matrix_loops():
    params, init = make_params(1), make_params(2)
    got = cx.norm_measures(params, init, True)
    for f in range(3):
        ws = [w[f] for w in params.weights]
        gaps = [w[f] - w0[f] for w, w0 in zip(params.weights, init.weights)]
        spec = [torch.linalg.svdvals(w)[0].item() for w in ws]
        fro2 = [(w**2).sum().item() for w in ws]
        expect = {
            "log_prod_spec": sum(math.log(s**2) for s in spec),
            "log_prod_fro": sum(math.log(v) for v in fro2),
            "sum_fro_over_spec": sum(v / s**2 for v, s in zip(fro2, spec)),
            "param_norm": sum(fro2),
            "dist_fro": sum((g**2).sum().item() for g in gaps),
            "dist_spec": sum(torch.linalg.svdvals(g)[0].item() ** 2 for g in gaps),
            "params": sum(w[0].numel() for w in params.tensors()),
        }
        for name, value in expect.items():
            assert got[name][f].item() == pytest.approx(value, rel=1e-10), name
    assert set(got) == {"log_prod_spec", "log_prod_fro", "sum_fro_over_spec", "param_norm", "path_norm",
                        "spectral_complexity", "dist_fro", "dist_spec", "params"}


def test_spectral_complexity_is_bartlett_formula_written_out():
    params, init = make_params(3), make_params(4)
    got = cx.norm_measures(params, init, True)["spectral_complexity"]
    for f in range(3):
        prod, total = 1.0, 0.0
        for w, m in zip(params.weights, init.weights):
            a, ref = w[f], m[f]
            spec = torch.linalg.svdvals(a)[0].item()
            # ||A^T - M^T||_{2,1}: sum over the columns of A^T (the rows of A) of their l2 norms
            l21 = sum(math.sqrt(sum((a[j, k].item() - ref[j, k].item()) ** 2 for k in range(a.shape[1])))
                      for j in range(a.shape[0]))
            prod *= spec
            total += (l21 / spec) ** (2 / 3)
        assert got[f].item() == pytest.approx(prod * total**1.5, rel=1e-10)


def oracle_default_init(seed: int, dims: list[int], bias: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """nn.Linear's init U(-1/sqrt(fan_in), 1/sqrt(fan_in)) from the run's counter-based
    draws, one number at a time: layer l's weights (row-major) and biases have their own
    keys."""
    ws, bs = [], []
    for layer, (fan_in, fan_out) in enumerate(zip(dims, dims[1:])):
        bound = 1 / math.sqrt(fan_in)
        u = reference_uniform(seed, ("init", layer, "weight"), fan_out * fan_in)
        ws.append((torch.tensor(u, dtype=D).view(fan_out, fan_in) * 2 - 1) * bound)
        bs.append((torch.tensor(reference_uniform(seed, ("init", layer, "bias"), fan_out), dtype=D) * 2 - 1) * bound)
    return ws, bs


def test_distances_from_the_init_rebuilt_from_the_seeds():
    seeds = [3, 5, 8]
    spec = ModelSpec(kind=ModelKind.MLP, depth=3, width=5, bias=True)
    init = models.init_family([spec] * 3, seeds, DIMS, D, torch.device("cpu"))
    moved = make_params(9, scale=0.2)
    trained = models.Params([w + d for w, d in zip(init.weights, moved.weights)],
                            [b + d for b, d in zip(init.biases, moved.biases)])
    got = cx.norm_measures(trained, init, True)
    for f, seed in enumerate(seeds):
        ws0, _ = oracle_default_init(seed, DIMS, bias=True)
        gaps = [w[f] - w0 for w, w0 in zip(trained.weights, ws0)]
        assert got["dist_fro"][f].item() == pytest.approx(sum((g**2).sum().item() for g in gaps), rel=1e-10)
        assert got["dist_spec"][f].item() == pytest.approx(
            sum(torch.linalg.svdvals(g)[0].item() ** 2 for g in gaps), rel=1e-10)


# ---------------------------------------------------------------------------------------
# Margins
# ---------------------------------------------------------------------------------------

def test_margin_measures_against_a_loop():
    data = make_data(5, n=41)
    teacher, noise = make_params(5 + 2000), make_params(99, scale=0.05)  # a student close to the teacher
    params = models.Params([w + d for w, d in zip(teacher.weights, noise.weights)],
                           [b + 0.1 * d for b, d in zip(teacher.biases, noise.biases)])
    params.weights[-1][0] *= -1  # member 0's outputs negated: it misclassifies, gamma <= 0
    params.biases[-1][0] *= -1
    norms = cx.norm_measures(params, make_params(6), True)
    got = cx.margin_measures(params, data.x_train, data.y_train, True, percentile=10.0, norms=norms)
    seen_positive = False
    for f in range(3):
        out = models.forward(member(params, f), data.x_train[f:f + 1], True)[0]
        margins = []
        for s in range(out.shape[0]):
            label = int(data.y_train[f, s])
            others = [out[s, j].item() for j in range(out.shape[1]) if j != label]
            margins.append(out[s, label].item() - max(others))
        gamma = float(np.percentile(margins, 10.0))
        assert got["margin"][f].item() == pytest.approx(gamma, rel=1e-12, abs=1e-12)
        if gamma <= 0:
            assert all(math.isnan(got[k][f].item()) for k in got if k != "margin")
            continue
        seen_positive = True
        assert got["inverse_margin"][f].item() == pytest.approx(1 / gamma**2, rel=1e-10)
        assert got["log_spec_over_margin"][f].item() == pytest.approx(
            norms["log_prod_spec"][f].item() - math.log(gamma**2), rel=1e-10)
        assert got["log_fro_over_margin"][f].item() == pytest.approx(
            norms["log_prod_fro"][f].item() - math.log(gamma**2), rel=1e-10)
        assert got["path_norm_over_margin"][f].item() == pytest.approx(norms["path_norm"][f].item() / gamma**2,
                                                                        rel=1e-10)
    assert seen_positive and not got["margin"][0] > 0
    alone = cx.margin_measures(params, data.x_train, data.y_train, True)  # norms recomputed
    for k in got:
        torch.testing.assert_close(alone[k], got[k], equal_nan=True)


def test_margin_measures_are_nan_without_a_positive_margin_and_refuse_regression():
    params, data = make_params(7), make_data(7, n=20)
    wrong = (data.y_train + 1) % DIMS[-1]  # the teacher's labels shifted: mostly misclassified
    got = cx.margin_measures(params, data.x_train, wrong, True, percentile=50.0)
    negative = got["margin"] <= 0
    assert negative.any()
    assert torch.isnan(got["inverse_margin"][negative]).all()
    assert torch.isnan(got["log_spec_over_margin"][negative]).all()
    with pytest.raises(ValueError, match="class labels"):
        cx.margin_measures(params, data.x_train, data.x_train[..., :3], True)


# ---------------------------------------------------------------------------------------
# PAC-Bayes
# ---------------------------------------------------------------------------------------

def test_pacbayes_sigma_is_monotone_in_the_target():
    params, data = make_params(10), make_data(10, classification=False)
    init = make_params(11)
    sigmas, mags = [], []
    for target in (0.01, 0.05, 0.2, 1.0):
        got = cx.pacbayes(params, init, data, True, generator=gen(0), target=target, tolerance=0.0, draws=4,
                          bisection_steps=10)
        sigmas.append(got["pacbayes_sigma"])
        mags.append(got["pacbayes_mag_sigma"])
    for lower, higher in zip(sigmas, sigmas[1:]):
        assert (lower <= higher).all()
    for lower, higher in zip(mags, mags[1:]):
        assert (lower <= higher).all()
    assert (sigmas[-1] > 1.5 * sigmas[0]).all()  # the search moves


def fresh_deviation(params, data, sigma, draws, seed, magnitude_eps=None):
    """Mean and standard deviation over fresh noise draws of the training-loss rise,
    sigma per member, by a plain loop."""
    base = member_losses(models.forward(params, data.x_train, True), data.y_train, False)[0]
    g = gen(seed)
    rises = []
    for _ in range(draws):
        moved = []
        for t in params.tensors():
            z = torch.randn(t.shape, generator=g, dtype=D)
            s = sigma.view(-1, *([1] * (t.dim() - 1)))
            moved.append(t + (s * z if magnitude_eps is None else (s**2 * t**2 + magnitude_eps**2).sqrt() * z))
        perturbed = rebuild(params, moved)
        rises.append(member_losses(models.forward(perturbed, data.x_train, True), data.y_train, False)[0] - base)
    rises = torch.stack(rises)
    return rises.mean(0), rises.std(0)


def test_pacbayes_sigma_meets_the_target_up_to_monte_carlo_error():
    """Near a minimum (a student close to its teacher) the loss rise is positive and
    smooth in sigma, so at the sigma found the expected rise is the target, up to the
    Monte Carlo error of the search's draws and of the check's."""
    data = make_data(12, n=40, classification=False)
    teacher, noise = make_params(12 + 2000), make_params(98, scale=0.02)
    params = models.Params([w + d for w, d in zip(teacher.weights, noise.weights)],
                           [b + 0.1 * d for b, d in zip(teacher.biases, noise.biases)])
    target, draws, checks = 0.05, 64, 400
    got = cx.pacbayes(params, make_params(13), data, True, generator=gen(1), target=target, tolerance=0.0,
                      draws=draws, bisection_steps=14)
    for key, eps in (("pacbayes_sigma", None), ("pacbayes_mag_sigma", cx.MAGNITUDE_EPS)):
        mean, sd = fresh_deviation(params, data, got[key], checks, seed=2, magnitude_eps=eps)
        error = 3 * sd * (1 / math.sqrt(draws) + 1 / math.sqrt(checks))
        assert ((mean - target).abs() <= error).all(), (key, mean, error)


def test_pacbayes_sigma_keeps_the_classification_error_within_the_target_on_its_draws():
    """The search's own draws (standard normal, float64, drawn per parameter tensor in
    order, shared by the members) moved by the sigma found change the 0-1 error of
    ``member_losses`` by at most the target; twice that sigma moves it further."""
    params, data = make_params(26), make_data(26, n=60)
    data = StackedData(data.x_train, models.forward(params, data.x_train, True).argmax(-1), data.x_test,
                       data.y_test, True)  # labels the student fits: error 0 unperturbed
    target, draws = 0.1, 6
    got = cx.pacbayes(params, make_params(27), data, True, generator=gen(5), target=target, tolerance=0.0,
                      draws=draws, bisection_steps=12)
    for factor, within in ((1.0, True), (2.0, False)):
        deviation = error_on_draws(params, data, factor * got["pacbayes_sigma"], draws, seed=5)
        assert ((deviation <= target) == within).all(), (factor, deviation)


def error_on_draws(params, data, sigma, draws, seed):
    """The mean 0-1 error over the search's own draws (standard normal, float64, drawn
    per parameter tensor in order, shared by the members) scaled by sigma, by a loop."""
    g = gen(seed)
    noise = [torch.randn((draws, *t.shape[1:]), generator=g, dtype=D) for t in params.tensors()]
    errors = []
    for k in range(draws):
        moved = [t + sigma.view(-1, *([1] * (t.dim() - 1))) * z[k] for t, z in zip(params.tensors(), noise)]
        errors.append(member_losses(models.forward(rebuild(params, moved), data.x_train, True), data.y_train, True)[1])
    return torch.stack(errors).mean(0)


def test_the_search_ends_at_a_sigma_within_the_tolerance_and_evaluates_only_the_members_still_searching(
        monkeypatch):
    """Dziugaite et al.'s reference code ends the search once the deviation is within
    the tolerance of the target: a member's sigma is then such a sigma on the search's
    draws, or, if no step came that close, the full bisection's; and the members that
    are done are no longer evaluated."""
    params, data = make_params(26, f=6), make_data(26, f=6, n=60)
    data = StackedData(data.x_train, models.forward(params, data.x_train, True).argmax(-1), data.x_test,
                       data.y_test, True)
    target, tolerance, draws, steps = 0.1, 0.03, 6, 12
    evaluated = []
    original = cx._perturbed_mean
    monkeypatch.setattr(cx, "_perturbed_mean",
                        lambda p, *rest: (evaluated.append(p.weights[0].shape[0]), original(p, *rest))[1])
    early = cx.pacbayes(params, make_params(27, f=6), data, True, generator=gen(5), target=target,
                        tolerance=tolerance, draws=draws, bisection_steps=steps)["pacbayes_sigma"]
    assert sum(evaluated) < 2 * steps * 6 and evaluated[0] == 6  # two searches, fewer members later
    full = cx.pacbayes(params, make_params(27, f=6), data, True, generator=gen(5), target=target, tolerance=0.0,
                       draws=draws, bisection_steps=steps)["pacbayes_sigma"]
    close = (error_on_draws(params, data, early, draws, seed=5) - target).abs() < tolerance
    assert close.any()
    assert torch.equal(early[~close], full[~close])


def test_pacbayes_bounds_are_the_formulas_written_out():
    params, init, data = make_params(14), make_params(15), make_data(14)
    got = cx.pacbayes(params, init, data, True, generator=gen(4), draws=3, bisection_steps=6)
    m, eps = data.x_train.shape[1], cx.MAGNITUDE_EPS
    for f in range(3):
        w = torch.cat([t[f].flatten() for t in params.tensors()])
        w0 = torch.cat([t[f].flatten() for t in init.tensors()])
        sigma, mag = got["pacbayes_sigma"][f].item(), got["pacbayes_mag_sigma"][f].item()
        dist2 = ((w - w0) ** 2).sum().item()
        omega = w.numel()
        assert got["pacbayes_bound"][f].item() == pytest.approx(dist2 / (4 * sigma**2) + math.log(m / sigma) + 10,
                                                                rel=1e-10)
        log_sum = sum(math.log((eps**2 + (mag**2 + 1) * dist2 / omega) / (eps**2 + mag**2 * (wi - w0i) ** 2))
                      for wi, w0i in zip(w.tolist(), w0.tolist()))
        assert got["pacbayes_mag_bound"][f].item() == pytest.approx(log_sum / 4 + math.log(m / mag) + 10, rel=1e-10)
        assert got["pacbayes_flatness"][f].item() == pytest.approx(1 / sigma**2, rel=1e-12)
        assert got["pacbayes_mag_flatness"][f].item() == pytest.approx(1 / mag**2, rel=1e-12)


# ---------------------------------------------------------------------------------------
# Sharpness
# ---------------------------------------------------------------------------------------

def test_sharpness_is_non_negative_and_zero_in_a_box_of_radius_zero():
    params, data = make_params(16), make_data(16)
    rise = cx.sharpness(params, data, True, generator=gen(5), alpha=0.05, steps=5)
    assert (rise >= 0).all() and (rise > 0).any()
    assert (cx.sharpness(params, data, True, generator=gen(5), alpha=0.0, steps=5) == 0).all()


def test_sharpness_stays_in_the_box_and_finds_its_worst_corner():
    """A linear model under the MSE: the loss is convex, so its maximum over the box is at
    one of the 2^6 corners, found here by enumeration."""
    dims = [3, 2]
    params, data = make_params(17, dims=dims, bias=False), make_data(17, dims=dims, classification=False)
    alpha, eps = 0.1, 1e-3
    got = cx.sharpness(params, data, False, generator=gen(6), alpha=alpha, eps=eps, steps=20)
    w = params.weights[0]
    radius = alpha * (w.abs() + eps)
    base = member_losses(models.forward(params, data.x_train, False), data.y_train, False)[0]
    best = torch.zeros(3, dtype=D)
    for signs in itertools.product((-1.0, 1.0), repeat=w[0].numel()):
        corner = torch.tensor(signs, dtype=D).view(w.shape[1:])
        moved = models.Params([w + corner * radius], None)
        loss = member_losses(models.forward(moved, data.x_train, False), data.y_train, False)[0]
        best = torch.maximum(best, loss - base)
    assert (got <= best * (1 + 1e-9)).all()
    assert (got >= 0.9 * best).all()


# ---------------------------------------------------------------------------------------
# Hessian
# ---------------------------------------------------------------------------------------

def full_hessian_eigenvalues(params, data, f, nonlinear):
    one, local = member(params, f), member_data(data, f)
    shapes = [t.shape for t in one.tensors()]
    flat = torch.cat([t.flatten() for t in one.tensors()])

    def loss(theta):
        tensors, start = [], 0
        for s in shapes:
            tensors.append(theta[start:start + math.prod(s)].view(s))
            start += math.prod(s)
        out = models.forward(rebuild(one, tensors), local.x_train, nonlinear)
        return member_losses(out, local.y_train, local.classification)[0].sum()

    return torch.linalg.eigvalsh(hessian(loss, flat))


@pytest.mark.parametrize("classification, nonlinear", [(True, True), (False, True), (False, False)])
def test_hessian_top_is_the_full_hessians_largest_eigenvalue(classification, nonlinear):
    dims = [3, 4, 2]
    params, data = make_params(18, f=2, dims=dims), make_data(18, f=2, n=12, dims=dims, classification=classification)
    got = cx.hessian_top(params, data, nonlinear, generator=gen(7), iterations=400)
    for f in range(2):
        eig = full_hessian_eigenvalues(params, data, f, nonlinear)
        assert eig[-2].abs() < 0.97 * eig[-1].abs()  # a gap, so that 400 iterations converge
        assert got[f].item() == pytest.approx(eig[-1].item(), rel=1e-3)


def test_the_default_lanczos_steps_give_the_largest_eigenvalue_to_1e_3():
    """HESSIAN_ITERATIONS products, where power iteration would need hundreds at these
    gaps (second to largest eigenvalue up to 0.96)."""
    dims = [6, 10, 3]
    for seed in range(5):
        params, data = make_params(seed, f=2, dims=dims), make_data(seed, f=2, n=30, dims=dims)
        got = cx.hessian_top(params, data, True, generator=gen(7))
        for f in range(2):
            eig = full_hessian_eigenvalues(params, data, f, True)
            assert got[f].item() == pytest.approx(eig[-1].item(), rel=1e-3)
            assert got[f].item() <= eig[-1].item() * (1 + 1e-9)  # a Ritz value: never above it


def test_hessian_top_finds_the_largest_eigenvalue_when_a_negative_one_dominates():
    """A deep linear net near the origin, with large targets: the residual part of the
    Hessian (indefinite) outweighs its positive Gauss-Newton part."""
    dims = [2, 3, 3, 2]
    params = make_params(19, f=2, dims=dims, bias=False, scale=0.3)
    g = gen(19)
    x = torch.randn(2, 8, 2, generator=g, dtype=D)
    data = StackedData(x, 10 * torch.randn(2, 8, 2, generator=g, dtype=D), x, x, False)
    got = cx.hessian_top(params, data, False, generator=gen(8), iterations=400)
    for f in range(2):
        eig = full_hessian_eigenvalues(params, data, f, False)
        assert eig[0].abs() > eig[-1].abs()  # the premise: a negative eigenvalue dominates
        assert got[f].item() == pytest.approx(eig[-1].item(), rel=1e-3)


# ---------------------------------------------------------------------------------------
# Families, dtypes
# ---------------------------------------------------------------------------------------

def all_measures(params, init, data, nonlinear, seed, **options):
    out = dict(cx.norm_measures(params, init, nonlinear))
    if data.classification:
        out.update(cx.margin_measures(params, data.x_train, data.y_train, nonlinear, norms=out))
    out.update(cx.pacbayes(params, init, data, nonlinear, generator=gen(seed), draws=3, bisection_steps=8))
    out["sharpness"] = cx.sharpness(params, data, nonlinear, generator=gen(seed), steps=3)
    out["hessian_top"] = cx.hessian_top(params, data, nonlinear, generator=gen(seed), iterations=8)
    return out


@pytest.mark.parametrize("classification, nonlinear", [(True, True), (False, False)])
def test_a_family_measures_what_its_members_measure_alone(classification, nonlinear):
    params, init = make_params(20, scale=2.0), make_params(21)
    data = make_data(20, classification=classification)
    family = all_measures(params, init, data, nonlinear, seed=9)
    for f in range(3):
        alone = all_measures(member(params, f), member(init, f), member_data(data, f), nonlinear, seed=9)
        assert set(alone) == set(family)
        for name, value in alone.items():
            torch.testing.assert_close(value[0], family[name][f], rtol=1e-7, atol=1e-10, equal_nan=True,
                                       msg=lambda m, name=name: f"{name}: {m}")


def test_a_diverged_member_gives_nan_and_leaves_the_others_alone():
    params, init, data = make_params(24), make_params(25), make_data(24, classification=False)
    clean = all_measures(params, init, data, True, seed=3)
    params.weights[1][1, 0, 0] = math.nan
    broken = all_measures(params, init, data, True, seed=3)
    for name in ("log_prod_spec", "path_norm", "pacbayes_sigma", "pacbayes_mag_sigma", "pacbayes_bound",
                 "sharpness", "hessian_top"):
        assert math.isnan(broken[name][1].item()), name
    for name, value in clean.items():
        torch.testing.assert_close(broken[name][[0, 2]], value[[0, 2]], rtol=1e-9, atol=1e-12, equal_nan=True,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_float32_gives_the_float64_numbers():
    p64, i64 = make_params(22), make_params(23)
    p32 = models.Params([w.float() for w in p64.weights], [b.float() for b in p64.biases])
    i32 = models.Params([w.float() for w in i64.weights], [b.float() for b in i64.biases])
    d64, d32 = make_data(22, classification=False), make_data(22, classification=False, dtype=torch.float32)
    for name, (a, b) in {
        "norms": (cx.norm_measures(p32, i32, True), cx.norm_measures(p64, i64, True)),
        "hessian": ({"h": cx.hessian_top(p32, d32, True, generator=gen(1), iterations=30)},
                    {"h": cx.hessian_top(p64, d64, True, generator=gen(1), iterations=30)}),
    }.items():
        for key in a:
            assert a[key].dtype in (torch.float32, torch.float64)
            torch.testing.assert_close(a[key].double(), b[key], rtol=1e-4, atol=1e-5,
                                       msg=lambda m, key=key: f"{name}.{key}: {m}")
    sigma32 = cx.pacbayes(p32, i32, d32, True, generator=gen(2), draws=3, bisection_steps=8)["pacbayes_sigma"]
    sigma64 = cx.pacbayes(p64, i64, d64, True, generator=gen(2), draws=3, bisection_steps=8)["pacbayes_sigma"]
    assert sigma32.dtype == torch.float32
    torch.testing.assert_close(sigma32.double(), sigma64, rtol=2e-2, atol=0.0)
    assert torch.isfinite(cx.sharpness(p32, d32, True, generator=gen(3), steps=3)).all()

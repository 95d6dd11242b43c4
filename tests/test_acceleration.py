"""The end-to-end rule, balanced factors, the l_p optimum and Saxe's mode timing against
autograd, closed forms and direct simulation."""

import math

import pytest
import torch

from theoryscope.core.measures.acceleration import (
    balanced_factors, end_to_end_update, identity_factors, lp_loss, lp_optimum, product, psd_power, saxe_mode_time,
    single_output_update, steps_to_target,
)

F64 = torch.float64


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_psd_power_matches_closed_forms():
    a = randn(5, 5)
    psd = a @ a.T
    root = psd_power(psd, 0.5)
    assert torch.allclose(root @ root, psd, atol=1e-10)
    assert torch.allclose(psd_power(psd, 1.0), psd, atol=1e-10)
    assert torch.equal(psd_power(psd, 0.0), torch.eye(5, dtype=F64))
    diag = torch.diag(torch.tensor([4.0, 9.0, 0.0], dtype=F64))
    assert torch.allclose(psd_power(diag, 1 / 3), torch.diag(torch.tensor([4 ** (1 / 3), 9 ** (1 / 3), 0.0],
                                                                          dtype=F64)), atol=1e-12)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_balanced_and_identity_factors_multiply_back(depth):
    w_e = randn(2, 3, 5)  # a family of two 3 x 5 matrices
    factors = balanced_factors(w_e, depth, width=4)
    assert torch.allclose(product(factors), w_e, atol=1e-12)
    for lower, upper in zip(factors[:-1], factors[1:]):
        assert torch.allclose(upper.transpose(-1, -2) @ upper, lower @ lower.transpose(-1, -2), atol=1e-12)
    assert torch.allclose(product(identity_factors(w_e, depth, width=4)), w_e, atol=1e-12)


def gd_step_on_factors(factors, loss_of_product, lr):
    leaves = [f.clone().requires_grad_(True) for f in factors]
    grads = torch.autograd.grad(loss_of_product(product(leaves)), leaves)
    return product([f - lr * g for f, g in zip(factors, grads)])


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_end_to_end_rule_is_gd_on_balanced_factors_to_first_order(depth):
    x, w_e = randn(20, 5, seed=1), randn(3, 5, seed=2) * 0.7
    y = x @ randn(3, 5, seed=3).T

    def loss(w):
        return 0.5 * ((x @ w.T - y) ** 2).sum() / x.shape[0]

    w = w_e.clone().requires_grad_(True)
    grad, = torch.autograd.grad(loss(w), w)
    factors = balanced_factors(w_e, depth, width=3)
    deviations = []
    for lr in (1e-3, 5e-4):
        by_factors = gd_step_on_factors(factors, loss, lr)
        by_rule = end_to_end_update(w_e, grad, lr, depth)
        moved = (by_factors - w_e).norm()
        deviation = (by_factors - by_rule).norm()
        assert deviation < 0.05 * moved  # the rule is the step, up to O(lr^2)
        deviations.append(deviation)
    assert 3.0 < float(deviations[0] / deviations[1]) < 5.0  # halving lr quarters it: O(lr^2)


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_single_output_rule_equals_the_general_rule(depth):
    w, grad = randn(4, 6, seed=4), randn(4, 6, seed=5)
    general = end_to_end_update(w.unsqueeze(-2), grad.unsqueeze(-2), 0.1, depth).squeeze(-2)
    assert torch.allclose(single_output_update(w, grad, 0.1, depth), general, atol=1e-12)


def test_depth_one_rule_is_plain_gradient_descent():
    w, grad = randn(3, 4), randn(3, 4, seed=1)
    assert torch.allclose(end_to_end_update(w, grad, 0.3, 1), w - 0.3 * grad, atol=1e-14)


@pytest.mark.parametrize("p", [2, 3, 4, 6])
def test_lp_optimum_is_the_global_minimum(p):
    x = randn(60, 4) * torch.tensor([1.0, 0.5, 0.2, 0.1], dtype=F64)
    y = x @ randn(4, seed=1) + 0.3 * randn(60, seed=2)
    w, best = lp_optimum(x, y, p)
    assert best == pytest.approx(float(lp_loss(w, x, y, p)), rel=1e-12)
    wg = w.clone().requires_grad_(True)
    grad, = torch.autograd.grad(lp_loss(wg, x, y, p), wg)
    assert grad.norm() < 1e-10  # stationary, and the problem is convex: the global minimum
    for seed in range(20):
        assert float(lp_loss(w + 1e-3 * randn(4, seed=10 + seed), x, y, p)) > best
    if p == 2:
        normal = torch.linalg.solve(x.T @ x, x.T @ y)
        assert torch.allclose(w, normal, atol=1e-10)


def test_steps_to_target_on_a_geometric_decay():
    t = torch.arange(600, dtype=F64)
    rates = torch.tensor([0.9, 0.99, 0.999], dtype=F64)
    losses = 0.5 + 2.0 * rates ** t.unsqueeze(1)  # [T, 3], L* = 0.5
    got = steps_to_target(losses, 0.5, 1e-2)
    expected = [math.ceil(math.log(1e-2) / math.log(r)) for r in (0.9, 0.99)]
    assert got.tolist() == expected + [-1]  # the slowest never gets there in 600 steps


@pytest.mark.parametrize("s", [4.0, 2.0, 1.0])
def test_saxe_mode_timing_matches_gradient_descent(s):
    """A depth-2 linear net on whitened inputs, started decoupled and balanced at
    strength u0 in every mode, trained by GD: each mode reaches half its strength when
    the closed form says (time = steps x lr)."""
    strengths = torch.tensor([s, 0.5 * s, 0.25 * s], dtype=F64)
    u, _ = torch.linalg.qr(randn(3, 3, seed=1))
    v, _ = torch.linalg.qr(randn(4, 4, seed=2))
    v = v[:, :3]
    target = u @ torch.diag(strengths) @ v.T
    u0, lr = 1e-3, 2e-3
    factors = balanced_factors(u0 * u @ v.T, 2, width=3)
    half_time = [math.nan] * 3
    previous = torch.full((3,), u0, dtype=F64)
    for step in range(1, 20001):
        w1, w2 = factors
        grad_e = w2 @ w1 - target  # whitened inputs: the gradient of (1/2) E||y - W x||^2
        factors = [w1 - lr * w2.T @ grad_e, w2 - lr * grad_e @ w1.T]
        modes = torch.einsum("ia,ij,ja->a", u, factors[1] @ factors[0], v)
        for a in range(3):
            if math.isnan(half_time[a]) and modes[a] >= strengths[a] / 2:
                fraction = float((strengths[a] / 2 - previous[a]) / (modes[a] - previous[a]))
                half_time[a] = (step - 1 + fraction) * lr
        previous = modes
        if not any(math.isnan(h) for h in half_time):
            break
    for a in range(3):
        assert half_time[a] == pytest.approx(saxe_mode_time(float(strengths[a]), u0), rel=0.03)


def test_saxe_mode_time_refuses_impossible_strengths():
    with pytest.raises(ValueError, match="0 < u0 < u_f < s"):
        saxe_mode_time(1.0, 0.0)

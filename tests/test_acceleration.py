"""The end-to-end rule, balanced factors, the l_p optimum and Saxe's mode timing against
autograd, closed forms and direct simulation."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from theoryscope.core.accelerate import train_acceleration
from theoryscope.core.config import (
    DataKind, DataSpec, DType, Experiment, FieldError, Init, ModelKind, ModelSpec, Optimizer, RunSpec, TrainSpec,
)
from theoryscope.core.data import make_dataset
from theoryscope.core.measures.acceleration import (
    balanced_factors, end_to_end_update, identity_factors, lp_loss, lp_optimum, product, psd_power, saxe_mode_time,
    single_output_update, steps_to_target,
)
from theoryscope.core.measures.rate_search import Search, choose_rate, refine, refine_rates, resolution, side_points
from theoryscope.core.models import init_member
from theoryscope.core.optim import STATE_TENSORS, Hyper, StackedOptimizer
from theoryscope.core.train import train_family

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


# ---------------------------------------------------------------------------------------
# Baselines: AdaGrad (Duchi, Hazan & Singer 2011) and AdaDelta (Zeiler 2012), stacked
# ---------------------------------------------------------------------------------------

# Three members with settings of their own; the optimizer's own keys are its settings.
MEMBERS = [
    dict(lr=0.05, weight_decay=0.0, adagrad_eps=1e-10, rho=0.9, adadelta_eps=1e-6, momentum=0.9, beta1=0.9),
    dict(lr=0.2, weight_decay=0.01, adagrad_eps=1e-3, rho=0.5, adadelta_eps=1e-4, momentum=0.5, beta1=0.5),
    dict(lr=1.0, weight_decay=0.1, adagrad_eps=1e-6, rho=0.99, adadelta_eps=1e-8, momentum=0.0, beta1=0.0),
]


def torch_optimizer(kind, params, s):
    if kind is Optimizer.ADAGRAD:
        return torch.optim.Adagrad(params, lr=s["lr"], eps=s["adagrad_eps"], weight_decay=s["weight_decay"])
    if kind is Optimizer.ADADELTA:
        return torch.optim.Adadelta(params, lr=s["lr"], rho=s["rho"], eps=s["adadelta_eps"],
                                    weight_decay=s["weight_decay"])
    if kind is Optimizer.ADAM:
        return torch.optim.Adam(params, lr=s["lr"], betas=(s["beta1"], 0.999), weight_decay=s["weight_decay"])
    return torch.optim.SGD(params, lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"])


def quartic_loss(w, v, a, b):
    """A non-quadratic loss of a matrix and a vector: gradients change every step."""
    return (((a @ w.transpose(-1, -2) @ v.unsqueeze(-1)).squeeze(-1) - b) ** 4).sum(-1) / 4


@pytest.mark.parametrize("kind", [Optimizer.ADAGRAD, Optimizer.ADADELTA, Optimizer.ADAM, Optimizer.SGD])
def test_stacked_optimizers_match_torch_optim_step_by_step(kind):
    """Every member of a stack, with its own settings, against torch.optim on its own
    copy; the third member is frozen (inactive) from step 8 on."""
    members = [dict(s, lr=s["lr"] * (0.02 if kind is Optimizer.SGD else 1)) for s in MEMBERS]  # SGD: no blow-up
    trains = [TrainSpec(optimizer=kind, batch_size=1 if kind is Optimizer.SGD else 0, **s) for s in members]
    a, b = randn(3, 10, 4, seed=1) * 0.5, randn(3, 10, seed=2)
    w, v = randn(3, 5, 4, seed=3) * 0.5, randn(3, 5, seed=4) * 0.5
    stacked = [w.clone(), v.clone()]
    optimizer = StackedOptimizer(kind, Hyper.of(trains, F64, torch.device("cpu")), stacked)
    alone = [[w[f].clone().requires_grad_(True), v[f].clone().requires_grad_(True)] for f in range(3)]
    references = [torch_optimizer(kind, params, s) for params, s in zip(alone, members)]
    for step in range(20):
        active = torch.tensor([True, True, step < 8])
        leaves = [t.clone().requires_grad_(True) for t in stacked]
        grads = torch.autograd.grad(quartic_loss(*leaves, a, b).sum(), leaves)
        optimizer.step(stacked, grads, active)
        for f, (params, reference) in enumerate(zip(alone, references)):
            if bool(active[f]):
                reference.zero_grad()
                quartic_loss(*params, a[f], b[f]).backward()
                reference.step()
            for mine, theirs in zip(stacked, params):
                torch.testing.assert_close(mine[f], theirs.detach(), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(stacked[0][2], w[2])  # it moved before it was frozen


@pytest.mark.parametrize("kind", list(Optimizer))
def test_state_tensors_count_what_torch_optim_keeps(kind):
    """core.optim.STATE_TENSORS (memory planning) against torch.optim's own state."""
    settings = dict(MEMBERS[0], momentum=0.9 if kind is Optimizer.SGD else 0.0)
    p = torch.nn.Parameter(torch.ones(3, dtype=F64))
    reference = torch_optimizer(kind, [p], settings)
    p.grad = torch.ones(3, dtype=F64)
    reference.step()
    kept = [k for k, t in reference.state[p].items() if k != "step" and isinstance(t, torch.Tensor)]
    assert STATE_TENSORS[kind] == len(kept)
    trains = [TrainSpec(optimizer=kind, batch_size=1 if kind is Optimizer.SGD else 0)]
    assert len(StackedOptimizer(kind, Hyper.of(trains, F64, torch.device("cpu")), [p.detach()]).state_tensors()) \
        == len(kept)


@pytest.mark.parametrize("kind", [Optimizer.ADAGRAD, Optimizer.ADADELTA])
def test_a_train_family_with_adagrad_or_adadelta_matches_plain_pytorch(kind, one_thread):
    """Experiment "train": a deep linear family, each member against nn.Linear layers and
    torch.optim alone, through the whole training loop."""
    base = RunSpec(Experiment.TRAIN, DataSpec(kind=DataKind.LINEAR_TEACHER, n_train=30, n_test=20, input_dim=6),
                   ModelSpec(kind=ModelKind.LINEAR, depth=2, width=5, init=Init.GAUSSIAN),
                   TrainSpec(optimizer=kind, steps=30, log_every=10, dtype=DType.FLOAT64, adadelta_eps=1e-3))
    runs = [dataclasses.replace(base, seed=seed, train=dataclasses.replace(base.train, lr=lr, rho=rho))
            for seed, lr, rho in ((0, 0.05, 0.9), (1, 0.5, 0.7))]
    result = train_family(runs, torch.device("cpu"))
    for f, run in enumerate(runs):
        data = make_dataset(run.data)
        init = init_member(run.model, run.model.layer_dims(6, 1), run.seed)
        layers = [w.clone().requires_grad_(True) for w in init.weights]
        settings = {k: getattr(run.train, k) for k in MEMBERS[0]}
        reference = torch_optimizer(kind, layers, settings)
        curve = []
        for step in range(run.train.steps + 1):
            loss = ((data.x_train @ layers[0].T @ layers[1].T - data.y_train) ** 2).mean()
            if step in run.train.log_steps():
                curve.append(loss.item())
            if step < run.train.steps:
                reference.zero_grad()
                loss.backward()
                reference.step()
        np.testing.assert_allclose(result.train_loss[:, f], curve, rtol=1e-9)
    assert result.train_loss[-1, 1] < 0.9 * result.train_loss[0, 1]  # it learned


def test_adagrad_and_adadelta_settings_are_checked():
    with pytest.raises(FieldError, match=r"rho: expected a number in \[0, 1\), got 1.0"):
        TrainSpec(optimizer=Optimizer.ADADELTA, rho=1.0)
    with pytest.raises(FieldError, match="adagrad_eps: expected a finite number > 0, got 0.0"):
        TrainSpec(optimizer=Optimizer.ADAGRAD, adagrad_eps=0.0)
    with pytest.raises(FieldError, match="adadelta_eps: expected a finite number > 0"):
        TrainSpec(adadelta_eps=float("inf"))
    defaults = TrainSpec()  # PyTorch's documented defaults
    assert (defaults.adagrad_eps, defaults.rho, defaults.adadelta_eps) == (1e-10, 0.9, 1e-6)


# ---------------------------------------------------------------------------------------
# Refining the rate (core.accelerate.refine): accurate to lr_tolerance
# ---------------------------------------------------------------------------------------

def test_side_points_are_the_fewest_that_resolve_a_gap_in_the_rounds_left():
    gap, tolerance = 4e5 ** (1 / 13), 0.02  # the example's 14 rates over [1e-5, 4]: 2.7x apart
    first = side_points(gap, tolerance, 2)
    after = gap ** (1 / (first + 1))
    second = side_points(after, tolerance, 1)
    assert (first, second) == (7, 6)
    assert after ** (1 / (second + 1)) <= 1 + tolerance < after ** (1 / second)  # fewest in the last round
    assert (first + 1) ** 2 >= math.log(gap) / math.log1p(tolerance) > first ** 2  # fewest for two rounds
    assert side_points(1.019, tolerance, 2) == 0


def test_refine_rates_are_log_even_inside_each_wide_gap_and_mirror_at_an_edge():
    lrs = np.array([0.01, 0.1, 1.0])
    inside = refine_rates(lrs, 1, 0.5, rounds_left=1)  # gaps of 10x; log 10 / log 1.5 = 5.7: 5 a side
    assert np.allclose(inside, 0.1 * 10.0 ** (np.array([-5, -4, -3, -2, -1, 1, 2, 3, 4, 5]) / 6))
    edge = refine_rates(lrs, 2, 0.5, rounds_left=1)  # the largest rate: its upper gap mirrors the lower
    assert np.allclose(edge, 10.0 ** (np.array([-5, -4, -3, -2, -1, 1, 2, 3, 4, 5]) / 6))
    assert resolution(np.append(lrs, edge), 2) == pytest.approx(10 ** (1 / 6))
    one_side = refine_rates(np.array([0.05, 0.1, 0.101]), 1, 0.02)  # 2x below, 1.01x above: 35 = 5.9^2
    assert len(one_side) == 5 and (one_side > 0.05).all() and (one_side < 0.1).all()


def gd_on_a_quadratic(rate: float, curvatures=(1.0, 30.0), target=1e-6) -> int:
    """Steps until GD's slowest mode contracts below target: max_i |1 - rate h_i|^(2t) <=
    target; -1 when unstable. Fastest at rate 2 / (h_min + h_max)."""
    contraction = max(abs(1 - rate * h) for h in curvatures)
    return -1 if contraction >= 1 else math.ceil(math.log(target) / (2 * math.log(contraction)))


def inverse_to_an_edge(rate: float) -> int:
    """Steps that fall as 1 / rate up to an edge of stability at 0.37."""
    return math.ceil(500 / rate) if rate < 0.37 else -1


@pytest.mark.parametrize("steps_of", [gd_on_a_quadratic, inverse_to_an_edge])
@pytest.mark.parametrize("tolerance", [0.02, 0.05])
def test_refinement_is_within_the_tolerance_of_a_dense_scan(steps_of, tolerance):
    """A known steps-to-target function S(rate); every round sees only steps within its
    horizon, as the training rounds do. The refined rate is within (1 + tolerance) S* + 1
    of the best of 20,000 rates, where the best of the coarse grid is not."""
    grid = 1.3e-3 * 2.8 ** np.arange(9)
    steps = np.array([steps_of(r) for r in grid])
    search = Search(list(grid), list(steps), best=choose_rate(grid, steps, steps >= 0, np.zeros(9)))
    coarse = search.best_steps
    seen = []

    def evaluate(member_run, member_lr, horizon):
        seen.append(len(member_lr))
        found = np.array([steps_of(r) for r in member_lr])
        return np.where(found <= horizon, found, -1), 0.0

    refine([search], [tolerance], evaluate)
    dense = min(s for s in map(steps_of, np.exp(np.linspace(np.log(1e-3), np.log(4.0), 20000))) if s >= 0)
    assert search.best_steps <= (1 + tolerance) * dense + 1
    assert coarse > (1 + tolerance) * dense + 1  # the grid alone is not accurate: the test can fail
    assert resolution(np.array(search.lrs), search.best) <= 1 + tolerance
    assert len(seen) == search.rounds == 2  # two stacked rounds, as planned


def lp_run(p: int, target: float, lr_grid, tolerance: float = 0.0, steps: int = 600) -> RunSpec:
    return RunSpec(Experiment.ACCELERATION,
                   DataSpec(kind=DataKind.LP_REGRESSION, n_train=32, n_test=8, input_dim=4, p=p, condition=5.0,
                            label_noise=0.1),
                   ModelSpec(kind=ModelKind.LINEAR, depth=2, width=4, init=Init.BALANCED, init_scale=0.3),
                   TrainSpec(steps=steps, log_every=100, lr_grid=lr_grid, lr_range=(1e-3, 4.0), target=target,
                             dtype=DType.FLOAT64, lr_tolerance=tolerance))


@pytest.fixture
def one_thread():
    """Small stacked nets train fastest on one thread (two contend on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def dense_best(problems, low: float, high: float, steps: int) -> np.ndarray:
    """The fewest steps to the target over 100 rates log-evenly spaced over [low, high]
    (2 % apart for [0.25, 2]), one stacked family: the reference scan."""
    rates = tuple(float(r) for r in np.exp(np.linspace(math.log(low), math.log(high), 100)))
    dense = train_acceleration([lp_run(p, t, rates, steps=steps) for p, t in problems], torch.device("cpu"))
    return np.array([row[row >= 0].min() for row in dense.steps])


def test_refined_training_is_within_the_tolerance_of_a_dense_scan_of_rates(one_thread):
    """Depth-2 GD on l_2 regression: from a grid of 6 rates 5.3x apart, two stacked rounds
    find steps within 2 % (+1) of the best of a dense scan around the optimum (32 steps;
    one over the whole range finds no better), where the grid alone takes 55. Its family
    mate (l_4, another horizon) does not change what it finds."""
    cpu = torch.device("cpu")
    family = train_acceleration([lp_run(2, 1e-4, 6, 0.02, steps=200), lp_run(4, 1e-3, 6, 0.02, steps=200)], cpu)
    best = dense_best([(2, 1e-4)], 0.25, 2.0, 200)[0]
    assert family.steps_to_target[0] <= 1.02 * best + 1
    assert family.steps[0][family.steps[0] >= 0].min() > 1.5 * best  # the coarse grid's best
    assert family.resolution[0] <= 1.02 and family.rounds[0] == 2
    assert family.family.train_loss[0, 0] == pytest.approx(family.initial_loss[0])  # the reported curve
    assert family.family.train_loss.shape == (3, 2) and family.family.test_loss.shape == (3, 2)
    alone = train_acceleration([lp_run(2, 1e-4, 6, 0.02, steps=200)], cpu)
    assert alone.lr[0] == family.lr[0] and alone.steps_to_target[0] == family.steps_to_target[0]
    assert alone.refined[0] == family.refined[0]


def test_refined_l4_training_is_within_the_tolerance_of_a_dense_scan_of_rates(one_thread):
    """Depth-2 GD on l_4 regression to 1e-5 of the initial gap: within 2 % (+1) of a dense
    scan around the optimum (293 steps; 300 rates over the whole range find 292), where
    the grid alone takes 496."""
    refined = train_acceleration([lp_run(4, 1e-5, 6, 0.02)], torch.device("cpu"))
    best = dense_best([(4, 1e-5)], 0.5, 2.0, 600)[0]
    assert refined.steps_to_target[0] <= 1.02 * best + 1
    assert refined.steps[0][refined.steps[0] >= 0].min() > 1.5 * best


def test_a_refined_rate_unstable_over_the_whole_budget_falls_back_to_the_grid(one_thread, monkeypatch):
    """The report round checks the refined best over all train.steps; made to find it
    diverged, the run reports the grid's best rate, its steps and the grid's spacing."""
    from theoryscope.core import accelerate

    descend = accelerate._descend

    def report_diverges(problem, member_run, member_lr, steps, full, device):
        done = descend(problem, member_run, member_lr, steps, full, device)
        if full and len(member_run) < len(problem.runs) * 6:  # the report round
            return dataclasses.replace(done, diverged=np.zeros_like(done.diverged))
        return done

    monkeypatch.setattr(accelerate, "_descend", report_diverges)
    run = lp_run(2, 1e-4, 6, 0.02, steps=200)
    result = train_acceleration([run], torch.device("cpu"))
    grid = np.array(run.train.learning_rates())
    coarse = int(np.flatnonzero(result.steps[0] >= 0)[np.argmin(result.steps[0][result.steps[0] >= 0])])
    assert result.lr[0] == grid[coarse] and result.steps_to_target[0] == result.steps[0, coarse] == 55
    assert result.resolution[0] == pytest.approx(grid[1] / grid[0])
    assert result.rounds[0] == 2 and min(s for s in result.refined[0].values() if s >= 0) == 32


def test_hyper_without_adagrad_or_adadelta_settings_takes_their_defaults():
    given = [torch.full((2,), v, dtype=F64) for v in (0.1, 0.0, 0.0, 0.9, 0.999, 1e-8)]
    hyper = Hyper(*given)
    assert hyper.adagrad_eps.tolist() == [1e-10] * 2 and hyper.rho.tolist() == [0.9] * 2
    assert hyper.adadelta_eps.tolist() == [1e-6] * 2 and hyper.rho.dtype == F64
    assert Hyper.of([TrainSpec(lr=0.1, rho=0.5)], F64, torch.device("cpu")).rho.tolist() == [0.5]

"""The stacked trainer against an oracle: each member trained alone by plain PyTorch
(``nn.Linear`` layers, ``torch.optim``), in float64."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf

from helpers import FAMILIES, base_run, make_runs, reference_permutation
from theoryscope.core.config import DataSpec, Experiment, Init, ModelKind, ModelSpec, Optimizer, RunSpec, TrainSpec
from theoryscope.core.data import make_dataset
from theoryscope.core.models import init_member
from theoryscope.core.train import train_family

CPU = torch.device("cpu")


def reference_curves(run: RunSpec) -> dict[str, np.ndarray]:
    """Train ``run`` alone with nn.Linear + torch.optim; the same data, init and batch order."""
    data = make_dataset(run.data)
    dims = run.model.layer_dims(run.data.input_dim, data.n_outputs)
    init = init_member(run.model, dims, run.seed)
    layers = []
    for i, w in enumerate(init.weights):
        layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=run.model.bias, dtype=torch.float64)
        with torch.no_grad():
            layer.weight.copy_(w)
            if run.model.bias:
                layer.bias.copy_(init.biases[i])
        layers.append(layer)

    def net(x):
        for i, layer in enumerate(layers):
            x = layer(x)
            if run.model.kind is ModelKind.MLP and i < len(layers) - 1:
                x = torch.relu(x)
        return x

    def loss_and_error(x, y):
        out = net(x)
        if data.classification:
            return nnf.cross_entropy(out, y), (out.argmax(1) != y).double().mean()
        return nnf.mse_loss(out, y), torch.tensor(float("nan"))

    params = [p for layer in layers for p in layer.parameters()]
    t = run.train
    if t.optimizer is Optimizer.ADAM:
        opt = torch.optim.Adam(params, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, weight_decay=t.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum if t.optimizer is Optimizer.SGD else 0.0,
                              weight_decay=t.weight_decay)
    order, pos, epoch = None, data.x_train.shape[0], 0
    curves = {k: [] for k in ("train_loss", "test_loss", "train_error", "test_error")}
    for step in range(t.steps + 1):
        if step in t.log_steps():
            with torch.no_grad():
                for split, (x, y) in {"train": (data.x_train, data.y_train), "test": (data.x_test, data.y_test)}.items():
                    loss, error = loss_and_error(x, y)
                    curves[f"{split}_loss"].append(loss.item())
                    curves[f"{split}_error"].append(error.item())
        if step == t.steps:
            break
        if t.batch_size == 0:
            xb, yb = data.x_train, data.y_train
        else:
            if pos >= data.x_train.shape[0]:
                order, pos = torch.tensor(reference_permutation(run.seed, epoch, data.x_train.shape[0])), 0
                epoch += 1
            idx = order[pos:pos + t.batch_size]
            pos += t.batch_size
            xb, yb = data.x_train[idx], data.y_train[idx]
        opt.zero_grad()
        loss_and_error(xb, yb)[0].backward()
        opt.step()
    return {k: np.asarray(v) for k, v in curves.items()}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_member_of_a_family_matches_plain_pytorch_alone(name):
    runs = FAMILIES[name]
    result = train_family(runs, CPU)
    assert (result.diverged_step == -1).all()
    for f, run in enumerate(runs):
        expected = reference_curves(run)
        np.testing.assert_array_equal(result.steps, run.train.log_steps())
        for key in ("train_loss", "test_loss"):
            np.testing.assert_allclose(getattr(result, key)[:, f], expected[key], rtol=1e-6, err_msg=f"{key} member {f}")
        if run.data.kind.is_classification:
            for key in ("train_error", "test_error"):
                np.testing.assert_allclose(getattr(result, key)[:, f], expected[key], atol=1e-12)
        else:
            assert result.train_error is None


def test_member_in_a_family_equals_a_family_of_one():
    runs = FAMILIES["sgd-momentum-mlp-classification-bias"]
    together = train_family(runs, CPU)
    for f in (0, 5):
        alone = train_family([runs[f]], CPU)
        np.testing.assert_allclose(together.train_loss[:, f], alone.train_loss[:, 0], rtol=1e-6)
        np.testing.assert_allclose(together.test_loss[:, f], alone.test_loss[:, 0], rtol=1e-6)
        for layer in range(2):
            torch.testing.assert_close(together.params.weights[layer][f], alone.params.weights[layer][0],
                                       rtol=1e-6, atol=1e-9)


def test_curves_log_step_zero_and_the_last_step():
    run = base_run(DataSpec(n_train=8, n_test=8, input_dim=2), ModelSpec(depth=2, width=3), TrainSpec(steps=12))
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, log_every=5))
    assert list(train_family([run], CPU).steps) == [0, 5, 10, 12]


def test_a_diverging_member_is_frozen_and_its_siblings_carry_on():
    # A deep linear net with a far too large step size overflows within a few steps.
    base = base_run(DataSpec(n_train=32, n_test=16, input_dim=4), ModelSpec(kind=ModelKind.LINEAR, depth=3, width=8),
                    TrainSpec(steps=40))
    runs = make_runs(base, train__lr=[0.05, 50.0, 0.1])
    result = train_family(runs, CPU)
    assert result.diverged_step[0] == -1 and result.diverged_step[2] == -1
    assert 0 < result.diverged_step[1] <= 40
    assert not np.isfinite(result.train_loss[-1, 1])
    for f in (0, 2):
        np.testing.assert_allclose(result.train_loss[:, f], reference_curves(runs[f])["train_loss"], rtol=1e-6)
    # frozen: the diverged member's weights are the ones it had when it was frozen, not NaN-poisoned further
    assert all(torch.isfinite(w[0]).all() and torch.isfinite(w[2]).all() for w in result.params.weights)


def test_float32_family_trains():
    base = RunSpec(Experiment.TRAIN, DataSpec(n_train=64, n_test=64, input_dim=8), ModelSpec(depth=2, width=32),
                   TrainSpec(lr=0.1, steps=100))
    result = train_family(make_runs(base, seed=[0, 1]), CPU)
    assert (result.train_loss[-1] < 0.5 * result.train_loss[0]).all()


def test_default_init_is_pytorch_linear_init_times_scale():
    model = ModelSpec(depth=2, width=400, bias=True, init_scale=2.0)
    params = init_member(model, [100, 400, 1], seed=0)
    w, b = params.weights[0], params.biases[0]
    bound = 2.0 / 100 ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
    assert w.var().item() == pytest.approx(bound**2 / 3, rel=0.02)  # Var U(-a, a) = a^2 / 3
    assert b.abs().max() <= bound


def test_gaussian_init_std_and_zero_biases():
    model = ModelSpec(depth=2, width=500, bias=True, init=Init.GAUSSIAN, init_scale=0.5)
    params = init_member(model, [200, 500, 1], seed=1)
    assert params.weights[0].std().item() == pytest.approx(0.5 / 200 ** 0.5, rel=0.01)
    assert (params.biases[0] == 0).all()


def test_zero_init_scale_gives_zero_weights():  # allowed at depth 1
    params = init_member(ModelSpec(kind=ModelKind.LINEAR, depth=1, init_scale=0.0), [5, 1], seed=0)
    assert (params.weights[0] == 0).all()


# ---------------------------------------------------------------------------------------
# Inputs shared by the members
# ---------------------------------------------------------------------------------------

def shared_family():
    """Seeds and label noise over one data draw: every member sees the same inputs."""
    base = base_run(DataSpec(n_train=24, n_test=16, input_dim=5), ModelSpec(depth=3, width=7),
                    TrainSpec(lr=0.05, steps=12, log_every=4))
    return make_runs(base, seed=[0, 1, 2], data__label_noise=[0.0, 0.5])


def test_members_on_one_draw_keep_one_copy_of_the_inputs():
    from theoryscope.core.train import stack_data

    runs = shared_family()
    data = stack_data(runs, torch.float64, CPU)
    for x, n in ((data.x_train, 24), (data.x_test, 16)):
        assert x.shape == (6, n, 5) and x.stride(0) == 0
        assert x.untyped_storage().nbytes() <= (24 + 16) * 5 * 8  # at most the one draw, not six copies
    assert data.y_train.shape[0] == 6 and not torch.equal(data.y_train[0], data.y_train[1])  # labels: per member
    other = stack_data(make_runs(runs[0], data__seed=[0, 1]), torch.float64, CPU)
    assert other.x_train.stride(0) != 0  # two draws: stacked


@pytest.mark.parametrize("bias", [True, False])
def test_a_family_on_one_expanded_input_computes_what_it_computes_on_copies(bias):
    """Outputs and gradients of every layer on a stride-0 view of one input against the
    same input copied for every member."""
    from theoryscope.core import models

    g = torch.Generator().manual_seed(3)
    dims, f = [5, 7, 6, 3], 4
    weights = [torch.randn(f, o, i, generator=g, dtype=torch.float64, requires_grad=True)
               for i, o in zip(dims, dims[1:])]
    biases = [torch.randn(f, o, generator=g, dtype=torch.float64, requires_grad=True) for o in dims[1:]] if bias \
        else None
    x = torch.randn(1, 9, 5, generator=g, dtype=torch.float64)
    params = models.Params(weights, biases)
    shared = models.forward(params, x.expand(f, -1, -1), True)
    copied = models.forward(params, x.repeat(f, 1, 1), True)
    torch.testing.assert_close(shared, copied, rtol=1e-13, atol=1e-13)
    got = torch.autograd.grad(shared.square().sum(), params.tensors())
    want = torch.autograd.grad(copied.square().sum(), params.tensors())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_a_family_on_shared_inputs_trains_each_member_as_it_trains_alone():
    runs = shared_family()
    family = train_family(runs, CPU)
    for f, run in enumerate(runs):
        alone = train_family([run], CPU)
        np.testing.assert_allclose(family.train_loss[:, f], alone.train_loss[:, 0], rtol=1e-10)
        np.testing.assert_allclose(family.test_loss[:, f], alone.test_loss[:, 0], rtol=1e-10)


def test_a_family_evaluated_in_blocks_of_members_logs_what_it_logs_in_one(monkeypatch):
    """A huge family evaluates its training and test sets a block of members at a time
    (``EVAL_BYTES``); blocks of one or two members give the same curves."""
    from theoryscope.core import train as trainer

    runs = FAMILIES["sgd-momentum-mlp-classification-bias"]
    whole = train_family(runs, CPU)
    monkeypatch.setattr(trainer, "EVAL_BYTES", 1)
    blocks = train_family(runs, CPU)
    for name in ("train_loss", "test_loss", "train_error", "test_error"):
        np.testing.assert_allclose(getattr(blocks, name), getattr(whole, name), rtol=1e-12, atol=0)

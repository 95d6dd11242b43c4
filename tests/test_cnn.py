"""A stacked CNN family against each member run alone as plain ``torch.nn`` modules
(oracle tests, float64): outputs, gradients, init and the pooling switches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from theoryscope.core import cnn, counters, models
from theoryscope.core.config import Init

F64 = torch.float64
CPU = torch.device("cpu")
TOL = dict(rtol=1e-10, atol=1e-12)

# Non-square maps, so that a swapped height and width shows; pools 2 and 1 (none).
ARCHS = {
    "pooled": dict(in_shape=(2, 8, 12), depth=2, width=3, kernel=3, pool=2, n_outputs=4),
    "unpooled": dict(in_shape=(1, 5, 4), depth=2, width=2, kernel=3, pool=1, n_outputs=3),
}
SEEDS, SCALES = [3, 0, 11], [1.0, 2.0, 0.5]
INITS = [Init.DEFAULT, Init.GAUSSIAN, Init.DEFAULT]


def family(name: str, bias: bool) -> tuple[cnn.ConvArch, cnn.ConvParams]:
    arch = cnn.ConvArch(**ARCHS[name], bias=bias)
    return arch, cnn.init_family(arch, SEEDS, SCALES, INITS, F64, CPU)


def member_net(arch: cnn.ConvArch, params: cnn.ConvParams, f: int) -> nn.Sequential:
    """Member f as Conv2d -> ReLU -> MaxPool2d blocks, Flatten and Linear, with its weights."""
    layers = []
    for block, shape in enumerate(arch.shapes.blocks):
        conv = nn.Conv2d(shape.in_channels, shape.out_channels, arch.kernel, padding=arch.kernel // 2,
                         bias=arch.bias, dtype=F64)
        conv.weight.data.copy_(params.convs[block][f])
        if arch.bias:
            conv.bias.data.copy_(params.conv_biases[block][f])
        layers += [conv, nn.ReLU(), nn.MaxPool2d(arch.pool)]
    head = nn.Linear(arch.shapes.features, arch.n_outputs, bias=arch.bias, dtype=F64)
    head.weight.data.copy_(params.head[f])
    if arch.bias:
        head.bias.data.copy_(params.head_bias[f])
    return nn.Sequential(*layers, nn.Flatten(), head)


def images(arch: cnn.ConvArch, shared: str, n: int = 5) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The family's input (``shared``: "shared" [n, C, H, W], "expanded" a stride-0
    [F, n, C, H, W], "own" one set per member) and each member's images."""
    g = torch.Generator().manual_seed(7)
    f = len(SEEDS)
    if shared == "own":
        x = torch.randn(f, n, *arch.in_shape, generator=g, dtype=F64)
        return x, list(x)
    x = torch.randn(n, *arch.in_shape, generator=g, dtype=F64)
    return (x if shared == "shared" else x.expand(f, *x.shape)), [x] * f


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shared", ["shared", "expanded", "own"])
def test_a_family_computes_what_each_member_computes_alone(name, bias, shared):
    arch, params = family(name, bias)
    x, member_images = images(arch, shared)
    out = cnn.forward(params, x, arch.pool)
    assert out.shape == (len(SEEDS), 5, arch.n_outputs)
    for f, xf in enumerate(member_images):
        torch.testing.assert_close(out[f], member_net(arch, params, f)(xf), **TOL)


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shared", ["shared", "own"])
def test_each_member_gets_exactly_its_own_gradient(name, bias, shared):
    arch, params = family(name, bias)
    tensors = [t.requires_grad_() for t in params.tensors()]
    x, member_images = images(arch, shared)
    targets = torch.randn(len(SEEDS), 5, arch.n_outputs, generator=torch.Generator().manual_seed(1), dtype=F64)
    ((cnn.forward(params, x, arch.pool) - targets) ** 2).sum().backward()
    for f, xf in enumerate(member_images):
        net = member_net(arch, params, f)
        ((net(xf) - targets[f]) ** 2).sum().backward()
        convs = [m for m in net if isinstance(m, nn.Conv2d)]
        alone = [c.weight.grad for c in convs] + [net[-1].weight.grad]
        if bias:
            alone += [c.bias.grad for c in convs] + [net[-1].bias.grad]
        assert len(alone) == len(tensors)
        for stacked, own in zip(tensors, alone):
            torch.testing.assert_close(stacked.grad[f], own, **TOL)


@pytest.mark.parametrize("bias", [False, True])
def test_a_member_alone_draws_exactly_its_slice_of_any_family(bias):
    arch, params = family("pooled", bias)
    for f, (seed, scale, init) in enumerate(zip(SEEDS, SCALES, INITS)):
        alone = cnn.init_member(arch, seed, scale, init)
        stacked = params.tensors()
        assert len(alone.tensors()) == len(stacked)
        for own, slice_of_family in zip(alone.tensors(), stacked):
            torch.testing.assert_close(own, slice_of_family[f], **TOL)
    # Members differ, and a family of one other member draws the same again.
    assert not torch.allclose(params.convs[0][0], params.convs[0][2])
    other = cnn.init_family(arch, [SEEDS[2], 99], [SCALES[2], 1.0], [INITS[2], Init.DEFAULT], F64, CPU)
    torch.testing.assert_close(other.head[0], params.head[2], **TOL)


PURPOSES = [("init", "conv", 0, "weight"), ("init", "conv", 1, "weight"), ("init", "conv-head", "weight"),
            ("init", "conv", 0, "bias"), ("init", "conv", 1, "bias"), ("init", "conv-head", "bias")]


@pytest.mark.parametrize("init", [Init.DEFAULT, Init.GAUSSIAN])
def test_init_is_pytorchs_default_or_gaussian_from_the_named_counter_draws(init):
    # The documented rule, recomputed from core.counters: bound x U(-1, 1) ("default",
    # weights and biases) or bound x N(0, 1) ("gaussian", zero biases), with bound =
    # init_scale / sqrt(fan_in) and fan_in = C_in k^2 (convs) or the features (head).
    arch = cnn.ConvArch(in_shape=(3, 8, 8), depth=2, width=4, kernel=3, pool=2, n_outputs=5, bias=True)
    params = cnn.init_member(arch, 6, 2.0, init)
    fans = [3 * 9, 4 * 9, arch.shapes.features] * 2
    for tensor, purpose, fan in zip(params.tensors(), PURPOSES, fans):
        keys, count = counters.keys([6], *purpose), tensor.numel()
        if init is Init.GAUSSIAN:
            unit = counters.normal(keys, count) * (purpose[-1] == "weight")
        else:
            unit = counters.uniform(keys, count) * 2 - 1
        expected = torch.from_numpy(unit[0]).view(tensor.shape) * 2.0 / fan ** 0.5
        torch.testing.assert_close(tensor, expected, **TOL)
    if init is Init.DEFAULT:
        assert params.head.abs().max() <= 2.0 / arch.shapes.features ** 0.5


def test_conv_draws_are_not_the_mlps():
    # An MLP layer with the conv's fan_in draws U(-1/sqrt(fan_in), ...) too: if the
    # purposes collided, the numbers would be the same.
    arch = cnn.ConvArch(in_shape=(2, 4, 4), depth=1, width=3, kernel=3, pool=1, n_outputs=2)
    conv = cnn.init_member(arch, 5).convs[0].reshape(3, 18)
    mlp = models.init_family([models.ModelSpec()], [5], [18, 3], F64, CPU).weights[0][0]
    assert not torch.allclose(conv, mlp)
    names = {("init", 0, "weight"), ("init", "conv", 0, "weight"), ("init", "conv-head", "weight")}
    assert len({int(counters.keys([5], *name)[0]) for name in names}) == len(names)


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("shared", ["shared", "own"])
def test_the_trace_holds_every_blocks_maps_and_switches(name, shared):
    arch, params = family(name, True)
    x, member_images = images(arch, shared)
    traced = cnn.trace(params, x, arch.pool)
    torch.testing.assert_close(traced.outputs, cnn.forward(params, x, arch.pool), **TOL)
    assert len(traced.blocks) == arch.depth
    for f, xf in enumerate(member_images):
        h = xf
        for block, (shape, kept) in enumerate(zip(arch.shapes.blocks, traced.blocks)):
            net = member_net(arch, params, f)
            relu = net[3 * block + 1](net[3 * block](h))
            pooled, switches = nn.MaxPool2d(arch.pool, return_indices=True)(relu)
            assert kept.relu.shape == (len(SEEDS), len(xf), shape.out_channels, *shape.map)
            assert kept.pooled.shape == kept.switches.shape == (len(SEEDS), len(xf), shape.out_channels, *shape.pooled)
            torch.testing.assert_close(kept.relu[f], relu, **TOL)
            torch.testing.assert_close(kept.pooled[f], pooled, **TOL)
            assert torch.equal(kept.switches[f], switches)
            h = pooled
    if arch.pool == 1:
        rows, columns = arch.in_shape[1:]
        assert torch.equal(traced.blocks[0].switches[0, 0, 0], torch.arange(rows * columns).view(rows, columns))


def test_shapes_follow_same_padding_and_pooling():
    shapes = cnn.conv_shapes((3, 24, 16), depth=3, kernel=3, pool=2, width=5)
    assert [(b.in_channels, b.out_channels, b.map, b.pooled) for b in shapes.blocks] == [
        (3, 5, (24, 16), (12, 8)), (5, 5, (12, 8), (6, 4)), (5, 5, (6, 4), (3, 2))]
    assert shapes.features == 5 * 3 * 2
    assert cnn.conv_shapes((1, 5, 5), depth=2, kernel=5, pool=1, width=4).features == 4 * 25


@pytest.mark.parametrize("sizes, message", [
    (dict(in_shape=(1, 8, 8), depth=2, kernel=5, pool=2), "kernel_size: expected at most the 4x4 map block 2 convolves, got 5"),
    (dict(in_shape=(1, 6, 9), depth=1, kernel=3, pool=2), "pool: expected a divisor of the 6x9 map block 1 pools, got 2"),
    (dict(in_shape=(1, 8, 8), depth=3, kernel=1, pool=4), "pool: expected a divisor of the 2x2 map block 2 pools, got 4"),
    (dict(in_shape=(1, 8, 8), depth=1, kernel=4, pool=1), "kernel_size: expected an odd integer >= 1, got 4"),
    (dict(in_shape=(1, 8, 8), depth=0, kernel=3, pool=1), "depth: expected an integer >= 1, got 0"),
])
def test_impossible_shapes_are_refused_in_one_line(sizes, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        cnn.conv_shapes(**sizes, width=2)
    with pytest.raises(ValueError, match=f"^{message}$"):
        cnn.ConvArch(**sizes, width=2, n_outputs=1)


def test_images_of_the_wrong_shape_are_refused():
    arch, params = family("pooled", False)
    with pytest.raises(ValueError, match=r"images must be \[n, 2, H, W\] \(shared\) or \[3, n, 2, H, W\]"):
        cnn.forward(params, torch.zeros(2, 5, 2, 8, 12, dtype=F64), arch.pool)
    with pytest.raises(ValueError, match="got \\[5, 3, 8, 12\\]"):
        cnn.forward(params, torch.zeros(5, 3, 8, 12, dtype=F64), arch.pool)

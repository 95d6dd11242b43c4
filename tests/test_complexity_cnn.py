"""Complexity measures (Jiang et al. 2020) of CNN families: the conv layers' norms against
their explicit circular convolution matrices, the path norm against torch.nn modules on
squared weights, the Hessian against the full Hessian, a family against its members
alone, and a ``[measure] complexity`` sweep of digits CNNs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as nnf
from torch import nn
from torch.autograd.functional import hessian

from helpers import invoke
from theoryscope import weights
from theoryscope.core import cnn, models, nets
from theoryscope.core.config import REAL_DATA, Init
from theoryscope.core.data import make_dataset
from theoryscope.core.measures import complexity as cx
from theoryscope.core.train import StackedData, member_losses
from theoryscope.sweeps.measures.complexity import MARGINS, NORMS
from theoryscope.sweeps.tables import run_query
from theoryscope.sweeps.weights import init as init_of_run

D = torch.float64
CPU = torch.device("cpu")
# Two blocks on 8x8 maps of 2 channels: the second convolves 4x4 maps, the head reads 12 features.
ARCH = cnn.ConvArch((2, 8, 8), depth=2, width=3, kernel=3, pool=2, n_outputs=4, bias=True)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_params(seed: int, f: int = 3, arch: cnn.ConvArch = ARCH, scale: float = 1.0) -> cnn.ConvParams:
    """A family drawn as PyTorch's default init (biases included), times ``scale``."""
    return cnn.init_family(arch, [seed + 10 * i for i in range(f)], [scale] * f, [Init.DEFAULT] * f, D, CPU)


def make_data(seed: int, f: int = 3, n: int = 24, arch: cnn.ConvArch = ARCH, classification: bool = True
              ) -> StackedData:
    """Inputs shared by the members (a stride-0 view, as ``train.stack_data`` makes), labels
    from a random teacher CNN per member."""
    x = torch.randn(n, math.prod(arch.in_shape), generator=gen(seed + 1000), dtype=D).expand(f, -1, -1)
    out = cx.forward(make_params(seed + 2000, f, arch), x, arch)
    y = out.argmax(-1) if classification else out
    return StackedData(x, y, x, y, classification)


def member(params: cnn.ConvParams, f: int) -> cnn.ConvParams:
    return nets.members(params, slice(f, f + 1))


def member_data(data: StackedData, f: int) -> StackedData:
    s = slice(f, f + 1)
    return StackedData(data.x_train[s], data.y_train[s], data.x_test[s], data.y_test[s], data.classification)


# ---------------------------------------------------------------------------------------
# Norms against explicit matrices
# ---------------------------------------------------------------------------------------

def circular_matrix(kernel: torch.Tensor, n: int) -> torch.Tensor:
    """The ``[C_out n^2, C_in n^2]`` matrix of the conv (cross-correlation, as conv2d) with
    kernel ``[C_out, C_in, k, k]`` on n x n maps with circular padding: its columns are the
    images of the basis maps."""
    c_in, pad = kernel.shape[1], kernel.shape[-1] // 2
    basis = torch.eye(c_in * n * n, dtype=kernel.dtype).view(-1, c_in, n, n)
    return nnf.conv2d(nnf.pad(basis, (pad,) * 4, mode="circular"), kernel).reshape(c_in * n * n, -1).T


def explicit_matrices(params: cnn.ConvParams, f: int, maps: list[int]) -> list[torch.Tensor]:
    """Member f's layers as matrices: each conv's circular matrix on its map, then the head."""
    return [circular_matrix(w[f], n) for w, n in zip(params.convs, maps)] + [params.head[f]]


def top_singular_value(a: torch.Tensor) -> float:
    return torch.linalg.svdvals(a)[0].item()


def test_a_conv_layers_spectral_norm_is_the_top_singular_value_of_its_circular_matrix():
    params = make_params(0)
    maps = cx.conv_maps(ARCH)
    assert maps == [8, 4]
    got = cx.conv_layer_norms([*params.convs, params.head], maps)
    for f in range(3):
        for layer, a in enumerate(explicit_matrices(params, f, maps)):
            assert got["spectral"][f, layer].item() == pytest.approx(top_singular_value(a), rel=1e-10)
        for layer, w in enumerate([*params.convs, params.head]):
            assert got["frobenius"][f, layer].item() == pytest.approx(w[f].square().sum().sqrt().item(), rel=1e-12)


def test_cnn_norm_measures_are_the_formulas_on_the_explicit_matrices():
    """Spectral norms of the circular matrices, Frobenius norms of the kernels, Bartlett's
    (2,1) norm over the circular matrices' rows, every parameter counted."""
    params, init = make_params(1, scale=1.5), make_params(2)
    got = cx.norm_measures(params, init, ARCH)
    maps = cx.conv_maps(ARCH)
    kernels = lambda p, f: [w[f] for w in (*p.convs, p.head)]  # noqa: E731
    for f in range(3):
        mats, refs = explicit_matrices(params, f, maps), explicit_matrices(init, f, maps)
        spec = [top_singular_value(a) for a in mats]
        fro2 = [k.square().sum().item() for k in kernels(params, f)]
        gaps = [k - k0 for k, k0 in zip(kernels(params, f), kernels(init, f))]
        l21 = [(a - m).norm(dim=1).sum().item() for a, m in zip(mats, refs)]  # rows of A - M
        expect = {
            "log_prod_spec": sum(math.log(s**2) for s in spec),
            "log_prod_fro": sum(math.log(v) for v in fro2),
            "sum_fro_over_spec": sum(v / s**2 for v, s in zip(fro2, spec)),
            "param_norm": sum(fro2),
            "dist_fro": sum(g.square().sum().item() for g in gaps),
            "dist_spec": sum(top_singular_value(a - m) ** 2 for a, m in zip(mats, refs)),
            "spectral_complexity": math.prod(spec) * sum((v / s) ** (2 / 3) for v, s in zip(l21, spec)) ** 1.5,
            "params": sum(t[f].numel() for t in params.tensors()),
        }
        for name, value in expect.items():
            assert got[name][f].item() == pytest.approx(value, rel=1e-10), name
    assert set(got) == set(NORMS)


def torch_nn_net(params: cnn.ConvParams, arch: cnn.ConvArch, f: int, transform=lambda t: t) -> nn.Module:
    """Member f as torch.nn modules, every tensor through ``transform``."""
    layers: list[nn.Module] = []
    for i, w in enumerate(params.convs):
        conv = nn.Conv2d(w.shape[2], w.shape[1], w.shape[-1], padding=w.shape[-1] // 2, bias=arch.bias, dtype=D)
        with torch.no_grad():
            conv.weight.copy_(transform(w[f]))
            if arch.bias:
                conv.bias.copy_(transform(params.conv_biases[i][f]))
        layers += [conv, nn.ReLU(), nn.MaxPool2d(arch.pool)]
    head = nn.Linear(params.head.shape[2], params.head.shape[1], bias=arch.bias, dtype=D)
    with torch.no_grad():
        head.weight.copy_(transform(params.head[f]))
        if arch.bias:
            head.bias.copy_(transform(params.head_bias[f]))
    return nn.Sequential(*layers, nn.Flatten(), head)


@pytest.mark.parametrize("pool, bias", [(2, True), (2, False), (1, True)])
def test_path_norm_is_the_net_with_squared_parameters_on_ones(pool, bias):
    arch = cnn.ConvArch((2, 8, 8), depth=2, width=3, kernel=3, pool=pool, n_outputs=4, bias=bias)
    params = make_params(3, f=2, arch=arch)
    got = cx.path_norm(params, arch)
    for f in range(2):
        net = torch_nn_net(params, arch, f, transform=torch.square)
        expected = net(torch.ones(1, *arch.in_shape, dtype=D)).sum().item()
        assert got[f].item() == pytest.approx(expected, rel=1e-12)
        alone = cx.path_norm(member(params, f), arch)
        assert alone[0].item() == pytest.approx(expected, rel=1e-12)


def test_the_forward_pass_is_torch_nns_and_a_wrong_net_is_refused():
    params, data = make_params(4, f=2), make_data(4, f=2)
    out = cx.forward(params, data.x_train, ARCH)
    for f in range(2):
        expected = torch_nn_net(params, ARCH, f)(data.x_train[f].view(-1, *ARCH.in_shape))
        torch.testing.assert_close(out[f], expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="cnn.ConvArch"):
        cx.forward(params, data.x_train, True)
    mlp = models.Params([torch.ones(2, 3, 128, dtype=D)], None)
    with pytest.raises(TypeError, match="cnn.ConvArch"):
        cx.forward(mlp, data.x_train, ARCH)


# ---------------------------------------------------------------------------------------
# Curvature
# ---------------------------------------------------------------------------------------

def test_hessian_top_of_a_cnn_is_the_full_hessians_largest_eigenvalue():
    arch = cnn.ConvArch((1, 4, 4), depth=1, width=2, kernel=3, pool=2, n_outputs=3, bias=True)
    params, data = make_params(5, f=2, arch=arch, scale=2.0), make_data(5, f=2, n=10, arch=arch)
    got = cx.hessian_top(params, data, arch, generator=gen(7), iterations=150)
    for f in range(2):
        one, local = member(params, f), member_data(data, f)
        shapes = [t.shape for t in one.tensors()]
        flat = torch.cat([t.flatten() for t in one.tensors()])

        def loss(theta, one=one, local=local, shapes=shapes):
            parts = list(torch.split(theta, [math.prod(s) for s in shapes]))
            moved = nets.like(one, [p.view(s) for p, s in zip(parts, shapes)])
            return member_losses(cx.forward(moved, local.x_train, arch), local.y_train, True)[0].sum()

        eig = torch.linalg.eigvalsh(hessian(loss, flat))
        assert got[f].item() == pytest.approx(eig[-1].item(), rel=1e-3)


# ---------------------------------------------------------------------------------------
# Families
# ---------------------------------------------------------------------------------------

def all_measures(params, init, data, net, seed):
    out = dict(cx.norm_measures(params, init, net))
    if data.classification:
        out.update(cx.margin_measures(params, data.x_train, data.y_train, net, norms=out))
    out.update(cx.pacbayes(params, init, data, net, generator=gen(seed), draws=3, bisection_steps=6))
    out["sharpness"] = cx.sharpness(params, data, net, generator=gen(seed), steps=3)
    out["hessian_top"] = cx.hessian_top(params, data, net, generator=gen(seed), iterations=6)
    return out


@pytest.mark.parametrize("classification", [True, False])
def test_a_cnn_family_measures_what_its_members_measure_alone(classification):
    params, init = make_params(20, scale=2.0), make_params(21)
    data = make_data(20, classification=classification)
    if classification:  # labels the students fit, but for one sample each: positive margins
        y = cx.forward(params, data.x_train, ARCH).argmax(-1)
        y[:, 0] = (y[:, 0] + 1) % ARCH.n_outputs
        data = StackedData(data.x_train, y, data.x_test, y, True)
    family = all_measures(params, init, data, ARCH, seed=9)
    if classification:
        assert (family["margin"] > 0).all() and torch.isfinite(family["path_norm_over_margin"]).all()
    assert set(family) == set(NORMS) | (set(MARGINS) if classification else set()) | {
        "pacbayes_sigma", "pacbayes_bound", "pacbayes_flatness", "pacbayes_mag_sigma", "pacbayes_mag_bound",
        "pacbayes_mag_flatness", "sharpness", "hessian_top"}
    for f in range(3):
        alone = all_measures(member(params, f), member(init, f), member_data(data, f), ARCH, seed=9)
        for name, value in alone.items():
            torch.testing.assert_close(value[0], family[name][f], rtol=1e-7, atol=1e-10, equal_nan=True,
                                       msg=lambda m, name=name: f"{name}: {m}")


def test_a_diverged_cnn_member_gives_nan_and_leaves_the_others_alone():
    params, init, data = make_params(24), make_params(25), make_data(24, classification=False)
    clean = all_measures(params, init, data, ARCH, seed=3)
    params.convs[1][1, 0, 0, 1, 1] = math.nan
    broken = all_measures(params, init, data, ARCH, seed=3)
    for name in ("log_prod_spec", "dist_spec", "spectral_complexity", "path_norm", "pacbayes_sigma", "sharpness",
                 "hessian_top"):
        assert math.isnan(broken[name][1].item()), name
    for name, value in clean.items():
        torch.testing.assert_close(broken[name][[0, 2]], value[[0, 2]], rtol=1e-9, atol=1e-12, equal_nan=True,
                                   msg=lambda m, name=name: f"{name}: {m}")


# ---------------------------------------------------------------------------------------
# A sweep
# ---------------------------------------------------------------------------------------

SWEEP = """
name = "cnn-complexity"

[data]
kind = "digits"
n_train = 60
n_test = 40

[model]
kind = "cnn"
width = 3
bias = false

[train]
lr = 0.5
steps = 20
log_every = 10
dtype = "float64"

[grid]
depth = [2]
seed = [0, 1]

[measure]
complexity = { at = [0], margin_percentile = 90, perturbation = { draws = 2, bisection_steps = 3, sharpness_steps = 2, hessian_iterations = 4 } }

[store]
weights = true
"""


def test_a_cnn_complexity_sweep_writes_finite_norm_and_margin_rows_equal_to_the_core_functions(write_spec, results):
    spec = write_spec(SWEEP)
    done = invoke("launch", spec, "--results", results, "--backend", "local")
    assert done.exit_code == 0, done.output
    rows = run_query(results, "SELECT run_id, step, measure, value FROM complexity").to_pylist()
    got = {(r["run_id"], r["step"], r["measure"]): r["value"] for r in rows}
    run_ids = {r["run_id"] for r in rows}
    assert len(run_ids) == 2 and {r["step"] for r in rows} == {0, 20}
    for run_id in run_ids:
        for name in (*NORMS, *MARGINS):
            assert got[run_id, 20, name] is not None and math.isfinite(got[run_id, 20, name]), name
        assert got[run_id, 0, "dist_fro"] == 0.0
        for name in ("pacbayes_sigma", "sharpness", "hessian_top"):
            assert (run_id, 20, name) in got
        run = weights.run_spec(results, "cnn-complexity", run_id)
        one = lambda p: cnn.ConvParams([w[None] for w in p.convs], p.head[None], None, None)  # noqa: E731
        arch = nets.conv_arch(run.model, run.data)
        net, start = one(weights.load(results, "cnn-complexity", run_id)), one(init_of_run(run))
        data = make_dataset(run.data)
        norms = cx.norm_measures(net, start, arch)
        margins = cx.margin_measures(net, data.x_train[None], data.y_train[None], arch, percentile=90.0, norms=norms)
        for name, value in (norms | margins).items():
            assert got[run_id, 20, name] == pytest.approx(value.item(), rel=1e-9), name
    assert REAL_DATA[run.data.kind].image == (1, 8, 8)

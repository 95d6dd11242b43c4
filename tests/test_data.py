"""Synthetic data: determinism, the teacher held fixed, and the noise models of the papers."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from theoryscope.core.config import DataKind, DataSpec, LabelCorruption
from theoryscope.core.data import linear_teacher_variances, make_dataset


@pytest.mark.parametrize("kind", [k for k in DataKind if not k.reads_files])
def test_same_spec_same_data(kind):
    outputs = 3 if kind is DataKind.LINEAR_MODES else 1  # one per singular value
    spec = DataSpec(kind=kind, n_train=50, n_test=30, input_dim=5, label_noise=0.3, output_dim=outputs)
    a, b = make_dataset(spec), make_dataset(spec)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    c = make_dataset(dataclasses.replace(spec, seed=1))
    assert not torch.equal(a.x_train, c.x_train)


@pytest.mark.parametrize("kind", [k for k in DataKind if not k.reads_files and k is not DataKind.LINEAR_MODES])
def test_label_noise_leaves_inputs_and_test_inputs_alone(kind):
    """What ``DataSpec.input_draw`` (the plan's memory estimate of shared inputs) relies on."""
    specs = [DataSpec(kind=kind, n_train=40, n_test=20, input_dim=4, label_noise=noise) for noise in (0.0, 0.5)]
    if kind.is_classification:
        specs.append(dataclasses.replace(specs[1], label_corruption=LabelCorruption.UNIFORM))
    clean, *noisy = [make_dataset(s) for s in specs]
    for other in noisy:
        assert torch.equal(clean.x_train, other.x_train)
        assert torch.equal(clean.x_test, other.x_test)
        assert not torch.equal(clean.y_train, other.y_train)
    assert len({s.input_draw() for s in specs}) == 1
    assert dataclasses.replace(specs[0], seed=1).input_draw() != specs[0].input_draw()


def test_teacher_is_fixed_across_n_train():
    """The test set (inputs and clean teacher targets) does not depend on n_train."""
    small = make_dataset(DataSpec(n_train=10, n_test=20, input_dim=4))
    large = make_dataset(DataSpec(n_train=500, n_test=20, input_dim=4))
    assert torch.equal(small.y_test, large.y_test)


def test_teacher_student_noise_std_is_relative_to_the_clean_targets():
    clean = make_dataset(DataSpec(n_train=20000, n_test=10, input_dim=6))
    noisy = make_dataset(DataSpec(n_train=20000, n_test=10, input_dim=6, label_noise=0.5))
    ratio = (noisy.y_train - clean.y_train).std() / clean.y_train.std()
    assert ratio == pytest.approx(0.5, rel=0.03)
    assert torch.equal(clean.y_test, noisy.y_test)  # the test targets stay clean


@pytest.mark.parametrize("label_noise", [0.0, 0.5, 2.0])
def test_linear_teacher_matches_advani_saxe(label_noise):
    """x_i ~ N(0, 1/N); Var(y) = sigma_w^2 + sigma_eps^2 = 1; SNR = 1/label_noise^2."""
    n_in, p = 50, 40000
    data = make_dataset(DataSpec(kind=DataKind.LINEAR_TEACHER, n_train=p, n_test=p, input_dim=n_in,
                                 label_noise=label_noise))
    assert data.x_train.var().item() == pytest.approx(1 / n_in, rel=0.02)
    # Least squares recovers w-bar; the residual variance is sigma_eps^2.
    w = torch.linalg.lstsq(data.x_train, data.y_train).solution
    residual = (data.y_train - data.x_train @ w).var().item()
    var_w, var_eps = linear_teacher_variances(label_noise)
    assert var_w + var_eps == pytest.approx(1.0)
    assert residual == pytest.approx(var_eps, abs=0.02)
    assert (w ** 2).sum().item() / n_in == pytest.approx(var_w, rel=0.3)


def test_linear_teacher_snr():
    var_w, var_eps = linear_teacher_variances(0.5)
    assert var_w / var_eps == pytest.approx(1 / 0.5**2)


@pytest.mark.parametrize("noise,k", [(0.0, 2), (0.2, 3), (0.37, 10), (1.0, 4)])
def test_gaussian_mixture_flips_exactly_the_fraction_to_other_classes(noise, k):
    n = 1000
    clean = make_dataset(DataSpec(kind=DataKind.GAUSSIAN_MIXTURE, n_train=n, n_test=200, n_classes=k))
    noisy = make_dataset(DataSpec(kind=DataKind.GAUSSIAN_MIXTURE, n_train=n, n_test=200, n_classes=k,
                                  label_noise=noise))
    changed = clean.y_train != noisy.y_train
    assert int(changed.sum()) == math.floor(noise * n + 0.5)  # every flip lands on a different class
    assert torch.equal(changed, noisy.noisy)
    assert torch.equal(clean.y_test, noisy.y_test)  # the test set stays clean
    assert int(noisy.y_train.min()) >= 0 and int(noisy.y_train.max()) < k


def test_gaussian_mixture_class_separation():
    sep, d = 4.0, 64
    data = make_dataset(DataSpec(kind=DataKind.GAUSSIAN_MIXTURE, n_train=20000, n_test=10, input_dim=d,
                                 n_classes=2, class_sep=sep))
    x, y = data.x_train, data.y_train
    gap = (x[y == 0].mean(0) - x[y == 1].mean(0)).norm().item()
    within = (x[y == 0] - x[y == 0].mean(0)).std().item()
    assert within == pytest.approx(1.0, rel=0.02)
    assert gap == pytest.approx(sep, rel=0.35)  # one draw of the means; E gap^2 = sep^2


NESTED_SIZES = (7, 16, 203, 257, 1000)  # around torch's normals block of 16 and the row block of 256


def _assert_nested(make):
    """Every training set is the first rows of the largest, bit for bit; the test set
    does not depend on n_train."""
    largest = make(NESTED_SIZES[-1])
    for n in NESTED_SIZES[:-1]:
        data = make(n)
        for name in ("x_train", "y_train"):
            assert torch.equal(getattr(data, name), getattr(largest, name)[:n]), (name, n)
        for name in ("x_test", "y_test"):
            assert torch.equal(getattr(data, name), getattr(largest, name)), (name, n)


@pytest.mark.parametrize("kind", [k for k in DataKind if not k.reads_files and k is not DataKind.LINEAR_MODES])
def test_training_sets_are_nested_across_n_train(kind):
    """A larger training set extends a smaller one, inputs, targets and noise included
    (sample-wise double descent compares the same samples): bit for bit, though a matmul's
    rounding can depend on its row count (the targets are computed in fixed-shape row
    blocks). Classification sets are checked without label noise: the flipped labels are
    an exact fraction drawn for each n_train."""
    noise = 0.0 if kind.is_classification else 0.3
    outputs = 3 if kind is DataKind.TEACHER_STUDENT else 1
    _assert_nested(lambda n: make_dataset(DataSpec(kind=kind, n_train=n, n_test=300, input_dim=10,
                                                   output_dim=outputs, label_noise=noise)))


def test_table_training_sets_are_nested_across_n_train(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "table.csv"
    rows = rng.normal(size=(1400, 4))
    path.write_text("a,b,c,y\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in rows) + "\n")
    _assert_nested(lambda n: make_dataset(DataSpec(kind=DataKind.LP_REGRESSION, n_train=n, n_test=300,
                                                   path=str(path), target_column="y")))


def test_lp_regression_conditioning_and_noise():
    spec = DataSpec(kind=DataKind.LP_REGRESSION, n_train=40000, n_test=10, input_dim=5, condition=100.0)
    clean = make_dataset(spec)
    std = clean.x_train.std(dim=0)
    assert float(std.max() / std.min()) == pytest.approx(100.0, rel=0.03)
    assert torch.allclose(std, 100.0 ** -(torch.arange(5, dtype=std.dtype) / 4), rtol=0.03)
    noisy = make_dataset(dataclasses.replace(spec, label_noise=0.5))
    ratio = (noisy.y_train - clean.y_train).std() / clean.y_train.std()
    assert ratio == pytest.approx(0.5, rel=0.03)
    assert torch.equal(clean.y_test, noisy.y_test)


def test_linear_modes_are_whitened_with_the_given_singular_values():
    spec = DataSpec(kind=DataKind.LINEAR_MODES, n_train=40, n_test=10, input_dim=6, output_dim=4,
                    singular_values=(5.0, 2.0, 0.5))
    data = make_dataset(spec)
    n = 40
    assert torch.allclose(data.x_train.T @ data.x_train / n, torch.eye(6, dtype=data.x_train.dtype), atol=1e-12)
    sigma_yx = data.y_train.T @ data.x_train / n  # the input-output correlation of Saxe et al.
    values = torch.linalg.svdvals(sigma_yx)
    assert torch.allclose(values[:3], torch.tensor([5.0, 2.0, 0.5], dtype=values.dtype), atol=1e-12)
    assert float(values[3]) < 1e-12

"""Real data: the shipped digits, and MNIST/CIFAR readers on small files written here in
the same formats; label corruption on real labels."""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from theoryscope.core import datasets
from theoryscope.core.config import DataKind, DataSpec, Experiment, LabelCorruption, ModelSpec, RunSpec, TrainSpec
from theoryscope.core.data import make_dataset
from theoryscope.core.errors import SpecError
from theoryscope.sweeps.dispatch import LocalBackend
from theoryscope.sweeps.launch import launch, prepare
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.plan import plan_sweep


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.fixture
def fake_mnist(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (50, 28, 28)), rng.integers(0, 10, 50)
    test_images, test_labels = rng.integers(0, 256, (20, 28, 28)), rng.integers(0, 10, 20)
    for name, array, compress in (("train-images-idx3-ubyte", images, True), ("train-labels-idx1-ubyte", labels, False),
                                  ("t10k-images-idx3-ubyte", test_images, False), ("t10k-labels-idx1-ubyte", test_labels, True)):
        write_idx(tmp_path / name, array, compress)
    return tmp_path, images, labels, test_images, test_labels


def test_idx_files_read_back(fake_mnist):
    path, images, labels, test_images, test_labels = fake_mnist
    splits = datasets.load("mnist", str(path))
    np.testing.assert_array_equal(splits.x_train, images.reshape(50, -1))
    np.testing.assert_array_equal(splits.y_train, labels)
    np.testing.assert_array_equal(splits.x_test, test_images.reshape(20, -1))
    np.testing.assert_array_equal(splits.y_test, test_labels)


def test_mnist_runs_in_a_sweep(fake_mnist, tmp_path):
    path = fake_mnist[0]
    spec = parse_spec(f'name = "m"\n[data]\nkind = "fashion-mnist"\npath = "{path}"\nn_train = 40\nn_test = 20\n'
                      '[model]\nwidth = 8\n[train]\nsteps = 5\nlog_every = 5\n[grid]\nseed = [0, 1]')
    results = tmp_path / "results"
    summary = launch(prepare(spec, results), results, LocalBackend())
    assert summary.total("n_ok") == 2


def test_missing_files_name_what_is_expected(tmp_path):
    with pytest.raises(SpecError, match="t10k-labels-idx1-ubyte.*nothing is downloaded") as info:
        for name in datasets.IDX_FILES[:3]:
            (tmp_path / name).write_bytes(b"")
        plan_sweep(parse_spec(f'name = "m"\n[data]\nkind = "mnist"\npath = "{tmp_path}"'))
    assert "\n" not in str(info.value)
    with pytest.raises(SpecError, match="data_batch_1"):
        plan_sweep(parse_spec(f'name = "c"\n[data]\nkind = "cifar10"\npath = "{tmp_path / "none"}"'))


def write_cifar(directory, rng) -> list[np.ndarray]:
    directory.mkdir()
    batches = []
    for name in datasets.CIFAR_FILES:
        data = rng.integers(0, 256, (6, 3072)).astype(np.uint8)
        labels = rng.integers(0, 10, 6).tolist()
        (directory / name).write_bytes(pickle.dumps({b"batch_label": b"x", b"data": data, b"labels": labels}))
        batches.append((data, labels))
    return batches


def test_cifar_batches_read_back(tmp_path):
    batches = write_cifar(tmp_path / "cifar-10-batches-py", np.random.default_rng(1))
    splits = datasets.load("cifar10", str(tmp_path))
    np.testing.assert_array_equal(splits.x_train, np.concatenate([b[0] for b in batches[:5]]))
    np.testing.assert_array_equal(splits.y_test, batches[5][1])
    data = make_dataset(DataSpec(kind=DataKind.CIFAR10, path=str(tmp_path), n_train=30, n_test=6))
    assert data.x_train.shape == (30, 3072) and data.n_outputs == 10


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    (tmp_path / "evil").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": [1]}))
    with pytest.raises(SpecError, match="not a CIFAR-10 python batch.*refusing"):
        datasets.read_cifar_batch(tmp_path / "evil")


def test_digits_are_shipped_and_deterministic():
    a = make_dataset(DataSpec(kind=DataKind.DIGITS, n_train=1000, n_test=797))
    b = make_dataset(DataSpec(kind=DataKind.DIGITS, n_train=1000, n_test=797))
    assert a.x_train.shape == (1000, 64) and torch.equal(a.x_train, b.x_train)
    assert abs(a.x_train.mean().item()) < 0.05 and abs(a.x_train.std().item() - 1) < 0.05
    # train and test never share an image
    joined = torch.cat([a.x_train, a.x_test])
    assert torch.unique(joined, dim=0).shape[0] >= 1797 - 20  # a few digits images are duplicates in the source
    other = make_dataset(DataSpec(kind=DataKind.DIGITS, n_train=1000, n_test=797, seed=1))
    assert not torch.equal(a.x_test, other.x_test)


@pytest.mark.parametrize("noise", [0.1, 0.5, 1.0])
def test_label_corruption_on_digits_is_exact_and_deterministic(noise):
    clean = make_dataset(DataSpec(kind=DataKind.DIGITS, n_train=900, n_test=100))
    noisy = make_dataset(DataSpec(kind=DataKind.DIGITS, n_train=900, n_test=100, label_noise=noise))
    again = make_dataset(DataSpec(kind=DataKind.DIGITS, n_train=900, n_test=100, label_noise=noise))
    changed = clean.y_train != noisy.y_train
    assert int(changed.sum()) == round(noise * 900) and torch.equal(changed, noisy.noisy)
    assert torch.equal(noisy.y_train, again.y_train)
    assert torch.equal(clean.y_test, noisy.y_test) and torch.equal(clean.x_train, noisy.x_train)


def test_uniform_corruption_draws_every_class_alike_the_true_one_included():
    """Zhang et al. (2017): a corrupted label is a uniformly random class, right with
    probability 1/K; the other-class flips (Nakkiran et al. 2019) are never right."""
    n, k = 20000, 4
    spec = DataSpec(kind=DataKind.GAUSSIAN_MIXTURE, n_classes=k, n_train=n, n_test=10, input_dim=3, label_noise=1.0)
    clean = make_dataset(dataclasses.replace(spec, label_noise=0.0)).y_train
    uniform = make_dataset(dataclasses.replace(spec, label_corruption=LabelCorruption.UNIFORM))
    other = make_dataset(spec)
    assert not (other.y_train == clean).any()
    kept = (uniform.y_train == clean).double().mean().item()
    sigma = (1 / k * (1 - 1 / k) / n) ** 0.5
    assert abs(kept - 1 / k) < 5 * sigma
    # the corrupted labels are independent of the true ones: every (true, drawn) cell at 1/K^2
    cells = torch.bincount(clean * k + uniform.y_train, minlength=k * k).double() / n
    assert torch.allclose(cells, torch.full_like(cells, 1 / k**2), atol=5 * (1 / k**2 / n) ** 0.5)
    assert torch.equal(uniform.noisy, uniform.y_train != clean)


def test_uniform_corruption_of_a_fraction_leaves_the_others_and_the_test_set():
    spec = DataSpec(kind=DataKind.DIGITS, n_train=900, n_test=100, label_noise=0.3,
                    label_corruption=LabelCorruption.UNIFORM)
    clean, noisy = make_dataset(dataclasses.replace(spec, label_noise=0.0)), make_dataset(spec)
    changed = int((clean.y_train != noisy.y_train).sum())
    assert changed <= 270 and abs(changed - 270 * 0.9) < 5 * (270 * 0.9 * 0.1) ** 0.5
    assert torch.equal(clean.y_test, noisy.y_test) and torch.equal(clean.x_train, noisy.x_train)


def a_run(data: DataSpec) -> RunSpec:
    return RunSpec(Experiment.TRAIN, data, ModelSpec(), TrainSpec())


def test_label_corruption_is_part_of_a_run_only_where_labels_are_corrupted():
    """Other-class runs keep their ids (the default is left out); uniform ones get their
    own; without label noise, or on regression data, the choice cannot matter."""
    def run_id(kind: DataKind, noise: float, corruption: LabelCorruption) -> str:
        return a_run(DataSpec(kind=kind, n_train=500, n_test=500, label_noise=noise,
                              label_corruption=corruption)).run_id

    for kind, noise in ((DataKind.DIGITS, 0.0), (DataKind.TEACHER_STUDENT, 0.5)):
        assert run_id(kind, noise, LabelCorruption.UNIFORM) == run_id(kind, noise, LabelCorruption.OTHER_CLASS)
    assert run_id(DataKind.DIGITS, 0.5, LabelCorruption.UNIFORM) != run_id(DataKind.DIGITS, 0.5,
                                                                         LabelCorruption.OTHER_CLASS)
    default = a_run(DataSpec(kind=DataKind.DIGITS, n_train=500, n_test=500, label_noise=0.5))
    assert default.run_id == run_id(DataKind.DIGITS, 0.5, LabelCorruption.OTHER_CLASS)
    assert "label_corruption" not in default.to_config()["data"]

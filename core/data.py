"""Synthetic data sets of the theory papers, deterministic from their spec.

Everything is drawn on the CPU in float64 from named streams (``core.seeding``), so the
random draws are the same on any machine, device or dtype; the trainer casts the data
afterwards. Values computed from the draws with matmuls (teacher outputs, w·x) are the
same bit for bit on one machine and agree to float64 rounding across machines, whose BLAS
kernels round differently. Training sets are nested across n_train, bit for bit on one
machine, because those matmuls run on fixed-shape row blocks (``_in_row_blocks``); not
nested are linear-modes (a QR of the whole training set) and the labels that
``label_noise`` flips in a classification set (an exact fraction, drawn for each n_train).

* ``teacher-student``: x ~ N(0, I_d); y = W2 relu(W1 x) with W1 ~ N(0, 1/d),
  W2 ~ N(0, 1/teacher_width); training targets get Gaussian noise of std
  ``label_noise`` x the teacher's output std (estimated on 2^14 reference inputs, so it
  does not depend on n_train). The test targets are clean: test loss measures how well
  the student learned the teacher.
* ``linear-teacher`` (Advani & Saxe 2017): x_i ~ N(0, 1/N), y = w̄·x + ε with
  w̄ ~ N(0, σ_w² I), ε ~ N(0, σ_ε²), σ_w² + σ_ε² = 1 and ``label_noise`` = σ_ε/σ_w
  (SNR = σ_w²/σ_ε²). Test targets are noisy too, as in the paper's E_g.
* ``gaussian-mixture``: class c has mean μ_c ~ N(0, class_sep²/(2d) I), so that
  E||μ_a - μ_b||² = class_sep², and unit within-class covariance; labels are uniform.
  A fraction ``label_noise`` of training labels is corrupted, once: replaced by a uniformly
  random *different* class (``label_corruption = "other-class"``, Nakkiran et al. 2019) or
  by a uniformly random class (``"uniform"``, Zhang et al. 2017); the test set stays clean.
* ``digits``, ``mnist``, ``fashion-mnist``, ``cifar10``: seeded subsamples of real data
  (``core.datasets``), with the same label corruption.
* ``lp-regression`` (Arora, Cohen & Hazan 2018): x = D z with z ~ N(0, I_d) and feature
  scales D_jj = condition^{-j/(d-1)} (largest / smallest = condition); y = w*·x + noise,
  w* ~ N(0, I_d), noise Gaussian of std ``label_noise`` x the clean targets' std (exact:
  ||D w*||); the test targets are clean.
* ``linear-modes`` (Saxe, McClelland & Ganguli 2014): whitened training inputs
  (X^T X / n = I exactly: sqrt(n) times an orthonormal basis), targets y = W_t x with
  W_t = U diag(s) V^T, U and V random orthonormal columns and s = ``singular_values``, so
  the input-output correlation is W_t itself; test inputs N(0, I), noise-free.
* ``lp-regression`` with ``data.path``: the rows of a CSV or Parquet table
  (``core.datasets.table``), standardised, split by a permutation from the data seed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from theoryscope.core import datasets
from theoryscope.core.config import REAL_DATA, DataKind, DataSpec, LabelCorruption
from theoryscope.core.datasets.table import check_table_rows, read_table
from theoryscope.core.seeding import generator

F64 = torch.float64
REFERENCE_SAMPLES = 2**14


@dataclass(frozen=True)
class Dataset:
    """Train and test tensors on the CPU, float64 inputs.

    Regression: ``y_*`` float64 ``[n, outputs]``. Classification: int64 ``[n]``.
    ``noisy`` marks training samples whose label the label noise changed (classification).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classification: bool
    n_outputs: int
    noisy: torch.Tensor | None = None


def make_dataset(spec: DataSpec) -> Dataset:
    builders = {
        DataKind.TEACHER_STUDENT: _teacher_student,
        DataKind.LINEAR_TEACHER: _linear_teacher,
        DataKind.GAUSSIAN_MIXTURE: _gaussian_mixture,
        DataKind.LP_REGRESSION: _lp_regression,
        DataKind.LINEAR_MODES: _linear_modes,
    }
    return builders.get(spec.kind, _real)(spec)


@functools.lru_cache(maxsize=4096)
def _randn(rows: int, *shape: int, stream: torch.Generator) -> torch.Tensor:
    """``rows`` standard normal rows, the first rows of any longer draw from the same
    stream: torch draws normals in blocks of 16 and redraws a partial last block, so we
    draw whole blocks and slice. Training sets are thus nested across n_train."""
    padded = max(16, -(-rows // 16) * 16)
    return torch.randn(padded, *shape, generator=stream, dtype=F64)[:rows]


ROW_BLOCK = 256  # rows per matmul block: few Python calls per set, little padding for tiny sets


def _in_row_blocks(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``f(x)`` for a row-wise ``f``, applied to zero-padded blocks of exactly
    ``ROW_BLOCK`` rows.

    A matmul's rounding depends on the row count on some CPUs (the BLAS picks its kernel
    by shape: on an AMD EPYC, row 3 of a 7-row product differs by an ulp from row 3 of a
    203-row one). With every block of the same shape, a row's value depends only on the
    row and its place in its block, never on n: training sets stay nested bit for bit."""
    n = x.shape[0]
    padded = max(1, -(-n // ROW_BLOCK)) * ROW_BLOCK
    x = torch.cat([x, x.new_zeros(padded - n, *x.shape[1:])])
    return torch.cat([f(block) for block in x.split(ROW_BLOCK)])[:n]


def _teacher_student(s: DataSpec) -> Dataset:
    g = generator(s.seed, "teacher-student", "teacher")
    w1 = _randn(s.teacher_width, s.input_dim, stream=g) / math.sqrt(s.input_dim)
    w2 = _randn(s.output_dim, s.teacher_width, stream=g) / math.sqrt(s.teacher_width)

    def teacher(x: torch.Tensor) -> torch.Tensor:
        return _in_row_blocks(lambda rows: torch.relu(rows @ w1.T) @ w2.T, x)

    x_ref = _randn(REFERENCE_SAMPLES, s.input_dim, stream=generator(s.seed, "teacher-student", "reference"))
    target_std = teacher(x_ref).std(dim=0)
    x_train = _randn(s.n_train, s.input_dim, stream=generator(s.seed, "teacher-student", "train-inputs"))
    x_test = _randn(s.n_test, s.input_dim, stream=generator(s.seed, "teacher-student", "test-inputs"))
    noise = _randn(s.n_train, s.output_dim, stream=generator(s.seed, "teacher-student", "train-noise"))
    y_train = teacher(x_train) + s.label_noise * target_std * noise
    return Dataset(x_train, y_train, x_test, teacher(x_test), False, s.output_dim)


def linear_teacher_variances(label_noise: float) -> tuple[float, float]:
    """(σ_w², σ_ε²) with σ_w² + σ_ε² = 1 and σ_ε/σ_w = label_noise."""
    var_w = 1.0 / (1.0 + label_noise**2)
    return var_w, 1.0 - var_w


def _linear_teacher(s: DataSpec) -> Dataset:
    var_w, var_eps = linear_teacher_variances(s.label_noise)
    n = s.input_dim
    w_bar = _randn(n, 1, stream=generator(s.seed, "linear-teacher", "teacher")) * math.sqrt(var_w)

    def sample(count: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = _randn(count, n, stream=generator(s.seed, "linear-teacher", split, "inputs")) / math.sqrt(n)
        eps = _randn(count, 1, stream=generator(s.seed, "linear-teacher", split, "noise"))
        return x, _in_row_blocks(lambda rows: rows @ w_bar, x) + math.sqrt(var_eps) * eps

    x_train, y_train = sample(s.n_train, "train")
    x_test, y_test = sample(s.n_test, "test")
    return Dataset(x_train, y_train, x_test, y_test, False, 1)


def _lp_regression(s: DataSpec) -> Dataset:
    if s.from_table:
        return _lp_table(s)
    d = s.input_dim
    scales = s.condition ** -(torch.arange(d, dtype=F64) / max(d - 1, 1))
    w_star = _randn(d, 1, stream=generator(s.seed, "lp-regression", "teacher"))
    noise_std = s.label_noise * float((scales.unsqueeze(1) * w_star).norm())

    def inputs(count: int, split: str) -> torch.Tensor:
        return _randn(count, d, stream=generator(s.seed, "lp-regression", split, "inputs")) * scales

    x_train, x_test = inputs(s.n_train, "train"), inputs(s.n_test, "test")
    noise = _randn(s.n_train, 1, stream=generator(s.seed, "lp-regression", "train", "noise"))

    def clean(x: torch.Tensor) -> torch.Tensor:
        return _in_row_blocks(lambda rows: rows @ w_star, x)

    return Dataset(x_train, clean(x_train) + noise_std * noise, x_test, clean(x_test), False, 1)


def _lp_table(s: DataSpec) -> Dataset:
    """Rows of the table at ``data.path``: a permutation from the data seed puts the first
    ``n_test`` in the test set and the next ``n_train`` in the training set."""
    table = read_table(s.path, s.target_column)
    check_table_rows(s, table)
    order = torch.randperm(len(table.y), generator=generator(s.seed, "lp-table", "split")).numpy()
    test, train = order[:s.n_test], order[s.n_test:s.n_test + s.n_train]
    x, y = torch.from_numpy(table.x), torch.from_numpy(table.y).unsqueeze(1)
    return Dataset(x[train], y[train], x[test], y[test], False, 1)


def linear_modes_target(s: DataSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U [o, k], strengths [k], V [d, k]) of the linear-modes target map W_t = U diag(s) V^T."""
    k = len(s.singular_values)
    u, _ = torch.linalg.qr(_randn(s.output_dim, k, stream=generator(s.seed, "linear-modes", "left")))
    v, _ = torch.linalg.qr(_randn(s.input_dim, k, stream=generator(s.seed, "linear-modes", "right")))
    return u, torch.tensor(s.singular_values, dtype=F64), v


def _linear_modes(s: DataSpec) -> Dataset:
    u, strengths, v = linear_modes_target(s)
    target = u @ torch.diag(strengths) @ v.T
    basis, _ = torch.linalg.qr(_randn(s.n_train, s.input_dim, stream=generator(s.seed, "linear-modes", "train")))
    x_train = math.sqrt(s.n_train) * basis
    x_test = _randn(s.n_test, s.input_dim, stream=generator(s.seed, "linear-modes", "test"))
    return Dataset(x_train, x_train @ target.T, x_test, x_test @ target.T, False, s.output_dim)


def _gaussian_mixture(s: DataSpec) -> Dataset:
    k, d = s.n_classes, s.input_dim
    means = _randn(k, d, stream=generator(s.seed, "gaussian-mixture", "means"))
    means *= s.class_sep / math.sqrt(2 * d)

    def sample(count: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(k, (count,), generator=generator(s.seed, "gaussian-mixture", split, "labels"))
        x = means[labels] + _randn(count, d, stream=generator(s.seed, "gaussian-mixture", split, "inputs"))
        return x, labels

    x_train, clean = sample(s.n_train, "train")
    x_test, y_test = sample(s.n_test, "test")
    y_train, noisy = corrupt_labels(clean, k, s, "gaussian-mixture")
    return Dataset(x_train, y_train, x_test, y_test, True, k, noisy)


def corrupt_labels(clean: torch.Tensor, k: int, s: DataSpec, name: str):
    """Corrupt round(label_noise x n) training labels, chosen at random once per data seed.

    ``other-class`` (Nakkiran et al. 2019): each becomes a uniformly random *different*
    class, so label_noise = 1 makes every label wrong (anti-correlated with the truth).
    ``uniform`` (Zhang et al. 2017, "partially corrupted labels"): each becomes a uniformly
    random class, the true one with probability 1/k, so label_noise = 1 gives labels
    independent of the inputs. Returns the labels and the mask of changed ones (under
    ``uniform`` a corrupted label that drew its own class is not changed)."""
    n = clean.shape[0]
    order = torch.randperm(n, generator=generator(s.seed, name, "flip-order"))
    corrupted = torch.zeros(n, dtype=torch.bool)
    corrupted[order[:math.floor(s.label_noise * n + 0.5)]] = True
    if s.label_corruption is LabelCorruption.UNIFORM:
        drawn = torch.randint(0, k, (n,), generator=generator(s.seed, name, "uniform-labels"))
    else:
        drawn = (clean + torch.randint(1, k, (n,), generator=generator(s.seed, name, "flip-offset"))) % k
    labels = torch.where(corrupted, drawn, clean)
    return labels, labels != clean


def _real(s: DataSpec) -> Dataset:
    """A subsample of a real data set: pixels scaled to [0, 1], then centred and scaled by
    the mean and standard deviation of all pixels of the official training split."""
    splits = datasets.load(s.kind.value, s.path)
    name = s.kind.value
    if s.kind is DataKind.DIGITS:  # one set: a seeded split into test and train parts
        order = torch.randperm(len(splits.y_train), generator=generator(s.seed, name, "split"))
        test_idx, train_idx = order[:s.n_test], order[s.n_test:s.n_test + s.n_train]
    else:
        train_idx = torch.randperm(len(splits.y_train), generator=generator(s.seed, name, "train-order"))[:s.n_train]
        test_idx = torch.randperm(len(splits.y_test), generator=generator(s.seed, name, "test-order"))[:s.n_test]
    mean, std = _pixel_stats(s.kind.value, s.path)

    def features(x: np.ndarray, idx: torch.Tensor) -> torch.Tensor:
        return (torch.from_numpy(x[idx.numpy()]).to(F64) / splits.scale - mean) / std

    classes = REAL_DATA[s.kind].classes
    clean = torch.from_numpy(splits.y_train[train_idx.numpy()])
    y_train, noisy = corrupt_labels(clean, classes, s, name)
    return Dataset(features(splits.x_train, train_idx), y_train, features(splits.x_test, test_idx),
                   torch.from_numpy(splits.y_test[test_idx.numpy()]), True, classes, noisy)


@functools.lru_cache(maxsize=4)
def _pixel_stats(kind: str, path: str) -> tuple[float, float]:
    splits = datasets.load(kind, path)
    scaled = splits.x_train / splits.scale
    return float(scaled.mean()), float(scaled.std())

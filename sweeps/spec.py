"""The sweep spec: frozen, typed dataclasses, validated when built.

A spec has one section per concern (``data``, ``model``, ``train``, ``measure``,
``resources``) plus a ``grid`` of values to sweep. Every field has a default, documented
by the comment above it (README's spec reference repeats them). Values are checked in
``__post_init__`` and reported as ``FieldError``; the loader (``sweeps.load``) turns
those into one-line ``SpecError`` messages that carry the file and the key path.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np


class FieldError(ValueError):
    """A field value out of range; ``field`` is relative to its section."""

    def __init__(self, field_name: str, expected: str, got: Any):
        super().__init__(f"{field_name}: expected {expected}, got {got!r}")
        self.field_name = field_name
        self.expected = expected
        self.got = got


class Choice(str, enum.Enum):
    """A string enum whose values are what users write in the spec."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def allowed(cls) -> str:
        return " | ".join(f'"{m.value}"' for m in cls)


class Experiment(Choice):
    TRAIN = "train"
    ACCELERATION = "acceleration"
    LINEAR_DYNAMICS = "linear-dynamics"


class DataKind(Choice):
    TEACHER_STUDENT = "teacher-student"
    LINEAR_TEACHER = "linear-teacher"
    GAUSSIAN_MIXTURE = "gaussian-mixture"
    DIGITS = "digits"
    MNIST = "mnist"
    FASHION_MNIST = "fashion-mnist"
    CIFAR10 = "cifar10"
    LP_REGRESSION = "lp-regression"
    LINEAR_MODES = "linear-modes"

    @property
    def is_classification(self) -> bool:
        return self not in (DataKind.TEACHER_STUDENT, DataKind.LINEAR_TEACHER, DataKind.LP_REGRESSION,
                            DataKind.LINEAR_MODES)

    @property
    def is_real(self) -> bool:
        return self in REAL_DATA

    @property
    def reads_files(self) -> bool:
        return self in (DataKind.MNIST, DataKind.FASHION_MNIST, DataKind.CIFAR10)


class RealData(NamedTuple):
    inputs: int
    classes: int
    train: int  # samples of the official training split (digits: of the whole set)
    test: int


REAL_DATA = {
    DataKind.DIGITS: RealData(64, 10, 1797, 1797),
    DataKind.MNIST: RealData(784, 10, 60000, 10000),
    DataKind.FASHION_MNIST: RealData(784, 10, 60000, 10000),
    DataKind.CIFAR10: RealData(3072, 10, 50000, 10000),
}


class Objective(Choice):
    MEAN = "mean"
    HALF_SUM = "half-sum"


class ModelKind(Choice):
    MLP = "mlp"
    LINEAR = "linear"


class Activation(Choice):
    RELU = "relu"


class Overparam(Choice):
    FULL = "full"
    SCALAR = "scalar"


class Init(Choice):
    DEFAULT = "default"
    GAUSSIAN = "gaussian"
    BALANCED = "balanced"
    IDENTITY = "identity"
    DECOUPLED = "decoupled"


class Optimizer(Choice):
    GD = "gd"
    SGD = "sgd"
    ADAM = "adam"


class DType(Choice):
    FLOAT32 = "float32"
    FLOAT64 = "float64"


class MatmulPrecision(Choice):
    HIGHEST = "highest"  # float32 products as float32
    TF32 = "tf32"        # CUDA: TensorFloat-32 tensor cores (10-bit mantissa inputs); CPU: unchanged
    BF16 = "bf16"        # autocast to bfloat16 (8-bit mantissa) for the matmuls, on CUDA and CPU


def _require(ok: bool, name: str, expected: str, got: Any) -> None:
    if not ok:
        raise FieldError(name, expected, got)


@dataclass(frozen=True)
class DataSpec:
    """What the nets learn from. Deterministic given these fields."""

    # Generator of inputs and targets: "teacher-student" (regression on a fixed random
    # 2-layer ReLU teacher), "linear-teacher" (Advani & Saxe 2017) or "gaussian-mixture"
    # (k-class classification).
    kind: DataKind = DataKind.TEACHER_STUDENT
    # Training samples (P in Advani & Saxe).
    n_train: int = 1024
    # Held-out samples, drawn from their own stream so they do not change with n_train.
    n_test: int = 1024
    # Input dimension (N in Advani & Saxe).
    input_dim: int = 32
    # Regression targets per sample (teacher-student); linear-teacher needs 1.
    output_dim: int = 1
    # Hidden width of the teacher-student teacher.
    teacher_width: int = 32
    # Classes of gaussian-mixture.
    n_classes: int = 2
    # gaussian-mixture: expected distance between two class means, in units of the
    # within-class standard deviation (which is 1).
    class_sep: float = 3.0
    # teacher-student: noise std as a multiple of the clean targets' std.
    # linear-teacher: sigma_eps / sigma_w (SNR = 1 / label_noise^2).
    # gaussian-mixture: fraction of training labels replaced by another class.
    label_noise: float = 0.0
    # Seed of the data (teacher, inputs, noise); separate from the run's seed, so the
    # teacher is fixed across a sweep unless this is swept.
    seed: int = 0
    # Directory of the files of "mnist", "fashion-mnist" (IDX files) or "cifar10" (the
    # python pickle batches); nothing is downloaded.
    path: str = field(default="", metadata={"omit_default": True})
    # lp-regression read from a table file at `path` (.csv or .parquet): the target column;
    # the other numeric columns are the features.
    target_column: str = field(default="", metadata={"omit_default": True})
    # lp-regression: the loss is (1/n) sum |x^T w - y|^p / p (Arora, Cohen & Hazan 2018).
    p: int = field(default=2, metadata={"omit_default": True})
    # lp-regression: ratio of the largest to the smallest input feature scale.
    condition: float = field(default=1.0, metadata={"omit_default": True})
    # linear-modes: singular values of the target map (Saxe et al. 2014's mode strengths s).
    singular_values: tuple[float, ...] = field(default=(3.0, 2.0, 1.0), metadata={"omit_default": True})

    def __post_init__(self) -> None:
        _require(self.n_train >= 1, "n_train", "an integer >= 1", self.n_train)
        _require(self.p >= 2, "p", "an integer >= 2", self.p)
        _require(_finite(self.condition) and self.condition >= 1, "condition", "a number >= 1", self.condition)
        _require(len(self.singular_values) >= 1 and all(_finite(v) and v > 0 for v in self.singular_values),
                 "singular_values", "a non-empty list of numbers > 0", list(self.singular_values))
        if self.kind is DataKind.LINEAR_MODES:
            modes = len(self.singular_values)
            _require(self.input_dim >= modes, "input_dim", f"at least the {modes} singular values", self.input_dim)
            _require(self.output_dim >= modes, "output_dim", f"at least the {modes} singular values",
                     self.output_dim)
            _require(self.n_train >= self.input_dim, "n_train", f"at least input_dim = {self.input_dim} "
                     "(the inputs are whitened exactly)", self.n_train)
        _require(self.n_test >= 1, "n_test", "an integer >= 1", self.n_test)
        _require(self.input_dim >= 1, "input_dim", "an integer >= 1", self.input_dim)
        _require(self.output_dim >= 1, "output_dim", "an integer >= 1", self.output_dim)
        _require(self.teacher_width >= 1, "teacher_width", "an integer >= 1", self.teacher_width)
        _require(self.n_classes >= 2, "n_classes", "an integer >= 2", self.n_classes)
        _require(_finite(self.class_sep) and self.class_sep >= 0, "class_sep",
                 "a finite number >= 0", self.class_sep)
        _require(_finite(self.label_noise) and self.label_noise >= 0, "label_noise",
                 "a finite number >= 0", self.label_noise)
        if self.kind.is_classification:
            _require(self.label_noise <= 1, "label_noise",
                     f"a fraction in [0, 1] for {self.kind.value}", self.label_noise)
        if self.kind.is_real:
            real = REAL_DATA[self.kind]
            if self.kind is DataKind.DIGITS:
                _require(self.n_train + self.n_test <= real.train, "n_train",
                         f"n_train + n_test <= {real.train} (the digits set) with n_test = {self.n_test}",
                         self.n_train)
            else:
                _require(self.n_train <= real.train, "n_train", f"at most {real.train}", self.n_train)
                _require(self.n_test <= real.test, "n_test", f"at most {real.test}", self.n_test)
        if self.kind.reads_files:
            _require(bool(self.path), "path", f"the directory holding the {self.kind.value} files", self.path)
        if self.kind is DataKind.LP_REGRESSION and self.path:
            _require(bool(self.target_column), "target_column", "the name of the target column of data.path",
                     self.target_column)
        if self.kind in (DataKind.LINEAR_TEACHER, DataKind.LP_REGRESSION):
            _require(self.output_dim == 1, "output_dim", f"1 for {self.kind.value}", self.output_dim)
        _require(self.seed >= 0, "seed", "an integer >= 0", self.seed)

    @property
    def from_table(self) -> bool:
        """lp-regression read from a table file rather than drawn."""
        return self.kind is DataKind.LP_REGRESSION and bool(self.path)

    @property
    def n_inputs(self) -> int:
        """Width of the student's input."""
        if self.from_table:
            from core.datasets.table import read_table  # reads the file (cached) for its width
            return len(read_table(self.path, self.target_column).features)
        return REAL_DATA[self.kind].inputs if self.kind.is_real else self.input_dim

    @property
    def n_outputs(self) -> int:
        """Width of the student's last layer."""
        if self.kind.is_real:
            return REAL_DATA[self.kind].classes
        return self.n_classes if self.kind.is_classification else self.output_dim


@dataclass(frozen=True)
class ModelSpec:
    """The student."""

    # "mlp" (ReLU between layers, none after the last) or "linear" (a deep linear net).
    kind: ModelKind = ModelKind.MLP
    # Number of weight matrices, as in the theory papers: depth 1 is a linear model,
    # depth L has L - 1 hidden layers of `width` units.
    depth: int = 2
    # Units per hidden layer (unused at depth 1).
    width: int = 64
    # Nonlinearity of "mlp"; the cushion definitions of Arora et al. assume ReLU.
    activation: Activation = Activation.RELU
    # Bias vectors; off by default, as in the theory papers.
    bias: bool = False
    # "default": PyTorch's nn.Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights
    # and biases, times init_scale. "gaussian": weights N(0, (init_scale/sqrt(fan_in))^2),
    # biases zero. Experiments "acceleration" and "linear-dynamics": the end-to-end map
    # starts at W0 = init_scale G / sqrt(d), G ~ N(0, I) from the run's seed, the same at
    # every depth; "balanced" factors it into balanced factors, "identity" into W0 and
    # identities; "decoupled" (linear-modes data) starts from W0 = init_scale U V^T on the
    # target's singular vectors, in balanced factors.
    init: Init = Init.DEFAULT
    # Multiplies the init. 0 gives zero init, allowed at depth 1 only (a deeper net,
    # linear or not, would sit on a saddle where every gradient vanishes).
    init_scale: float = 1.0
    # Experiment "acceleration": depth-N overparameterization of the linear model by a
    # product of N matrices of hidden width `width` ("full") or by a vector times N - 1
    # scalars, w = w_1 w_2 ... w_N ("scalar", hidden width 1).
    overparam: Overparam = field(default=Overparam.FULL, metadata={"omit_default": True})
    # Experiment "linear-dynamics": W_1 is multiplied and W_N divided by 1 + imbalance
    # after the init, which keeps the end-to-end matrix and breaks balancedness.
    imbalance: float = field(default=0.0, metadata={"omit_default": True})

    def __post_init__(self) -> None:
        _require(self.depth >= 1, "depth", "an integer >= 1", self.depth)
        _require(self.width >= 1, "width", "an integer >= 1", self.width)
        _require(_finite(self.imbalance) and self.imbalance > -1, "imbalance", "a number > -1", self.imbalance)
        _require(_finite(self.init_scale) and self.init_scale >= 0, "init_scale",
                 "a finite number >= 0", self.init_scale)
        if self.depth >= 2:
            _require(self.init_scale > 0, "init_scale",
                     "a number > 0 at depth >= 2 (zero init is a saddle where every gradient vanishes)",
                     self.init_scale)

    def layer_dims(self, n_inputs: int, n_outputs: int) -> list[int]:
        """[d_0, ..., d_L]: layer i maps d_{i-1} -> d_i."""
        return [n_inputs] + [self.hidden_width] * (self.depth - 1) + [n_outputs]

    @property
    def hidden_width(self) -> int:
        return 1 if self.overparam is Overparam.SCALAR else self.width


@dataclass(frozen=True)
class TrainSpec:
    """How every member is trained."""

    # "gd" (full-batch gradient descent), "sgd" (minibatch SGD with optional momentum)
    # or "adam".
    optimizer: Optimizer = Optimizer.GD
    # Step size; may differ between members of one family.
    lr: float = 0.05
    # Optimizer steps.
    steps: int = 1000
    # Samples per step; 0 = full batch. "gd" is always full batch.
    batch_size: int = 0
    # Heavy-ball momentum of "sgd" (PyTorch's convention: buf = m * buf + grad).
    momentum: float = 0.0
    # L2 penalty added to the gradient (PyTorch's weight_decay), for every optimizer.
    weight_decay: float = 0.0
    # Adam's moment decay rates and denominator guard.
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    # A curve point every this many steps, plus step 0 and the last step.
    log_every: int = 20
    # Floating-point type of data, weights and optimizer state.
    dtype: DType = DType.FLOAT32
    # Regression objective: "mean" (the mean squared error that is reported) or
    # "half-sum", (1/2) sum over the batch of squared errors, Advani & Saxe's convention
    # under which gradient-flow time is t = lr x step.
    objective: Objective = field(default=Objective.MEAN, metadata={"omit_default": True})
    # Experiment "train", dtype float32: matmuls at "highest" precision, or faster and
    # rougher as "tf32" or "bf16" (mainly for GPUs). Off by default; when on, each run's
    # relative difference from the exact float32 training loss, at the first and last
    # step, is in runs.precision_error.
    matmul_precision: MatmulPrecision = field(default=MatmulPrecision.HIGHEST, metadata={"omit_default": True})
    # Save the family's training state every this many steps (0 = every 2 minutes of
    # training), so a retried or resumed family continues instead of restarting. It does
    # not change results, so it is not part of the run id and cannot be swept.
    checkpoint_every: int = field(default=0, metadata={"hashed": False})
    # Experiment "acceleration": the learning rates tried, each one more member of the
    # family; the fastest stable one is reported. A list, or a count of log-spaced values
    # over lr_range. Empty: `lr` alone.
    lr_grid: int | tuple[float, ...] = field(default=(), metadata={"omit_default": True})
    lr_range: tuple[float, ...] = field(default=(1e-4, 1.0), metadata={"omit_default": True})
    # Experiment "acceleration": the target is reached at the first step with
    # L - L* <= target x (L_0 - L*), L* the optimum of the depth-1 problem.
    target: float = field(default=1e-3, metadata={"omit_default": True})

    def __post_init__(self) -> None:
        _require(_finite(self.lr) and self.lr > 0, "lr", "a finite number > 0", self.lr)
        if isinstance(self.lr_grid, int):
            _require(self.lr_grid >= 1, "lr_grid", "a count >= 1 or a list of numbers > 0", self.lr_grid)
        else:
            _require(all(_finite(v) and v > 0 for v in self.lr_grid), "lr_grid",
                     "a count >= 1 or a list of numbers > 0", list(self.lr_grid))
        _require(len(self.lr_range) == 2 and all(_finite(v) and v > 0 for v in self.lr_range)
                 and self.lr_range[0] < self.lr_range[1], "lr_range", "[low, high] with 0 < low < high",
                 list(self.lr_range))
        _require(_finite(self.target) and 0 < self.target < 1, "target", "a number in (0, 1)", self.target)
        _require(self.steps >= 1, "steps", "an integer >= 1", self.steps)
        _require(self.batch_size >= 0, "batch_size", "an integer >= 0 (0 = full batch)",
                 self.batch_size)
        if self.optimizer is Optimizer.GD:
            _require(self.batch_size == 0, "batch_size",
                     '0 for optimizer "gd" (full batch); use "sgd" for minibatches',
                     self.batch_size)
        _require(_finite(self.momentum) and 0 <= self.momentum < 1, "momentum",
                 "a number in [0, 1)", self.momentum)
        _require(_finite(self.weight_decay) and self.weight_decay >= 0, "weight_decay",
                 "a finite number >= 0", self.weight_decay)
        _require(_finite(self.beta1) and 0 <= self.beta1 < 1, "beta1", "a number in [0, 1)",
                 self.beta1)
        _require(_finite(self.beta2) and 0 <= self.beta2 < 1, "beta2", "a number in [0, 1)",
                 self.beta2)
        _require(_finite(self.eps) and self.eps > 0, "eps", "a finite number > 0", self.eps)
        _require(self.log_every >= 1, "log_every", "an integer >= 1", self.log_every)
        _require(self.checkpoint_every >= 0, "checkpoint_every",
                 "an integer >= 0 (0 = every 2 minutes)", self.checkpoint_every)
        _require(self.matmul_precision is MatmulPrecision.HIGHEST or self.dtype is DType.FLOAT32,
                 "matmul_precision", '"highest" with dtype = "float64"', self.matmul_precision.value)

    def learning_rates(self) -> tuple[float, ...]:
        """The rates an acceleration run tries: lr_grid, expanded if it is a count."""
        if isinstance(self.lr_grid, int):
            low, high = self.lr_range
            if self.lr_grid == 1:
                return (low,)
            return tuple(low * (high / low) ** (i / (self.lr_grid - 1)) for i in range(self.lr_grid))
        return self.lr_grid or (self.lr,)

    @property
    def n_log_steps(self) -> int:
        """How many steps are logged (computed, never by listing them)."""
        return self.steps // self.log_every + 1 + (self.steps % self.log_every != 0)

    def log_row(self, step: int) -> int | None:
        """The curve row of ``step``, or None if it is not logged."""
        if step == self.steps:
            return self.n_log_steps - 1
        return step // self.log_every if 0 <= step < self.steps and step % self.log_every == 0 else None

    def log_steps(self) -> np.ndarray:
        """Steps at which curves are recorded: 0, log_every, 2 log_every, ..., steps
        (int64; as large as the curves themselves, which the memory estimate counts)."""
        steps = np.arange(0, self.steps + 1, self.log_every, dtype=np.int64)
        return steps if steps[-1] == self.steps else np.append(steps, np.int64(self.steps))


class Samples(Choice):
    TRAIN = "train"
    TEST = "test"


@dataclass(frozen=True)
class CushionSpec:
    """Noise stability and the compression bound (Arora, Ge, Neyshabur & Zhang 2018)."""

    # Which data the measures are computed on; the paper's S is the training set.
    samples: Samples = Samples.TRAIN
    # At most this many samples (the first ones of that set).
    max_samples: int = 256
    # Percentiles of the per-sample cushions stored beside their minimum (the paper's mu).
    percentiles: tuple[float, ...] = (10.0, 50.0)
    # Steps at which to measure as well as after training, to watch cushions evolve.
    steps: tuple[int, ...] = ()
    # Helper matrices per layer for Matrix-Project; 0 skips evaluating a compressed net.
    compression_k: int = 256
    # Interlayer smoothness: perturbation size relative to ||x^i||, draws per sample, and
    # the delta of rho_delta.
    noise_scale: float = 0.1
    draws: int = 8
    delta: float = 0.1
    # Margin gamma of the bound: this percentile of the training margins (classification).
    margin_percentile: float = 10.0
    # Seed of the perturbations and of the Matrix-Project helpers.
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.max_samples >= 1, "max_samples", "an integer >= 1", self.max_samples)
        _require(all(_finite(p) and 0 <= p <= 100 for p in self.percentiles), "percentiles",
                 "a list of numbers in [0, 100]", list(self.percentiles))
        _require(all(s >= 0 for s in self.steps), "steps", "a list of integers >= 0", list(self.steps))
        _require(self.compression_k >= 0, "compression_k", "an integer >= 0 (0 = no compression)",
                 self.compression_k)
        _require(_finite(self.noise_scale) and self.noise_scale > 0, "noise_scale", "a number > 0",
                 self.noise_scale)
        _require(self.draws >= 1, "draws", "an integer >= 1", self.draws)
        _require(_finite(self.delta) and 0 < self.delta < 1, "delta", "a number in (0, 1)", self.delta)
        _require(_finite(self.margin_percentile) and 0 < self.margin_percentile < 100,
                 "margin_percentile", "a number in (0, 100)", self.margin_percentile)
        _require(self.seed >= 0, "seed", "an integer >= 0", self.seed)


class PathMethod(Choice):
    STRING = "string"
    BEZIER = "bezier"
    LINEAR = "linear"


# Fields two runs of a valley pair may differ in: they change neither the loss (the data)
# nor the shapes, so both ends are minima of one landscape trained in one family.
PAIRABLE = ("seed", "model.init_scale", "model.init", "train.lr", "train.momentum", "train.weight_decay",
            "train.beta1", "train.beta2", "train.eps")


@dataclass(frozen=True)
class ValleySpec:
    """Connectivity of solutions (Freeman & Bruna 2017; Garipov et al. 2018)."""

    # Runs that differ only in this swept field are paired: "seed", "init_scale", "model.init"
    # or an optimizer setting ("train.lr", "train.momentum", ...).
    pairs: str = "seed"
    # The path: "string" (beads relaxed toward the minimum-energy path), "bezier" (a
    # trained quadratic Bezier curve) or "linear" (the straight segment only).
    method: PathMethod = PathMethod.STRING
    # Interior beads of the string (string), or t samples per step (bezier).
    beads: int = 8
    # Relaxation steps of the string or training steps of the Bezier control point.
    steps: int = 500
    # Step size of the relaxation; 0 = each pair's own train.lr (with its optimizer).
    lr: float = 0.0
    # Initial bend, perpendicular to the segment, relative to the distance of the ends.
    perturbation: float = 0.05
    # Independently bent strings (or curves) per pair; the lowest barrier is kept.
    restarts: int = 1
    # Loss evaluations per segment between beads (the Bezier curve gets the same total).
    refine: int = 8
    # A pair is connected when barrier <= tolerance x the loss of the zero predictor.
    tolerance: float = 0.05
    # Seed of the bends and of the Bezier t samples.
    seed: int = 0

    def __post_init__(self) -> None:
        target = {"init_scale": "model.init_scale"}.get(self.pairs, self.pairs)
        _require(target in PAIRABLE, "pairs", " | ".join(f'"{p}"' for p in ("seed", "init_scale", *PAIRABLE[2:])),
                 self.pairs)
        object.__setattr__(self, "pairs", target)
        for name in ("beads", "steps", "restarts", "refine"):
            _require(getattr(self, name) >= 1, name, "an integer >= 1", getattr(self, name))
        _require(_finite(self.lr) and self.lr >= 0, "lr", "a number >= 0 (0 = the runs' own lr)", self.lr)
        _require(_finite(self.perturbation) and self.perturbation >= 0, "perturbation", "a number >= 0",
                 self.perturbation)
        _require(_finite(self.tolerance) and self.tolerance >= 0, "tolerance", "a number >= 0", self.tolerance)
        _require(self.seed >= 0, "seed", "an integer >= 0", self.seed)


@dataclass(frozen=True)
class MeasureSpec:
    """Measurements of trained nets; each is off unless named here."""

    # Cushions, noise stability and the compression bound: true, or a table of options.
    cushions: CushionSpec | None = None
    # Barriers between solutions that differ in one swept field: true, or a table of options.
    valleys: ValleySpec | None = None


@dataclass(frozen=True)
class ResourceSpec:
    """What each family (one Ray task) asks of the cluster."""

    # CPUs per family; also the number of torch threads inside the task.
    num_cpus: float = 1.0
    # GPUs per family; fractional values share a GPU between families.
    num_gpus: float = 0.0
    # Largest number of runs trained together as one stacked model.
    max_family_size: int = 512
    # Times Ray retries a family whose worker process or node died.
    max_retries: int = 3

    def __post_init__(self) -> None:
        _require(_finite(self.num_cpus) and self.num_cpus > 0, "num_cpus",
                 "a number > 0", self.num_cpus)
        _require(_finite(self.num_gpus) and self.num_gpus >= 0, "num_gpus",
                 "a number >= 0 (fractions share a GPU)", self.num_gpus)
        if self.num_gpus > 1:
            _require(float(self.num_gpus).is_integer(), "num_gpus",
                     "a whole number when above 1", self.num_gpus)
        _require(self.max_family_size >= 1, "max_family_size", "an integer >= 1",
                 self.max_family_size)
        _require(self.max_retries >= 0, "max_retries", "an integer >= 0", self.max_retries)


# Sections a run's result depends on, by their spec key.
RUN_SECTIONS: dict[str, type] = {"data": DataSpec, "model": ModelSpec, "train": TrainSpec}


@dataclass(frozen=True)
class RunSpec:
    """One fully specified configuration: what a single net is and how it is trained."""

    experiment: Experiment
    data: DataSpec
    model: ModelSpec
    train: TrainSpec
    # Seed of the init and of the minibatch order.
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.seed >= 0, "seed", "an integer >= 0", self.seed)
        self._check_experiment()
        if self.train.batch_size > self.data.n_train:
            raise FieldError("train.batch_size", f"at most data.n_train = {self.data.n_train}",
                             self.train.batch_size)

    def _check_experiment(self) -> None:
        """What an acceleration run needs: l_p data, a deep linear model without biases
        and with an end-to-end init, full-batch GD or Adam. A linear-dynamics run: a
        deep linear model without biases on regression data, an end-to-end init, full-batch
        GD."""
        lp = self.data.kind is DataKind.LP_REGRESSION
        end_to_end = (Init.BALANCED, Init.IDENTITY, Init.DECOUPLED)
        if self.train.matmul_precision is not MatmulPrecision.HIGHEST and self.experiment is not Experiment.TRAIN:
            raise FieldError("train.matmul_precision", '"highest" outside experiment = "train"',
                             self.train.matmul_precision.value)
        if self.model.init is Init.DECOUPLED and self.data.kind is not DataKind.LINEAR_MODES:
            raise FieldError("model.init", '"balanced" | "identity" unless data.kind = "linear-modes" '
                             '("decoupled" starts from the target\'s singular vectors)', self.model.init.value)
        if self.experiment is Experiment.LINEAR_DYNAMICS:
            needs = [
                ("data.kind", not (lp or self.data.kind.is_classification), "a regression kind other than "
                 '"lp-regression"', self.data.kind.value),
                ("model.kind", self.model.kind is ModelKind.LINEAR, '"linear"', self.model.kind.value),
                ("model.bias", not self.model.bias, "false", self.model.bias),
                ("model.init", self.model.init in end_to_end, '"balanced" | "identity" | "decoupled"',
                 self.model.init.value),
                ("train.optimizer", self.train.optimizer is Optimizer.GD, '"gd"', self.train.optimizer.value),
            ]
            _check_needs(needs, self.experiment)
            self._check_factor_width()
            return
        if self.data.kind is DataKind.LINEAR_MODES and self.experiment is not Experiment.LINEAR_DYNAMICS:
            raise FieldError("data.kind", 'a kind other than "linear-modes" (it needs experiment = '
                             '"linear-dynamics")', self.data.kind.value)
        _require(self.model.imbalance == 0, "model.imbalance", '0 outside experiment = "linear-dynamics"',
                 self.model.imbalance)
        if self.experiment is not Experiment.ACCELERATION:
            if lp:
                raise FieldError("data.kind", 'a kind other than "lp-regression" (it needs experiment = '
                                 '"acceleration")', self.data.kind.value)
            if self.model.init in (Init.BALANCED, Init.IDENTITY):
                raise FieldError("model.init", '"default" | "gaussian" outside experiment = "acceleration"',
                                 self.model.init.value)
            if self.model.overparam is not Overparam.FULL:
                raise FieldError("model.overparam", '"full" (the default) outside experiment = "acceleration"',
                                 self.model.overparam.value)
            return
        needs = [
            ("data.kind", lp, '"lp-regression"', self.data.kind.value),
            ("model.kind", self.model.kind is ModelKind.LINEAR, '"linear"', self.model.kind.value),
            ("model.bias", not self.model.bias, "false", self.model.bias),
            ("model.init", self.model.init in (Init.BALANCED, Init.IDENTITY), '"balanced" | "identity"',
             self.model.init.value),
            ("train.optimizer", self.train.optimizer in (Optimizer.GD, Optimizer.ADAM), '"gd" | "adam"',
             self.train.optimizer.value),
            ("train.batch_size", self.train.batch_size == 0, "0 (full batch)", self.train.batch_size),
        ]
        _check_needs(needs, self.experiment)

    def _check_factor_width(self) -> None:
        """The hidden width must hold the rank of the end-to-end start W0."""
        if self.model.depth < 2:
            return
        d, o = self.data.n_inputs, self.data.n_outputs
        needed, why = {
            Init.DECOUPLED: (len(self.data.singular_values), "the target's modes"),
            Init.BALANCED: (min(d, o), "the rank of a random end-to-end start"),
            Init.IDENTITY: (o, "the outputs"),
        }[self.model.init]
        if self.model.width < needed:
            raise FieldError("model.width", f"at least {needed} ({why}) for init = {self.model.init.value!r}",
                             self.model.width)

    def applies(self, section: str, name: str) -> bool:
        """Whether a field can affect this run. Fields that cannot (width at depth 1,
        momentum outside "sgd", Adam's settings outside "adam", class settings outside
        "gaussian-mixture", teacher settings outside "teacher-student", the activation of
        a model with no hidden layer) are left out of the run id and are NULL in ``runs``,
        so grid points that differ only in them are one run."""
        return self._conditional_fields.get((section, name), True)

    @functools.cached_property
    def _conditional_fields(self) -> dict[tuple[str, str], bool]:
        """(section, field) -> whether it applies, for the fields that sometimes do not."""
        kind, optimizer, depth = self.data.kind, self.train.optimizer, self.model.depth
        accelerating = self.experiment is Experiment.ACCELERATION
        only_if = {
            ("data", "p"): kind is DataKind.LP_REGRESSION,
            ("data", "condition"): kind is DataKind.LP_REGRESSION and not self.data.from_table,
            ("model", "overparam"): accelerating and depth >= 2,
            ("model", "init"): not (accelerating and depth == 1),  # plain w starts at w0 either way
            ("model", "imbalance"): self.experiment is Experiment.LINEAR_DYNAMICS and depth >= 2,
            ("data", "singular_values"): kind is DataKind.LINEAR_MODES,
            ("train", "lr"): not (accelerating and self.train.lr_grid),
            ("train", "lr_grid"): accelerating,
            ("train", "lr_range"): accelerating and isinstance(self.train.lr_grid, int),
            ("train", "target"): accelerating,
            ("data", "input_dim"): not kind.is_real and not self.data.from_table,
            ("data", "path"): kind.reads_files or kind is DataKind.LP_REGRESSION,
            ("data", "target_column"): self.data.from_table,
            ("train", "objective"): not kind.is_classification,
            ("data", "output_dim"): kind is DataKind.TEACHER_STUDENT,
            ("data", "teacher_width"): kind is DataKind.TEACHER_STUDENT,
            ("data", "n_classes"): kind is DataKind.GAUSSIAN_MIXTURE,
            ("data", "class_sep"): kind is DataKind.GAUSSIAN_MIXTURE,
            ("model", "width"): depth >= 2 and self.model.overparam is not Overparam.SCALAR,
            ("data", "label_noise"): kind is not DataKind.LINEAR_MODES and not self.data.from_table,
            ("model", "activation"): depth >= 2 and self.model.kind is ModelKind.MLP,
            ("train", "momentum"): optimizer is Optimizer.SGD,
            ("train", "beta1"): optimizer is Optimizer.ADAM,
            ("train", "beta2"): optimizer is Optimizer.ADAM,
            ("train", "eps"): optimizer is Optimizer.ADAM,
        }
        return only_if

    def to_config(self) -> dict[str, Any]:
        """The run as plain JSON values, fields that cannot affect it left out; its
        canonical form defines ``run_id``."""
        config: dict[str, Any] = {"experiment": self.experiment.value}
        for section in RUN_SECTIONS:
            values = _section_to_dict(getattr(self, section))
            config[section] = {k: v for k, v in values.items()
                               if self.applies(section, k) and not _omitted(getattr(self, section), k)}
        config["seed"] = self.seed
        return config

    def canonical_json(self) -> str:
        return json.dumps(self.to_config(), sort_keys=True, separators=(",", ":"),
                          allow_nan=False)

    @functools.cached_property
    def run_id(self) -> str:
        """A stable hash of the canonical config: the same id in any process, any machine
        (computed once per RunSpec; the fields are frozen)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SweepSpec:
    """A whole sweep: a base run, the grid swept over it, measures and resources."""

    # Names the sweep in the results directory: letters, digits, '.', '_', '-'.
    name: str
    # What is run for each configuration; "train" trains the nets and logs curves.
    experiment: Experiment = Experiment.TRAIN
    # Seed of each run when the grid does not sweep "seed".
    seed: int = 0
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    measure: MeasureSpec = field(default_factory=MeasureSpec)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    # Swept fields as (dotted path, values), in spec order; the runs are their product.
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    # The TOML text exactly as written, stored in the `sweeps` table.
    source: str = field(default="", compare=False)

    def base_run(self) -> RunSpec:
        return RunSpec(self.experiment, self.data, self.model, self.train, self.seed)


def _check_needs(needs: list[tuple[str, bool, str, Any]], experiment: Experiment) -> None:
    """Raise for the first (field, ok, expected, got) an experiment needs that is not ok."""
    for name, ok, expected, got in needs:
        if not ok:
            raise FieldError(name, f'{expected} for experiment = "{experiment.value}"', got)


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def is_hashed(f: dataclasses.Field) -> bool:
    """Whether a spec field can change a run's results (and so is part of its id)."""
    return f.metadata.get("hashed", True)


def _omitted(section: Any, name: str) -> bool:
    """Fields added after run ids were first published carry ``omit_default``: at their
    default they are left out of the canonical config, so earlier runs keep their ids."""
    defaults = _omitted_defaults(type(section))
    return name in defaults and getattr(section, name) == defaults[name]


@functools.cache
def _omitted_defaults(section_type: type) -> dict[str, Any]:
    """The ``omit_default`` fields of a section class, with their defaults."""
    return {f.name: f.default for f in dataclasses.fields(section_type) if f.metadata.get("omit_default", False)}


def _section_to_dict(section: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(section):
        if not is_hashed(f):
            continue
        value = getattr(section, f.name)
        out[f.name] = value.value if isinstance(value, enum.Enum) else value
    return out

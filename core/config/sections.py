"""The sections of a run: its data, its model and how it is trained.

Every field has a default, documented by the comment above it (README's spec reference
repeats them). Values are checked when a section is built; what depends on two sections
(or on the experiment) is checked by ``RunSpec``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from theoryscope.core.config.fields import Choice, is_finite, require


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
    image: tuple[int, int, int]  # (channels, height, width): the inputs are these images, flattened in this order


REAL_DATA = {
    DataKind.DIGITS: RealData(64, 10, 1797, 1797, (1, 8, 8)),
    DataKind.MNIST: RealData(784, 10, 60000, 10000, (1, 28, 28)),
    DataKind.FASHION_MNIST: RealData(784, 10, 60000, 10000, (1, 28, 28)),
    DataKind.CIFAR10: RealData(3072, 10, 50000, 10000, (3, 32, 32)),
}


class Objective(Choice):
    MEAN = "mean"
    HALF_SUM = "half-sum"


class LabelCorruption(Choice):
    OTHER_CLASS = "other-class"  # a uniformly random different class (Nakkiran et al. 2019)
    UNIFORM = "uniform"          # a uniformly random class, possibly the true one (Zhang et al. 2017)


class ModelKind(Choice):
    MLP = "mlp"
    LINEAR = "linear"
    CNN = "cnn"


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
    ADAGRAD = "adagrad"    # Duchi, Hazan & Singer 2011
    ADADELTA = "adadelta"  # Zeiler 2012

    @property
    def state_tensors(self) -> int:
        """Tensors of state per parameter tensor: SGD's momentum buffer, Adam's two
        moments, AdaGrad's sum of squared gradients, AdaDelta's two running averages."""
        return {"gd": 0, "sgd": 1, "adam": 2, "adagrad": 1, "adadelta": 2}[self.value]


class DType(Choice):
    FLOAT32 = "float32"
    FLOAT64 = "float64"

    @property
    def itemsize(self) -> int:
        """Bytes of one number."""
        return 8 if self is DType.FLOAT64 else 4


class MatmulPrecision(Choice):
    HIGHEST = "highest"  # float32 products as float32
    TF32 = "tf32"        # CUDA: TensorFloat-32 tensor cores (10-bit mantissa inputs); CPU: unchanged
    BF16 = "bf16"        # autocast to bfloat16 (8-bit mantissa) for the matmuls, on CUDA and CPU



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
    # Noise in the training targets or labels, >= 0 (a fraction <= 1 for classification);
    # what it means is each data kind's own, defined once beside its generator in
    # core.data (README's data kinds say the same for users).
    label_noise: float = 0.0
    # Classification: what a corrupted label becomes. "other-class": a uniformly random
    # different class (Nakkiran et al. 2019), so label_noise = 1 makes every label wrong;
    # "uniform": a uniformly random class (Zhang et al. 2017), right with probability
    # 1/classes, so label_noise = 1 gives random labels and a memorising net sits at chance.
    label_corruption: LabelCorruption = field(default=LabelCorruption.OTHER_CLASS,
                                              metadata={"omit_default": True})
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
        require(self.n_train >= 1, "n_train", "an integer >= 1", self.n_train)
        require(self.p >= 2, "p", "an integer >= 2", self.p)
        require(is_finite(self.condition) and self.condition >= 1, "condition", "a number >= 1", self.condition)
        require(len(self.singular_values) >= 1 and all(is_finite(v) and v > 0 for v in self.singular_values),
                 "singular_values", "a non-empty list of numbers > 0", list(self.singular_values))
        if self.kind is DataKind.LINEAR_MODES:
            modes = len(self.singular_values)
            require(self.input_dim >= modes, "input_dim", f"at least the {modes} singular values", self.input_dim)
            require(self.output_dim >= modes, "output_dim", f"at least the {modes} singular values",
                     self.output_dim)
            require(self.n_train >= self.input_dim, "n_train", f"at least input_dim = {self.input_dim} "
                     "(the inputs are whitened exactly)", self.n_train)
        require(self.n_test >= 1, "n_test", "an integer >= 1", self.n_test)
        require(self.input_dim >= 1, "input_dim", "an integer >= 1", self.input_dim)
        require(self.output_dim >= 1, "output_dim", "an integer >= 1", self.output_dim)
        require(self.teacher_width >= 1, "teacher_width", "an integer >= 1", self.teacher_width)
        require(self.n_classes >= 2, "n_classes", "an integer >= 2", self.n_classes)
        require(is_finite(self.class_sep) and self.class_sep >= 0, "class_sep",
                 "a finite number >= 0", self.class_sep)
        require(is_finite(self.label_noise) and self.label_noise >= 0, "label_noise",
                 "a finite number >= 0", self.label_noise)
        if self.kind.is_classification:
            require(self.label_noise <= 1, "label_noise",
                     f"a fraction in [0, 1] for {self.kind.value}", self.label_noise)
        if self.kind.is_real:
            real = REAL_DATA[self.kind]
            if self.kind is DataKind.DIGITS:
                require(self.n_train + self.n_test <= real.train, "n_train",
                         f"n_train + n_test <= {real.train} (the digits set) with n_test = {self.n_test}",
                         self.n_train)
            else:
                require(self.n_train <= real.train, "n_train", f"at most {real.train}", self.n_train)
                require(self.n_test <= real.test, "n_test", f"at most {real.test}", self.n_test)
        if self.kind.reads_files:
            require(bool(self.path), "path", f"the directory holding the {self.kind.value} files", self.path)
        if self.kind is DataKind.LP_REGRESSION and self.path:
            require(bool(self.target_column), "target_column", "the name of the target column of data.path",
                     self.target_column)
        if self.kind in (DataKind.LINEAR_TEACHER, DataKind.LP_REGRESSION):
            require(self.output_dim == 1, "output_dim", f"1 for {self.kind.value}", self.output_dim)
        require(self.seed >= 0, "seed", "an integer >= 0", self.seed)

    @property
    def from_table(self) -> bool:
        """lp-regression read from a table file rather than drawn."""
        return self.kind is DataKind.LP_REGRESSION and bool(self.path)

    def input_draw(self) -> DataSpec:
        """What fixes the data set's inputs: this spec without the label noise (how many
        labels are corrupted, and how), which changes only the labels. Specs with one
        ``input_draw`` have equal inputs, so a family of them keeps one copy
        (``core.train.stack_data``)."""
        return dataclasses.replace(self, label_noise=0.0, label_corruption=LabelCorruption.OTHER_CLASS)

    @property
    def n_inputs(self) -> int:
        """Width of the student's input. A table file's width is the file's, read with it:
        ``core.datasets.table.input_width`` answers for every kind."""
        if self.from_table:
            raise ValueError("the width of a table file is read from the file: use core.datasets.table.input_width")
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

    # "mlp" (ReLU between layers, none after the last), "linear" (a deep linear net) or
    # "cnn" (image data: `depth` blocks of a kernel_size x kernel_size convolution to
    # `width` channels, stride 1, zero "same" padding, ReLU, pool x pool max-pooling;
    # then one linear layer to the outputs).
    kind: ModelKind = ModelKind.MLP
    # Number of weight matrices, as in the theory papers: depth 1 is a linear model,
    # depth L has L - 1 hidden layers of `width` units. "cnn": the number of conv blocks.
    depth: int = 2
    # Units per hidden layer (unused at depth 1); "cnn": channels of every convolution.
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
    # "cnn": the side of every (square, odd) convolution kernel, and of the max-pooling
    # blocks after every ReLU (1 = no pooling; it must divide the map it pools).
    kernel_size: int = field(default=3, metadata={"omit_default": True})
    pool: int = field(default=2, metadata={"omit_default": True})

    def __post_init__(self) -> None:
        require(self.depth >= 1, "depth", "an integer >= 1", self.depth)
        require(self.width >= 1, "width", "an integer >= 1", self.width)
        require(self.kernel_size >= 1 and self.kernel_size % 2 == 1, "kernel_size", "an odd integer >= 1",
                self.kernel_size)
        require(self.pool >= 1, "pool", "an integer >= 1", self.pool)
        require(is_finite(self.imbalance) and self.imbalance > -1, "imbalance", "a number > -1", self.imbalance)
        require(is_finite(self.init_scale) and self.init_scale >= 0, "init_scale",
                 "a finite number >= 0", self.init_scale)
        if self.depth >= 2:
            require(self.init_scale > 0, "init_scale",
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

    # "gd" (full-batch gradient descent), "sgd" (minibatch SGD with optional momentum),
    # "adam", "adagrad" (Duchi, Hazan & Singer 2011) or "adadelta" (Zeiler 2012), with
    # PyTorch's update rules (core.optim).
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
    # AdaGrad's guard in lr g / (sqrt(sum of g^2) + eps) (Duchi et al.'s delta; PyTorch's
    # default; its lr_decay and initial accumulator are PyTorch's defaults, 0).
    adagrad_eps: float = field(default=1e-10, metadata={"omit_default": True})
    # AdaDelta's decay of its two running averages and its guard (Zeiler 2012's rho and
    # epsilon at PyTorch's defaults; Zeiler's experiments use rho = 0.95). AdaDelta's
    # step is multiplied by `lr` as in PyTorch, whose default is 1.0.
    rho: float = field(default=0.9, metadata={"omit_default": True})
    adadelta_eps: float = field(default=1e-6, metadata={"omit_default": True})
    # Experiment "acceleration": 0 reports the fastest stable rate of lr_grid. Above 0,
    # that rate is refined in stacked rounds until the nearest rates tried on either side
    # of the reported one are within a factor 1 + lr_tolerance (core.accelerate).
    lr_tolerance: float = field(default=0.0, metadata={"omit_default": True})
    # Experiment "train": a member stops, frozen, at the first step whose training loss
    # (the full training set: every step with full batch, at logged steps with minibatches)
    # is at most this; 0 = train every member for all `steps`. Jiang et al. (2020) train
    # to a cross-entropy of 0.01, so that nets are compared at equal fit.
    stop_train_loss: float = field(default=0.0, metadata={"omit_default": True})

    def __post_init__(self) -> None:
        require(is_finite(self.lr) and self.lr > 0, "lr", "a finite number > 0", self.lr)
        require(is_finite(self.stop_train_loss) and self.stop_train_loss >= 0, "stop_train_loss",
                 "a number >= 0 (0 = off)", self.stop_train_loss)
        if isinstance(self.lr_grid, int):
            require(self.lr_grid >= 1, "lr_grid", "a count >= 1 or a list of numbers > 0", self.lr_grid)
        else:
            require(all(is_finite(v) and v > 0 for v in self.lr_grid), "lr_grid",
                     "a count >= 1 or a list of numbers > 0", list(self.lr_grid))
        require(len(self.lr_range) == 2 and all(is_finite(v) and v > 0 for v in self.lr_range)
                 and self.lr_range[0] < self.lr_range[1], "lr_range", "[low, high] with 0 < low < high",
                 list(self.lr_range))
        require(is_finite(self.target) and 0 < self.target < 1, "target", "a number in (0, 1)", self.target)
        require(self.steps >= 1, "steps", "an integer >= 1", self.steps)
        require(self.batch_size >= 0, "batch_size", "an integer >= 0 (0 = full batch)",
                 self.batch_size)
        if self.optimizer is Optimizer.GD:
            require(self.batch_size == 0, "batch_size",
                     '0 for optimizer "gd" (full batch); use "sgd" for minibatches',
                     self.batch_size)
        require(is_finite(self.momentum) and 0 <= self.momentum < 1, "momentum",
                 "a number in [0, 1)", self.momentum)
        require(is_finite(self.weight_decay) and self.weight_decay >= 0, "weight_decay",
                 "a finite number >= 0", self.weight_decay)
        require(is_finite(self.beta1) and 0 <= self.beta1 < 1, "beta1", "a number in [0, 1)",
                 self.beta1)
        require(is_finite(self.beta2) and 0 <= self.beta2 < 1, "beta2", "a number in [0, 1)",
                 self.beta2)
        require(is_finite(self.eps) and self.eps > 0, "eps", "a finite number > 0", self.eps)
        require(is_finite(self.adagrad_eps) and self.adagrad_eps > 0, "adagrad_eps", "a finite number > 0",
                 self.adagrad_eps)
        require(is_finite(self.rho) and 0 <= self.rho < 1, "rho", "a number in [0, 1)", self.rho)
        require(is_finite(self.adadelta_eps) and self.adadelta_eps > 0, "adadelta_eps", "a finite number > 0",
                 self.adadelta_eps)
        require(is_finite(self.lr_tolerance) and (self.lr_tolerance == 0 or 1e-3 <= self.lr_tolerance <= 1),
                 "lr_tolerance", "0 (no refinement) or a number in [0.001, 1]", self.lr_tolerance)
        if self.lr_tolerance > 0:
            require(len(self.learning_rates()) >= 2, "lr_tolerance",
                     "0 unless lr_grid has at least 2 rates (refinement starts between them)", self.lr_tolerance)
        require(self.log_every >= 1, "log_every", "an integer >= 1", self.log_every)
        require(self.checkpoint_every >= 0, "checkpoint_every",
                 "an integer >= 0 (0 = every 2 minutes)", self.checkpoint_every)
        require(self.matmul_precision is MatmulPrecision.HIGHEST or self.dtype is DType.FLOAT32,
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


def shares_inputs(specs: Iterable[DataSpec]) -> bool:
    """Whether data sets of these specs all have the same inputs (one ``input_draw``):
    what decides both that a family holds its inputs once and that the plan's memory
    estimate counts them once."""
    return len({spec.input_draw() for spec in set(specs)}) == 1

"""A run: one fully specified configuration, and its id.

``run_id`` is a stable hash of the run's canonical JSON, which leaves out every field
that cannot affect the run (``RunSpec.applies``), so grid points that differ only in such
fields are one run, and the same config has the same id in every process and machine.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from theoryscope.core.config.fields import FieldError, omitted, require, section_to_dict
from theoryscope.core.config.sections import (
    REAL_DATA, DataKind, DataSpec, Experiment, Init, MatmulPrecision, ModelKind, ModelSpec, Optimizer, Overparam,
    TrainSpec,
)
from theoryscope.core.config.shapes import conv_shapes

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
        require(self.seed >= 0, "seed", "an integer >= 0", self.seed)
        self._check_experiment()
        if self.model.kind is ModelKind.CNN:
            self._check_convolutions()
        if self.train.batch_size > self.data.n_train:
            raise FieldError("train.batch_size", f"at most data.n_train = {self.data.n_train}",
                             self.train.batch_size)

    def _check_experiment(self) -> None:
        """What an acceleration run needs: l_p data, a deep linear model without biases
        and with an end-to-end init, full-batch GD, Adam, AdaGrad or AdaDelta. A
        linear-dynamics run: a deep linear model without biases on regression data, an
        end-to-end init, full-batch GD."""
        lp = self.data.kind is DataKind.LP_REGRESSION
        end_to_end = (Init.BALANCED, Init.IDENTITY, Init.DECOUPLED)
        if self.train.matmul_precision is not MatmulPrecision.HIGHEST and self.experiment is not Experiment.TRAIN:
            raise FieldError("train.matmul_precision", '"highest" outside experiment = "train"',
                             self.train.matmul_precision.value)
        if self.train.stop_train_loss and self.experiment is not Experiment.TRAIN:
            raise FieldError("train.stop_train_loss", '0 (off) outside experiment = "train"',
                             self.train.stop_train_loss)
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
            check_needs(needs, self.experiment)
            self._check_factor_width()
            return
        if self.data.kind is DataKind.LINEAR_MODES and self.experiment is not Experiment.LINEAR_DYNAMICS:
            raise FieldError("data.kind", 'a kind other than "linear-modes" (it needs experiment = '
                             '"linear-dynamics")', self.data.kind.value)
        require(self.model.imbalance == 0, "model.imbalance", '0 outside experiment = "linear-dynamics"',
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
            ("train.optimizer", self.train.optimizer is not Optimizer.SGD, '"gd" | "adam" | "adagrad" | "adadelta"',
             self.train.optimizer.value),
            ("train.batch_size", self.train.batch_size == 0, "0 (full batch)", self.train.batch_size),
        ]
        check_needs(needs, self.experiment)

    def _check_convolutions(self) -> None:
        """A CNN needs images (``RealData.image``), experiment "train", and kernels and
        pooling that fit every block's map."""
        if self.experiment is not Experiment.TRAIN:
            raise FieldError("model.kind", f'"mlp" | "linear" for experiment = "{self.experiment.value}"',
                             self.model.kind.value)
        real = REAL_DATA.get(self.data.kind)
        if real is None:
            images = " | ".join(f'"{k.value}"' for k in REAL_DATA)
            raise FieldError("model.kind", f'"mlp" | "linear" on data without images ("cnn" needs data.kind = '
                             f'{images})', self.model.kind.value)
        m = self.model
        try:
            conv_shapes(real.image, m.depth, m.kernel_size, m.pool, m.width)
        except FieldError as exc:
            raise FieldError(f"model.{exc.field_name}", f"{exc.expected} ({self.data.kind.value} images are "
                             f"{'x'.join(map(str, real.image))})", exc.got) from None

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

    @property
    def trains_by_seed(self) -> bool:
        """Whether the seed changes the net this run trains: it draws the init (unless
        the init is zero, or "decoupled", which the data sets) and the minibatch order
        (unless every step takes the whole training set)."""
        minibatches = 0 < self.train.batch_size < self.data.n_train
        drawn_init = self.model.init_scale > 0 and self.model.init is not Init.DECOUPLED
        return minibatches or drawn_init

    def applies(self, section: str, name: str) -> bool:
        """Whether a field can affect this run. Fields that cannot (width at depth 1,
        momentum outside "sgd", Adam's, AdaGrad's and AdaDelta's settings outside their
        optimizer, class settings outside "gaussian-mixture", teacher settings outside
        "teacher-student", the activation of a model with no hidden layer) are left out
        of the run id and are NULL in ``runs``, so grid points that differ only in them
        are one run."""
        return self._conditional_fields.get((section, name), True)

    @property
    def _conditional_fields(self) -> dict[tuple[str, str], bool]:
        """(section, field) -> whether it applies, for the fields that sometimes do not
        (the same for every run in ``shared``)."""
        shared = self.shared()
        if "conditional" not in shared:
            shared["conditional"] = self._find_conditional_fields()
        return shared["conditional"]

    def _find_conditional_fields(self) -> dict[tuple[str, str], bool]:
        kind, optimizer, depth = self.data.kind, self.train.optimizer, self.model.depth
        accelerating = self.experiment is Experiment.ACCELERATION
        convolutional = self.model.kind is ModelKind.CNN
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
            ("data", "label_corruption"): kind.is_classification and self.data.label_noise > 0,
            ("model", "width"): (depth >= 2 or convolutional) and self.model.overparam is not Overparam.SCALAR,
            ("data", "label_noise"): kind is not DataKind.LINEAR_MODES and not self.data.from_table,
            ("model", "activation"): depth >= 2 and self.model.kind is ModelKind.MLP or convolutional,
            ("model", "kernel_size"): convolutional,
            ("model", "pool"): convolutional,
            ("train", "momentum"): optimizer is Optimizer.SGD,
            ("train", "beta1"): optimizer is Optimizer.ADAM,
            ("train", "beta2"): optimizer is Optimizer.ADAM,
            ("train", "eps"): optimizer is Optimizer.ADAM,
            ("train", "adagrad_eps"): optimizer is Optimizer.ADAGRAD,
            ("train", "rho"): optimizer is Optimizer.ADADELTA,
            ("train", "adadelta_eps"): optimizer is Optimizer.ADADELTA,
            ("train", "lr_tolerance"): accelerating,
        }
        return only_if

    @property
    def _excluded(self) -> dict[str, frozenset[str]]:
        """Per section, its fields that cannot affect this run."""
        return _excluded_fields(tuple(self._conditional_fields.items()))

    def shared(self) -> dict[str, Any]:
        """A dict shared by every run with this experiment and these very section objects:
        a cache for what depends on them and not on the seed. Runs that differ only in
        their seed hold the same section objects (a grid replaces only the sections it
        sweeps), so 10^5 seeds compute such things once."""
        objects = (self.data, self.model, self.train)
        key = (self.experiment, *map(id, objects))
        seen = _SHARED_BY_SECTIONS.get(key)
        if seen is not None and seen[0][0] is self.data and seen[0][1] is self.model and seen[0][2] is self.train:
            return seen[1]
        if len(_SHARED_BY_SECTIONS) >= 4096:
            _SHARED_BY_SECTIONS.clear()
        shared: dict[str, Any] = {}
        _SHARED_BY_SECTIONS[key] = (objects, shared)  # holds the objects: their ids stay theirs
        return shared

    def _sections(self) -> dict[str, tuple[dict[str, Any], str]]:
        """Per section, its config and that config's canonical JSON (shared, read-only)."""
        shared = self.shared()
        if "sections" not in shared:
            shared["sections"] = {name: _section_config(getattr(self, name), _value_types(getattr(self, name)),
                                                        self._excluded[name]) for name in RUN_SECTIONS}
        return shared["sections"]

    def to_config(self) -> dict[str, Any]:
        """The run as plain JSON values, fields that cannot affect it left out; its
        canonical form defines ``run_id``."""
        config: dict[str, Any] = {"experiment": self.experiment.value}
        for name, (values, _) in self._sections().items():
            config[name] = dict(values)
        config["seed"] = self.seed
        return config

    def canonical_json(self) -> str:
        """``json.dumps(to_config(), sort_keys=True, separators=(",", ":"))``, put
        together from each section's cached JSON (JSON nests: a value's text is the same
        alone and inside the whole)."""
        shared = self.shared()
        if "json_around_seed" not in shared:
            parts = {name: text for name, (_, text) in self._sections().items()}
            parts |= {"experiment": _dumps(self.experiment.value), "seed": "\0"}
            whole = "{" + ",".join(f'"{key}":{parts[key]}' for key in _TOP_KEYS) + "}"  # plain names: no escapes
            shared["json_around_seed"] = whole.split("\0")
        before, after = shared["json_around_seed"]
        return before + (str(self.seed) if type(self.seed) is int else _dumps(self.seed)) + after

    @functools.cached_property
    def run_id(self) -> str:
        """A stable hash of the canonical config: the same id in any process, any machine
        (computed once per RunSpec; the fields are frozen)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]


# (experiment, ids of data, model, train) -> (those objects, their ``shared`` dict).
_SHARED_BY_SECTIONS: dict[tuple, tuple[tuple, dict]] = {}

# The top-level keys of a run's config, in sorted order.
_TOP_KEYS = tuple(sorted({*RUN_SECTIONS, "experiment", "seed"}))


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


@functools.lru_cache(maxsize=1024)
def _excluded_fields(conditional: tuple[tuple[tuple[str, str], bool], ...]) -> dict[str, frozenset[str]]:
    return {name: frozenset(k for (s, k), on in conditional if s == name and not on) for name in RUN_SECTIONS}


def _value_types(section: Any) -> tuple:
    """The types of a section's values (and of the items of its tuples): sections that
    compare equal may still differ in them (1 == 1.0), and JSON writes them apart."""
    return tuple(tuple(map(type, v)) if isinstance(v, tuple) else type(v) for v in vars(section).values())


@functools.lru_cache(maxsize=65536)
def _section_config(section: Any, types: tuple, excluded: frozenset[str]) -> tuple[dict[str, Any], str]:
    """A section's config (its hashed fields, less the ``excluded`` ones that cannot
    affect the run and the ``omit_default`` ones at their default) and its canonical
    JSON. Cached: the runs of a grid share most of their sections (10^5 seeds: one each),
    and sections are frozen, so equal ones of the same ``types`` give the same config."""
    values = {k: v for k, v in section_to_dict(section).items() if k not in excluded and not omitted(section, k)}
    return values, _dumps(values)


def check_needs(needs: list[tuple[str, bool, str, Any]], experiment: Experiment) -> None:
    """Raise for the first (field, ok, expected, got) an experiment needs that is not ok."""
    for name, ok, expected, got in needs:
        if not ok:
            raise FieldError(name, f'{expected} for experiment = "{experiment.value}"', got)


"""Every experiment, by its ``experiment`` value: the one map.

Each experiment is one module of this folder that fills in ``base.ExperimentKind`` (how
a family trains, its tables, views, figures and packing needs). Adding one is adding
its value to ``core.config.Experiment``, its module and its line below.
"""

from __future__ import annotations

from theoryscope.core.config import Experiment
from theoryscope.sweeps.experiments import acceleration, linear_dynamics, train
from theoryscope.sweeps.experiments.base import ExperimentKind

EXPERIMENTS: dict[Experiment, ExperimentKind] = {
    kind.experiment: kind for kind in (train.KIND, acceleration.KIND, linear_dynamics.KIND)}
assert set(EXPERIMENTS) == set(Experiment), "every experiment needs its kind"

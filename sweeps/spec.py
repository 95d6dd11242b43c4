"""The sweep spec: a base run, the grid swept over it, measures, resources and what is kept.

The run's own sections (``data``, ``model``, ``train``) are in ``core.config``; this module
adds what only a sweep has; its ``[measure]`` section is made from the measures'
registry (``sweeps.measures.MeasureSpec``, each measure's options in its own module).
Values are checked in ``__post_init__`` and reported as ``FieldError``; the loader
(``sweeps.load``) turns those into one-line ``SpecError`` messages that carry the file
and the key path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from theoryscope.core.config import (
    Choice, DataSpec, Experiment, ModelSpec, RunSpec, TrainSpec, is_finite, require,
)
from theoryscope.sweeps.measures import MeasureSpec


@dataclass(frozen=True)
class ResourceSpec:
    """What each family (one Ray task) asks of the cluster."""

    # CPUs per family; also the number of torch threads inside the task.
    num_cpus: float = 1.0
    # GPUs per family; fractional values share a GPU between families.
    num_gpus: float = 0.0
    # Largest number of runs trained together as one stacked model; below it, families
    # are sized by the memory estimate and split to spread the work over the slots.
    max_family_size: int = 100_000
    # Times Ray retries a family whose worker process or node died.
    max_retries: int = 3

    def __post_init__(self) -> None:
        require(is_finite(self.num_cpus) and self.num_cpus > 0, "num_cpus",
                 "a number > 0", self.num_cpus)
        require(is_finite(self.num_gpus) and self.num_gpus >= 0, "num_gpus",
                 "a number >= 0 (fractions share a GPU)", self.num_gpus)
        if self.num_gpus > 1:
            require(float(self.num_gpus).is_integer(), "num_gpus",
                     "a whole number when above 1", self.num_gpus)
        require(self.max_family_size >= 1, "max_family_size", "an integer >= 1",
                 self.max_family_size)
        require(self.max_retries >= 0, "max_retries", "an integer >= 0", self.max_retries)


class KeepWeights(Choice):
    AUTO = "auto"    # everything while the sweep's weights fit in store.limit_gib, else less
    FINAL = "final"  # each run's final weights only


@dataclass(frozen=True)
class StoreSpec:
    """What a sweep keeps beside its tables."""

    # The trained nets as safetensors files (`weights` table): true (each run's final
    # weights and those at the steps its measures snapshot), "final", false, or "auto"
    # (true while that takes at most limit_gib, else "final" while that fits, else false).
    weights: bool | KeepWeights = KeepWeights.AUTO
    # The most "auto" keeps, in GiB.
    limit_gib: float = 1.0

    def __post_init__(self) -> None:
        require(is_finite(self.limit_gib) and self.limit_gib >= 0, "limit_gib", "a number >= 0", self.limit_gib)


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
    store: StoreSpec = field(default_factory=StoreSpec)
    # Swept fields as (dotted path, values), in spec order; the runs are their product.
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    # The TOML text exactly as written, stored in the `sweeps` table.
    source: str = field(default="", compare=False)
    # Where the text came from (a file's path), the prefix of errors found in planning.
    origin: str = field(default="<spec>", compare=False)

    def base_run(self) -> RunSpec:
        return RunSpec(self.experiment, self.data, self.model, self.train, self.seed)


"""What an experiment is: how its families train and what it adds to a sweep's results.

``experiment = "train"`` trains nets and hands them to the measures; the other
experiments have trainers and tables of their own. Each fills in ``ExperimentKind``, and
``sweeps.experiments.EXPERIMENTS`` maps every ``core.config.Experiment`` to its kind, so
running a family (``sweeps.execute``), packing it (``sweeps.plan``) and reading its
results (``sweeps.tables``) never ask which experiment it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from theoryscope.core.config import Experiment, RunSpec
from theoryscope.sweeps.figures import Figure

if TYPE_CHECKING:
    import torch

    from theoryscope.core.checkpoint import Checkpoint
    from theoryscope.core.train import FamilyResult


class Train(Protocol):
    """(sweep, the family's runs, the sweep's [measure] section, device, checkpoint) ->
    the family's curves and weights, and its tables beside runs and curves."""

    def __call__(self, sweep: str, runs: Sequence[RunSpec], measure: Any, device: torch.device,
                 checkpoint: Checkpoint, /) -> tuple[FamilyResult, dict[str, pa.Table]]: ...


def _no_bytes(_: RunSpec) -> int:
    return 0


def _no_key(_: RunSpec) -> tuple:
    return ()


@dataclass(frozen=True)
class ExperimentKind:
    """One experiment.

    ``train``: trains a family (calling its core trainer) and returns the result with
    the rows of its own tables. ``takes_measures``: whether ``[measure]`` applies.
    ``tables``: name -> schema of the tables it writes; ``enriched``: tables whose view
    wraps the stored rows (SQL with ``{stored}``); ``derived``: views computed from the
    others; ``figures``: what a report draws of it. ``per_step_bytes(run)``: memory a
    member keeps for *every* step, not only the logged ones (for packing).
    ``family_key(run)``: what members of one family must share beyond the common key
    (``sweeps.plan.family_key``). ``defaults``: dotted field -> the value it takes in
    this experiment when the spec neither sets nor sweeps it (where the general default
    is not valid here).
    """

    experiment: Experiment
    train: Train
    takes_measures: bool = False
    tables: Mapping[str, pa.Schema] = field(default_factory=dict)
    enriched: Mapping[str, str] = field(default_factory=dict)
    derived: Mapping[str, str] = field(default_factory=dict)
    figures: tuple[Figure, ...] = ()
    per_step_bytes: Callable[[RunSpec], int] = _no_bytes
    family_key: Callable[[RunSpec], tuple] = _no_key
    defaults: Mapping[str, Any] = field(default_factory=dict)

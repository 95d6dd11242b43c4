"""Experiment "train": train the nets, log their curves, hand them to the measures.

The one experiment whose families the ``[measure]`` section applies to: training keeps
the weights at the steps the enabled measures ask for (``sweeps.measures``), and
checkpoints as it goes, so a retried family continues where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from theoryscope.core.config import Experiment, RunSpec
from theoryscope.sweeps.experiments.base import ExperimentKind
from theoryscope.sweeps.measures import MeasureSpec, measure_family, snapshot_steps

if TYPE_CHECKING:
    import torch

    from theoryscope.core.checkpoint import Checkpoint
    from theoryscope.core.train import FamilyResult


def train_and_measure(sweep: str, runs: Sequence[RunSpec], measure: MeasureSpec, device: torch.device,
                      checkpoint: Checkpoint) -> tuple[FamilyResult, dict[str, pa.Table]]:
    from theoryscope.core.train import train_family  # loads torch: see sweeps.experiments.base

    result = train_family(runs, device, checkpoint, snapshot_steps(measure, runs[0]))
    return result, measure_family(measure, sweep, runs, result)


KIND = ExperimentKind(Experiment.TRAIN, train_and_measure, takes_measures=True)

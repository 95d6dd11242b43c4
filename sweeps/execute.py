"""Run one family end to end: train it, turn the result into rows, publish its files.

``execute_family`` is what a Ray task runs (and what the in-process backend calls), so
both backends produce identical tables. How a family trains and which tables it adds is
its experiment's (``sweeps.experiments``). The family's files are published curves first,
measure tables and the kept weights next (``sweeps.weights``), runs last: a ``runs`` file is the mark that the family is done, and
it records which tables the family published (``storage.parquet.mark_published``), so a
family with one of them missing or damaged is not done (``published_families``). While
it trains, the family checkpoints under ``<results>/checkpoints/sweep=<name>/<family_id>.pt``;
a retried or resumed family continues from there, and the checkpoint is removed once the
rows are published.
"""

from __future__ import annotations

import datetime as dt
import importlib
import time
from dataclasses import dataclass

import pyarrow as pa

from theoryscope.core.config import RunSpec
from theoryscope.storage.location import FilePath, ResultsLike
from theoryscope.storage.parquet import (
    Publication, mark_published, partition_dir, publications, table_path, write_atomic,
)
from theoryscope.sweeps.experiments import EXPERIMENTS
from theoryscope.sweeps.measures import MeasureSpec
from theoryscope.sweeps.records import RunStatus, failed_family_table, trained_family_tables
from theoryscope.sweeps.version import code_version
from theoryscope.sweeps.weights import Kept, kept_steps, write_family_weights


@dataclass(frozen=True)
class FamilyJob:
    """Everything a worker needs to run a family; small and picklable."""

    sweep: str
    family_id: str
    runs: tuple[RunSpec, ...]
    results: str  # the results root as --results takes it (a path or a URI)
    num_gpus: float = 0.0
    measure: MeasureSpec = MeasureSpec()
    weights: Kept = Kept.NONE  # what of the trained nets to keep (``sweeps.weights``)

    @property
    def checkpoint_path(self) -> FilePath:
        return partition_dir(self.results, "checkpoints", self.sweep) / f"{self.family_id}.pt"


@dataclass(frozen=True)
class FamilyOutcome:
    """What the driver learns when a family is done (the rows are on disk)."""

    family_id: str
    n_runs: int
    n_ok: int
    n_diverged: int
    n_failed: int
    wall_seconds: float  # training
    device: str
    error: str | None = None
    # The whole task (data, training, measures, writing) and the Parquet writing alone.
    task_seconds: float = 0.0
    write_seconds: float = 0.0


def execute_family(job: FamilyJob) -> FamilyOutcome:
    """Train ``job``'s family and publish its rows. An exception in training is recorded
    as ``status = 'failed'`` rows carrying the message, not raised."""
    from theoryscope.core.allocator import keep_freed_memory
    from theoryscope.core.train import describe_device, pick_device
    from theoryscope.sweeps.checkpoints import Checkpointer

    started = time.perf_counter()
    keep_freed_memory()
    device = pick_device(job.num_gpus)
    checkpoint = Checkpointer(job.checkpoint_path, every_steps=job.runs[0].train.checkpoint_every)
    try:
        train = EXPERIMENTS[job.runs[0].experiment].train
        result, measured = train(job.sweep, job.runs, job.measure, device, checkpoint)
    except Exception as exc:  # recorded in the runs table; the other families carry on
        return record_failure(job, f"{type(exc).__name__}: {exc}", describe_device(device))
    runs_table, curves_table = trained_family_tables(job.sweep, job.family_id, job.runs, result,
                                                     code_version(), _now())
    writing = time.perf_counter()
    published = {"curves": curves_table, **measured}
    steps = kept_steps(job.weights, job.measure, job.runs[0])
    if steps:  # the file first, then its rows: a row names a complete file
        published["weights"] = write_family_weights(job.results, job.sweep, job.family_id, job.runs, result, steps)
    for table, rows in published.items():
        write_atomic(rows, table_path(job.results, table, job.sweep, job.family_id))
    runs_path = table_path(job.results, "runs", job.sweep, job.family_id)
    write_atomic(mark_published(runs_table, published), runs_path)  # last: the family is done
    checkpoint.remove()
    done = time.perf_counter()
    statuses = runs_table.column("status").to_pylist()
    return FamilyOutcome(
        job.family_id, len(job.runs), statuses.count(RunStatus.OK.value),
        statuses.count(RunStatus.DIVERGED.value), 0, result.wall_seconds, result.device,
        task_seconds=done - started, write_seconds=done - writing,
    )


def record_failure(job: FamilyJob, message: str, device: str = "unknown") -> FamilyOutcome:
    """Publish ``status = 'failed'`` rows for every run of the family. Its checkpoint is
    kept, so ``resume --retry-failed`` continues where it stopped."""
    table = failed_family_table(job.sweep, job.family_id, job.runs, message, code_version(), _now(), device)
    write_atomic(mark_published(table, ()), table_path(job.results, "runs", job.sweep, job.family_id))
    return FamilyOutcome(job.family_id, len(job.runs), 0, 0, len(job.runs), 0.0, device, message)


def published_families(results: ResultsLike, sweep: str, columns: tuple[str, ...] = ("run_id", "status")
                       ) -> list[Publication]:
    """The sweep's complete ``runs`` files, each with whether every table its family
    published has its complete file: a family is done only then. ``runs`` files written
    before they recorded their tables owe ``curves`` unless they record a failure (what
    every version wrote)."""
    return publications(results, "runs", sweep, tuple(dict.fromkeys((*columns, "status"))), _published_before)


def _published_before(rows: pa.Table) -> tuple[str, ...]:
    failed = all(s == RunStatus.FAILED.value for s in rows.column("status").to_pylist())
    return () if failed else ("curves",)


def execute_in_worker(job: FamilyJob, num_threads: int) -> FamilyOutcome:
    """``execute_family`` in a dedicated worker process: torch uses exactly the CPUs the
    scheduler granted, so families sharing a node do not oversubscribe it."""
    import torch

    torch.set_num_threads(max(1, num_threads))
    return execute_family(job)


# What a family's task imports beyond this module (which reads results without torch).
TRAINING_MODULES = (
    "torch", "theoryscope.core.train", "theoryscope.core.accelerate", "theoryscope.core.dynamics",
    "theoryscope.core.measures.bound", "theoryscope.core.measures.complexity", "theoryscope.core.measures.cushion",
    "theoryscope.core.measures.valley", "theoryscope.sweeps.checkpoints", "theoryscope.storage.tensors",
)


def warm_worker() -> None:
    """Nothing but loading: a worker that runs it has imported torch, the trainers, the
    measures and storage (``TRAINING_MODULES``), which a family's first task would
    otherwise wait for; one matmul starts torch's thread pool."""
    for name in TRAINING_MODULES:
        importlib.import_module(name)
    import torch

    torch.ones(2, 2) @ torch.ones(2, 2)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)

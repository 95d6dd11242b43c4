"""Launch a sweep: plan it against what is already on disk, record it, run the rest.

What is done is read from the Parquet files alone: a run whose id has a ``runs`` row in
the sweep's partition is not run again, so launching the same spec twice (or after an
interruption) runs only what is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import StorageError, TheoryscopeError
from storage.parquet import read_column
from sweeps.catalog import find_sweep, record_sweep, same_experiment
from sweeps.dispatch import Backend
from sweeps.execute import FamilyJob, FamilyOutcome
from sweeps.plan import Plan, plan_sweep
from sweeps.spec import SweepSpec


@dataclass
class LaunchSummary:
    """What one launch did; ``outcomes`` grow as families finish."""

    sweep: str
    results: Path
    planned: int
    already_done: int
    families: int
    outcomes: list[FamilyOutcome] = field(default_factory=list)
    wall_seconds: float = 0.0

    def total(self, name: str) -> int:
        return sum(getattr(o, name) for o in self.outcomes)


def prepare(spec: SweepSpec, results: Path, sweep: str | None = None) -> Plan:
    """Plan ``spec`` under ``sweep`` (default: its name) minus the runs already done.
    Refuses a name already used by a different spec. Writes nothing."""
    sweep = sweep or spec.name
    if Path(results).exists() and not Path(results).is_dir():
        raise StorageError(f"--results {results} is a file; give a directory (it is created if missing)")
    existing = find_sweep(results, sweep)
    if existing is not None and not same_experiment(existing.spec(), spec):
        raise TheoryscopeError(
            f"sweep {sweep!r} already exists in {results} with a different spec; "
            f"launch this spec under a new name (--name NEW_NAME)"
        )
    done = frozenset(read_column(results, "runs", sweep, "run_id"))
    return plan_sweep(spec, sweep, exclude=done)


def launch(plan: Plan, results: Path, backend: Backend,
           on_done: Callable[[FamilyOutcome], None] | None = None) -> LaunchSummary:
    """Record the sweep and run every family of ``plan`` on ``backend``."""
    results = Path(results).resolve()
    record_sweep(results, plan.sweep, plan.spec, len(plan.runs))
    todo = sum(f.size for f in plan.families)
    summary = LaunchSummary(plan.sweep, results, len(plan.runs), len(plan.runs) - todo, len(plan.families))
    jobs = [FamilyJob(plan.sweep, f.family_id, f.runs, str(results), plan.spec.resources.num_gpus)
            for f in plan.families]

    def finished(outcome: FamilyOutcome) -> None:
        summary.outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)

    start = time.perf_counter()
    if jobs:
        backend.run(jobs, plan.spec.resources, finished)
    summary.wall_seconds = time.perf_counter() - start
    return summary

"""Launch and resume sweeps: plan against what is on disk, record the sweep, run the rest.

What is done is read from the Parquet files alone: a run with a ``runs`` row in a
complete file of the sweep's partition, whose family has a complete file in every table
it published, is not run again (failed runs too, unless retried), so launching the same
spec twice, or resuming after any interruption, runs exactly what is missing.

One driver at a time runs a sweep: ``launch`` holds the sweep's lease
(``storage.lease``) from before it writes anything until it returns, and a second driver
is refused while the first is alive.

``run_sweep`` and ``resume_sweep`` are the one way a sweep is run (the CLI, ``submit``'s
job on the cluster, the benchmarks and notebooks call them): plan once, start the
backend, pack once for what it can hold, run, and return the summary. Callers follow along
through ``LaunchEvents``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from theoryscope.core.config import RunSpec
from theoryscope.core.errors import TheoryscopeError
from theoryscope.storage.lease import acquire
from theoryscope.storage.location import (
    FilePath, ResultsLike, check_root, read_parquet, remove, results_root, root_text,
)
from theoryscope.storage.parquet import Scan, clean, scan
from theoryscope.sweeps.catalog import find_sweep, record_sweep, recorded_sweep, same_experiment
from theoryscope.sweeps.dispatch import Backend, make_backend
from theoryscope.sweeps.events import BackendName, LaunchEvents
from theoryscope.sweeps.execute import FamilyJob, FamilyOutcome, published_families
from theoryscope.sweeps.load import load_spec
from theoryscope.sweeps.plan import Capacity, OnPlanned, Plan, estimate_cost, fit_plan, pack_plan, planned_runs
from theoryscope.sweeps.records import RunStatus
from theoryscope.sweeps.spec import SweepSpec
from theoryscope.sweeps.tables import PER_SWEEP, TABLES
from theoryscope.sweeps.weights import drop_unfinished_weights, plan_weights

# Tables a family writes, plus its checkpoints; cleaned before a sweep runs.
SWEEP_DIRS = (*TABLES, "checkpoints")


@dataclass
class LaunchSummary:
    """What one launch did; ``outcomes`` grow as families finish."""

    sweep: str
    results: FilePath
    planned: int
    already_done: int
    families: int
    outcomes: list[FamilyOutcome] = field(default_factory=list)
    wall_seconds: float = 0.0
    removed: list[FilePath] = field(default_factory=list)

    def total(self, name: str) -> int:
        return sum(getattr(o, name) for o in self.outcomes)


def done_runs(results: ResultsLike, sweep: str, retry_failed: bool = False) -> frozenset[str]:
    """Run ids of the sweep's done families: a row in a complete ``runs`` file, and a
    complete file in every table the family published (``published_families``); failed
    ones left out when they are to be retried."""
    done = set()
    for family in published_families(results, sweep):
        if family.complete:
            done.update(r["run_id"] for r in family.rows.to_pylist()
                        if not (retry_failed and r["status"] == RunStatus.FAILED.value))
    return frozenset(done)


@dataclass(frozen=True)
class Todo:
    """A sweep's runs, expanded and checked, and which of them are done: a plan before it
    is packed (``pack``), which happens once the backend says what it can hold."""

    spec: SweepSpec
    sweep: str
    runs: tuple[RunSpec, ...]
    done: frozenset[str]

    def pack(self, capacity: Capacity | None = None) -> Plan:
        return pack_plan(self.spec, self.sweep, self.runs, self.done, capacity)


def prepare(spec: SweepSpec, results: ResultsLike, sweep: str | None = None, force_new: bool = False,
            retry_failed: bool = False, on_planned: OnPlanned | None = None) -> Plan:
    """Plan ``spec`` under ``sweep`` (default: its name) minus the runs already done
    (``on_planned`` hears how far planning is), packed for no particular backend. Writes
    nothing."""
    return todo_of(spec, results, sweep, force_new, retry_failed, on_planned).pack()


def prepare_resume(results: ResultsLike, sweep: str, retry_failed: bool = False,
                   on_planned: OnPlanned | None = None) -> Plan:
    """Plan a recorded sweep again from its stored spec, minus what is done."""
    return todo_of_recorded(results, sweep, retry_failed, on_planned).pack()


def todo_of(spec: SweepSpec, results: ResultsLike, sweep: str | None = None, force_new: bool = False,
            retry_failed: bool = False, on_planned: OnPlanned | None = None) -> Todo:
    """What running ``spec`` under ``sweep`` (default: its name) has left to do.

    A name already used by a different spec is refused, or with ``force_new`` the spec
    gets a fresh name derived from it, so the old results stay apart. Writes nothing.
    """
    check_root(results_root(results))
    sweep = sweep or spec.name
    existing = find_sweep(results, sweep)
    if existing is not None and not same_experiment(existing.spec(), spec):
        fresh = _fresh_name(results, sweep, spec)
        if not force_new:
            raise TheoryscopeError(
                f"sweep {sweep!r} already exists in {results} with a different spec; launch this spec "
                f"under a new name (--name NEW_NAME), or with --force-new to launch it as {fresh!r} "
                f"and keep the old results apart")
        sweep = fresh
    return Todo(spec, sweep, planned_runs(spec, on_planned), done_runs(results, sweep, retry_failed))


def todo_of_recorded(results: ResultsLike, sweep: str, retry_failed: bool = False,
                     on_planned: OnPlanned | None = None) -> Todo:
    """What a recorded sweep has left to do, planned again from its stored spec."""
    check_root(results_root(results))
    spec = recorded_sweep(results, sweep).spec()
    return Todo(spec, sweep, planned_runs(spec, on_planned), done_runs(results, sweep, retry_failed))


def _fresh_name(results: ResultsLike, sweep: str, spec: SweepSpec) -> str:
    """``<name>-<spec hash>``, the first one not taken by another spec."""
    digest = hashlib.sha256(spec.source.encode()).hexdigest()
    for length in range(6, len(digest) + 1):
        name = f"{sweep[:120]}-{digest[:length]}"
        existing = find_sweep(results, name)
        if existing is None or same_experiment(existing.spec(), spec):
            return name
    raise AssertionError("sha256 prefixes exhausted")


def clean_sweep(results: ResultsLike, sweep: str) -> list[FilePath]:
    """Remove damaged files and leftovers of interrupted writes from a sweep's
    partitions; returns what was removed."""
    found = Scan()
    for table in SWEEP_DIRS:
        found += scan(results, table, sweep)
    return clean(found)


def _drop_failed_families(results: ResultsLike, plan: Plan) -> None:
    """Before failed runs are retried, remove the files that record them as failed, so
    each run ends with exactly one row (a family fails as a whole, so such a file holds
    nothing else)."""
    retried = {r.run_id for f in plan.families for r in f.runs}
    for path in scan(results, "runs", plan.sweep).complete:
        rows = read_parquet(path, columns=["run_id", "status"]).to_pylist()
        if rows and all(r["status"] == RunStatus.FAILED.value and r["run_id"] in retried for r in rows):
            remove(path)


def _drop_unfinished_families(results: ResultsLike, sweep: str) -> None:
    """Remove what families that are not done left behind: the ``runs`` file of a family
    with a table's file missing or damaged, and files published before a ``runs`` file
    that never came. Such a family runs again from scratch, so every run ends with exactly
    one row in every table even if it is packed into a different family this time."""
    families = published_families(results, sweep)
    for family in families:
        if not family.complete:
            remove(family.mark)  # first: a crash from here on leaves files the loop below removes
    done = {f.mark.name for f in families if f.complete}
    for table in TABLES:
        if table != "runs" and table not in PER_SWEEP:
            for path in scan(results, table, sweep).complete:
                if path.name not in done:
                    remove(path)
    drop_unfinished_weights(results, sweep, {name.removesuffix(".parquet") for name in done})


def _catch_up(results: ResultsLike, plan: Plan) -> Plan:
    """``plan`` without the runs that another driver finished since it was made (while
    this one waited to take the lease). Runs recorded as failed meanwhile stay planned:
    this launch retries them."""
    planned = {r.run_id for f in plan.families for r in f.runs}
    finished = planned & done_runs(results, plan.sweep, retry_failed=True)
    if not finished:
        return plan
    return pack_plan(plan.spec, plan.sweep, plan.runs, plan.done | finished, plan.capacity)


def run_sweep(spec: SweepSpec | str | Path, results: ResultsLike = "results", *, name: str | None = None,
              backend: Backend | BackendName | str = BackendName.RAY, address: str | None = None,
              force_new: bool = False, retry_failed: bool = False, events: LaunchEvents | None = None,
              exits_on_interrupt: bool = False) -> LaunchSummary:
    """Run a sweep from its spec (a ``SweepSpec`` or a TOML file): every planned run not
    in ``results`` yet, so running the same spec again resumes it.

    ``backend`` is "ray" (the embedded local Ray, or the cluster at ``address``),
    "local" (in this process, one family at a time) or a ``Backend``; one made here is
    closed when the sweep ends. ``name`` stores it under another name; a name taken by a
    different spec is refused, or with ``force_new`` replaced by a fresh one
    (``summary.sweep``). Failed runs are run again with ``retry_failed``. A caller that
    ``exits_on_interrupt`` (the CLI) leaves running Ray tasks to end with it; otherwise
    a KeyboardInterrupt cancels them."""
    events = events or LaunchEvents()
    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    todo = todo_of(spec, results, name, force_new, retry_failed, events.planning)
    return _run_todo(todo, results, backend, address, events, exits_on_interrupt)


def resume_sweep(name: str, results: ResultsLike = "results", *, backend: Backend | BackendName | str = BackendName.RAY,
                 address: str | None = None, retry_failed: bool = False, events: LaunchEvents | None = None,
                 exits_on_interrupt: bool = False) -> LaunchSummary:
    """Finish the recorded sweep ``name`` from its stored spec (``run_sweep``'s options)."""
    events = events or LaunchEvents()
    return _run_todo(todo_of_recorded(results, name, retry_failed, events.planning), results, backend, address,
                     events, exits_on_interrupt)


def _run_todo(todo: Todo, results: ResultsLike, backend: Backend | BackendName | str, address: str | None,
              events: LaunchEvents, exits_on_interrupt: bool) -> LaunchSummary:
    """Start the backend, pack once for its capacity, run. A backend made here is closed
    when the sweep ends, but not after an interrupt: a Ray session the interrupted
    process started ends with the process (ending it first can abort the process)."""
    runner = backend if not isinstance(backend, str) else make_backend(BackendName(backend), address,
                                                                       exits_on_interrupt)
    interrupted = False
    try:
        resources = todo.spec.resources
        capacity = None
        if any(r.run_id not in todo.done for r in todo.runs):  # a sweep that is done needs no backend
            runner.start(resources)
            capacity = runner.capacity(resources)
        plan = todo.pack(capacity)
        events.running(plan)
        return launch(plan, results, runner, events.done)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if runner is not backend and not interrupted:
            runner.close()


def launch(plan: Plan, results: ResultsLike, backend: Backend,
           on_done: Callable[[FamilyOutcome], None] | None = None) -> LaunchSummary:
    """Take the sweep's lease, record the sweep, clean up after earlier interruptions,
    and run every family of ``plan`` on ``backend``: packed to fit the backend's capacity
    (``sweeps.capacity``), the largest families submitted first so that the small ones
    fill the gaps at the end.

    While another driver runs the sweep, this one is refused (``LeaseHeld``), and a
    results directory it cannot write to is refused (``StorageError``), both before
    anything is written or trained."""
    results = results_root(results)
    advice = (f"wait for it to finish or stop it, then run what is left with: theoryscope resume "
              f"{plan.sweep} --results {root_text(results)}")
    with acquire(results, f"sweep={plan.sweep}", f"sweep {plan.sweep!r}", advice):
        return _launch(_catch_up(results, plan), results, backend, on_done)


def _launch(plan: Plan, results: FilePath, backend: Backend,
            on_done: Callable[[FamilyOutcome], None] | None) -> LaunchSummary:
    if plan.families and plan.capacity is None:  # the CLI packs before its progress bar
        plan = fit_plan(plan, backend.capacity(plan.spec.resources))
    record_sweep(results, plan.sweep, plan.spec, len(plan.runs))
    removed = clean_sweep(results, plan.sweep)
    _drop_failed_families(results, plan)
    _drop_unfinished_families(results, plan.sweep)
    todo = sum(f.size for f in plan.families)
    summary = LaunchSummary(plan.sweep, results, len(plan.runs), len(plan.runs) - todo, len(plan.families),
                            removed=removed)
    largest_first = sorted(plan.families, key=lambda f: estimate_cost(f).flops, reverse=True)
    kept = plan_weights(plan.spec.store, plan.spec.measure, plan.runs).kept
    jobs = [FamilyJob(plan.sweep, f.family_id, f.runs, root_text(results), plan.spec.resources.num_gpus,
                      plan.spec.measure, kept) for f in largest_first]

    def finished(outcome: FamilyOutcome) -> None:
        summary.outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)

    start = time.perf_counter()
    try:
        if jobs:
            backend.run(jobs, plan.spec.resources, finished)
    finally:
        summary.wall_seconds = time.perf_counter() - start
    return summary

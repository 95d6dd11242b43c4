"""The ``sweeps`` table: one record per sweep, holding the spec it was launched with."""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import shlex
from dataclasses import dataclass

import pyarrow as pa

from theoryscope.core.errors import SweepNotFound
from theoryscope.storage import schemas
from theoryscope.storage.location import ResultsLike, existing_root, read_parquet, root_text
from theoryscope.storage.parquet import scan, table_path, write_atomic
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.plan import expand_runs
from theoryscope.sweeps.spec import SweepSpec
from theoryscope.sweeps.version import code_version


@dataclass(frozen=True)
class SweepRecord:
    sweep: str
    spec_text: str
    planned_runs: int
    created_at: dt.datetime

    def spec(self) -> SweepSpec:
        return parse_spec(self.spec_text, origin=f"the stored spec of sweep {self.sweep!r}")


def find_sweep(results: ResultsLike, sweep: str) -> SweepRecord | None:
    files = scan(results, "sweeps", sweep).complete
    if not files:
        return None
    row = read_parquet(files[0]).to_pylist()[0]
    return SweepRecord(sweep, row["spec"], row["planned_runs"], row["created_at"])


def recorded_sweep(results: ResultsLike, sweep: str) -> SweepRecord:
    """The record of ``sweep``; ``SweepNotFound`` (``sweep_not_found``) if it has none."""
    record = find_sweep(results, sweep)
    if record is None:
        raise sweep_not_found(results, sweep)
    return record


def list_sweeps(results: ResultsLike) -> list[str]:
    """The sweeps recorded in ``results``, which must exist (``existing_root``)."""
    root = existing_root(results)
    return sorted({p.parent.name.removeprefix("sweep=") for p in scan(root, "sweeps").complete})


def sweep_not_found(results: ResultsLike, sweep: str) -> SweepNotFound:
    """The error for a name with no record: which sweeps there are, a damaged record if
    there is one, and how to recover a sweep whose launch was stopped before it wrote its
    record (launching the spec again: what is in the results is not run twice)."""
    root = existing_root(results)
    names = list_sweeps(root)
    message = f"no sweep named {sweep!r} in {root_text(root)} (sweeps there: {', '.join(names) or 'none'})"
    close = difflib.get_close_matches(sweep, names, n=1)
    if close:
        message += f"; did you mean {close[0]!r}?"
    found = scan(root, "sweeps", sweep)
    broken = found.damaged + found.leftovers
    launch = shlex.join(["theoryscope", "launch", "SPEC.toml", "--name", sweep, "--results", root_text(root)])
    if broken:
        listed = ", ".join(map(str, broken[:3])) + (", ..." if len(broken) > 3 else "")
        return SweepNotFound(f"{message}; its record in the sweeps table is damaged or half-written ({listed}): "
                             f"launch its spec again to record it anew (runs already done are kept): {launch}")
    return SweepNotFound(f"{message}; if its launch was interrupted before it was recorded, launch the spec "
                         f"again: {launch}")


def same_experiment(a: SweepSpec, b: SweepSpec) -> bool:
    """Whether two specs plan the same runs and measure them the same way. Names, TOML
    formatting, resources and checkpoint cadence may differ: they do not change results."""
    return a.measure == b.measure and {r.run_id for r in expand_runs(a)} == {r.run_id for r in expand_runs(b)}


def record_sweep(results: ResultsLike, sweep: str, spec: SweepSpec, planned_runs: int) -> SweepRecord:
    """Write the sweep's record once; an existing record is kept as it is."""
    existing = find_sweep(results, sweep)
    if existing is not None:
        return existing
    now = dt.datetime.now(dt.timezone.utc)
    table = pa.Table.from_pylist([{
        "sweep": sweep, "spec": spec.source, "planned_runs": planned_runs,
        "created_at": now, "code_version": code_version(),
    }], schema=schemas.SWEEPS)
    key = hashlib.sha256(spec.source.encode()).hexdigest()[:16]
    write_atomic(table, table_path(results, "sweeps", sweep, key))
    return SweepRecord(sweep, spec.source, planned_runs, now)

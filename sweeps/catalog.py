"""The ``sweeps`` table: one record per sweep, holding the spec it was launched with."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import pyarrow as pa

from storage import schemas
from storage.location import ResultsLike, read_parquet
from storage.parquet import scan, table_path, write_atomic
from sweeps.load import parse_spec
from sweeps.plan import expand_runs
from sweeps.spec import SweepSpec
from sweeps.version import code_version


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


def list_sweeps(results: ResultsLike) -> list[str]:
    return sorted({p.parent.name.removeprefix("sweep=") for p in scan(results, "sweeps").complete})


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

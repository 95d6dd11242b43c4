"""The ``sweeps`` table: one record per sweep, holding the spec it was launched with."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage import schemas
from storage.parquet import partition_dir, table_path, write_atomic
from sweeps.load import parse_spec
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


def find_sweep(results: Path, sweep: str) -> SweepRecord | None:
    directory = partition_dir(results, "sweeps", sweep)
    files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    if not files:
        return None
    row = pq.read_table(files[0]).to_pylist()[0]
    return SweepRecord(sweep, row["spec"], row["planned_runs"], row["created_at"])


def list_sweeps(results: Path) -> list[str]:
    root = Path(results) / "sweeps"
    if not root.is_dir():
        return []
    return sorted(p.name.removeprefix("sweep=") for p in root.glob("sweep=*")
                  if any(p.glob("*.parquet")))


def same_experiment(a: SweepSpec, b: SweepSpec) -> bool:
    """Whether two specs plan the same runs with the same settings (names and TOML
    formatting aside)."""
    return dataclasses.replace(a, name="") == dataclasses.replace(b, name="")


def record_sweep(results: Path, sweep: str, spec: SweepSpec, planned_runs: int) -> SweepRecord:
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

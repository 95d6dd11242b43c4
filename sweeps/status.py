"""Where each sweep stands, from the results directory alone (which must exist)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

import pyarrow.compute as pc

from theoryscope.storage.location import ResultsLike
from theoryscope.sweeps.catalog import list_sweeps, recorded_sweep
from theoryscope.sweeps.execute import published_families
from theoryscope.sweeps.records import RunStatus


@dataclass(frozen=True)
class SweepStatus:
    sweep: str
    planned: int
    ok: int
    diverged: int
    failed: int
    created_at: dt.datetime
    last_progress: dt.datetime | None

    @property
    def done(self) -> int:
        return self.ok + self.diverged + self.failed

    @property
    def remaining(self) -> int:
        return max(0, self.planned - self.done)

    def to_json(self) -> dict:
        out = asdict(self) | {"done": self.done, "remaining": self.remaining}
        for key in ("created_at", "last_progress"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        return out


def sweep_status(results: ResultsLike, sweep: str | None = None) -> list[SweepStatus]:
    """Status of one sweep, or of every sweep in ``results`` (oldest first)."""
    names = list_sweeps(results)  # refuses results that do not exist
    if sweep is not None:
        names = [sweep]
    statuses = []
    for name in names:
        record = recorded_sweep(results, name)
        # Done: the runs of families whose every table has its complete file, as resume
        # counts them; a family with a file missing or damaged is still to run.
        runs: dict[str, set[str]] = {s.value: set() for s in RunStatus}
        finished = []
        for family in published_families(results, name, ("run_id", "status", "finished_at")):
            if family.complete:
                for row in family.rows.select(["run_id", "status"]).to_pylist():
                    runs.setdefault(row["status"], set()).add(row["run_id"])
                finished.append(pc.max(family.rows.column("finished_at")).as_py())
        finished = [t for t in finished if t is not None]
        statuses.append(SweepStatus(
            sweep=name, planned=record.planned_runs, ok=len(runs[RunStatus.OK.value]),
            diverged=len(runs[RunStatus.DIVERGED.value]), failed=len(runs[RunStatus.FAILED.value]),
            created_at=record.created_at, last_progress=max(finished, default=None),
        ))
    return sorted(statuses, key=lambda s: s.created_at)

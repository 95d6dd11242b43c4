"""Where each sweep stands, from the results directory alone."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

from core.errors import SweepNotFound
from storage.location import ResultsLike
from storage.query import run_query
from sweeps.catalog import find_sweep, list_sweeps


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
    names = list_sweeps(results)
    if sweep is not None:
        if sweep not in names:
            known = ", ".join(names) if names else "none"
            raise SweepNotFound(f"no sweep named {sweep!r} in {results} (sweeps there: {known})")
        names = [sweep]
    counts = {
        row["sweep"]: row for row in run_query(results, """
            SELECT sweep,
                   count(DISTINCT run_id) FILTER (WHERE status = 'ok') AS ok,
                   count(DISTINCT run_id) FILTER (WHERE status = 'diverged') AS diverged,
                   count(DISTINCT run_id) FILTER (WHERE status = 'failed') AS failed,
                   max(finished_at) AS last_progress
            FROM runs GROUP BY sweep""").to_pylist()
    }
    statuses = []
    for name in names:
        record = find_sweep(results, name)
        row = counts.get(name, {})
        statuses.append(SweepStatus(
            sweep=name, planned=record.planned_runs, ok=row.get("ok", 0),
            diverged=row.get("diverged", 0), failed=row.get("failed", 0),
            created_at=record.created_at, last_progress=row.get("last_progress"),
        ))
    return sorted(statuses, key=lambda s: s.created_at)

"""A live progress bar for a running sweep: families and runs done, runs/s, ETA."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sweeps.execute import FamilyOutcome
from sweeps.plan import Plan


class SweepProgress:
    """Context manager; ``advance`` is the ``on_done`` callback of ``sweeps.launch``."""

    def __init__(self, plan: Plan, console: Console, enabled: bool = True):
        self.enabled = enabled
        self.families_total = len(plan.families)
        self.runs_total = sum(f.size for f in plan.families)
        self.families_done = 0
        self.failed = 0
        self.start = time.perf_counter()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} runs"),
            TextColumn("{task.fields[families]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.progress.add_task(
            plan.sweep, total=self.runs_total, families=self._families(), rate="")

    def _families(self) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.families_done}/{self.families_total} families{failed}"

    def advance(self, outcome: FamilyOutcome) -> None:
        self.families_done += 1
        self.failed += outcome.n_failed
        done = self.progress.tasks[0].completed + outcome.n_runs
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.progress.update(self.task, completed=done, families=self._families(),
                             rate=f"{done / elapsed:.1f} runs/s")

    def __enter__(self) -> SweepProgress:
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()

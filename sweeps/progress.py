"""A live progress bar for a running sweep: families and runs done, runs/s, ETA."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from theoryscope.sweeps.execute import FamilyOutcome
from theoryscope.sweeps.plan import Plan


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
        self.stop()

    def stop(self) -> None:
        if self.enabled:
            self.progress.stop()


class PlanningProgress:
    """Context manager showing how far the planning of a large grid is (transient, on
    ``console``), after a warning for a very large one; ``advance`` is the
    ``on_planned`` callback of ``sweeps.plan``. Small grids plan in a blink and show
    nothing."""

    SHOWN_FROM = 20_000  # grid points
    WARNED_FROM = 100_000
    BYTES_PER_POINT = 6_000  # a planned run in memory, measured on a 10^6-point grid

    def __init__(self, console: Console, enabled: bool = True):
        self.console, self.enabled = console, enabled
        self.progress = Progress(TextColumn("planning"), BarColumn(),
                                 TextColumn("{task.completed:,}/{task.total:,} grid points"),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.task = None

    def advance(self, done: int, total: int) -> None:
        if not self.enabled or total < self.SHOWN_FROM:
            return
        if self.task is None:
            if total >= self.WARNED_FROM:
                self.console.print(
                    f"[yellow]warning:[/] {total:,} grid points: every one is expanded and held in memory "
                    f"before anything runs (about {total * self.BYTES_PER_POINT / 1024**3:.1f} GiB); several "
                    f"smaller sweeps start sooner", highlight=False)
            self.task = self.progress.add_task("planning", total=total)
            self.progress.start()
        self.progress.update(self.task, completed=done, total=total)

    def __enter__(self) -> PlanningProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.task is not None:
            self.progress.stop()

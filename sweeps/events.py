"""The vocabulary the CLI shares with ``sweeps.launch``, importable without what stands
behind it (so that ``--help`` starts at once): the backends a sweep runs on, by name, and
what a launch tells its caller as it goes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from theoryscope.core.config import Choice

if TYPE_CHECKING:
    from theoryscope.sweeps.execute import FamilyOutcome
    from theoryscope.sweeps.plan import Plan


class BackendName(Choice):
    RAY = "ray"
    LOCAL = "local"


class LaunchEvents:
    """What ``run_sweep`` tells its caller as it goes; here every event is ignored (the
    CLI's subclass draws progress bars from them)."""

    def planning(self, done: int, total: int) -> None:
        """Grid points expanded so far, of ``total``."""

    def running(self, plan: Plan) -> None:
        """The plan, packed for the backend, just before the sweep's lease is taken and
        its first family runs; until now nothing was written."""

    def done(self, outcome: FamilyOutcome) -> None:
        """A family finished; its rows are on disk."""

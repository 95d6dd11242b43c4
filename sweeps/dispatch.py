"""Where families run: one interface, two backends.

``LocalBackend`` runs families one after another in this process (debugging, fast
tests). ``RayBackend`` runs one Ray task per family, on the embedded local Ray by default
or on an existing cluster with an address. Both call ``execute_family``, so both produce
identical tables.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Protocol

from core.errors import TheoryscopeError
from sweeps.execute import FamilyJob, FamilyOutcome, execute_family, execute_in_worker
from sweeps.spec import Choice, ResourceSpec

OnDone = Callable[[FamilyOutcome], None]


class BackendName(Choice):
    RAY = "ray"
    LOCAL = "local"


class Backend(Protocol):
    def start(self) -> None:
        """Connect to (or start) whatever runs the families; idempotent."""

    def run(self, jobs: Sequence[FamilyJob], resources: ResourceSpec, on_done: OnDone) -> None:
        """Run every job, calling ``on_done`` in the driver as each one finishes."""


class LocalBackend:
    """Families one after another, in this process."""

    def start(self) -> None:
        pass

    def run(self, jobs: Sequence[FamilyJob], resources: ResourceSpec, on_done: OnDone) -> None:
        for job in jobs:
            on_done(execute_family(job))


class RayBackend:
    """One Ray task per family, with the spec's CPUs and GPUs.

    With no address (and no ``RAY_ADDRESS``) ``ray.init`` starts a local Ray on this
    machine, without a dashboard and with Ray's token authentication left as Ray sets it.
    A Ray session already open in this process (a notebook, a test) is reused.
    """

    def __init__(self, address: str | None = None):
        self.address = address

    def start(self) -> None:
        import ray

        if ray.is_initialized():
            return
        try:
            ray.init(address=self.address, include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "the local machine"
            raise TheoryscopeError(f"cannot start or reach Ray at {where}: {exc}") from None

    def run(self, jobs: Sequence[FamilyJob], resources: ResourceSpec, on_done: OnDone) -> None:
        import ray
        from ray.exceptions import RayError

        self.start()
        threads = max(1, math.floor(resources.num_cpus))
        task = ray.remote(execute_in_worker).options(
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus,
            max_retries=resources.max_retries, retry_exceptions=False,
        )
        pending = {task.remote(job, threads): job for job in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except RayError as exc:  # the worker died past its retries, or our code raised
                    first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                    outcome = FamilyOutcome(job.family_id, len(job.runs), 0, 0, len(job.runs),
                                            0.0, "unknown", f"{type(exc).__name__}: {first}")
                on_done(outcome)


def make_backend(name: BackendName, address: str | None) -> Backend:
    if name is BackendName.LOCAL:
        if address:
            raise TheoryscopeError("--address needs --backend ray (the local backend runs in this process)")
        return LocalBackend()
    return RayBackend(address)

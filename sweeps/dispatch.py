"""Where families run: one interface, two backends.

``LocalBackend`` runs families one after another in this process (debugging, fast
tests). ``RayBackend`` runs one Ray task per family, on the embedded local Ray by default
or on an existing cluster with an address. Both call ``execute_family``, so both produce
identical tables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from theoryscope.core.errors import TheoryscopeError
from theoryscope.sweeps.capacity import FALLBACK_GPU_BYTES, capacity_for, local_gpu_bytes, local_node
from theoryscope.sweeps.events import BackendName
from theoryscope.sweeps.execute import (
    FamilyJob, FamilyOutcome, execute_family, execute_in_worker, record_failure, warm_worker,
)
from theoryscope.sweeps.package import stage_package
from theoryscope.sweeps.plan import Capacity
from theoryscope.sweeps.spec import ResourceSpec

OnDone = Callable[[FamilyOutcome], None]


class Backend(Protocol):
    def start(self, resources: ResourceSpec) -> None:
        """Connect to (or start) whatever runs the families, and check that it can give a
        family ``resources``; idempotent."""

    def run(self, jobs: Sequence[FamilyJob], resources: ResourceSpec, on_done: OnDone) -> None:
        """Run every job, calling ``on_done`` in the driver as each one finishes."""

    def capacity(self, resources: ResourceSpec) -> Capacity | None:
        """How many families of ``resources`` run at once and the memory each may fill
        (after ``start``); None if unknown."""

    def close(self) -> None:
        """Release what ``start`` started; idempotent."""


class LocalBackend:
    """Families one after another, in this process."""

    def start(self, resources: ResourceSpec) -> None:
        pass  # a family asking for a GPU where there is none trains on the CPU

    def close(self) -> None:
        pass

    def run(self, jobs: Sequence[FamilyJob], resources: ResourceSpec, on_done: OnDone) -> None:
        with torch_threads(family_threads(resources)):
            for job in jobs:
                on_done(execute_family(job))

    def capacity(self, resources: ResourceSpec) -> Capacity | None:
        """One family at a time, with this machine's memory (or its GPU's)."""
        node = local_node()
        if resources.num_gpus > 0 and node["GPU"] > 0:
            return capacity_for([{"GPU": resources.num_gpus}], resources, local_gpu_bytes())
        cpu_only = dataclasses.replace(resources, num_gpus=0.0)
        return capacity_for([{"CPU": resources.num_cpus, "memory": node["memory"]}], cpu_only)


class RayBackend:
    """One Ray task per family, with the spec's CPUs and GPUs.

    With no address (and no ``RAY_ADDRESS``) ``ray.init`` starts a local Ray on this
    machine: no dashboard, every port bound to 127.0.0.1, Ray's token authentication
    left as Ray sets it (on, unless ``RAY_AUTH_MODE`` says otherwise; Ray's warning that
    it is on by default, printed on every start, is kept off the terminal: README says
    it once), and health checks patient enough for a machine whose every core is busy. With an address it joins that cluster and ships theoryscope's packages to
    it. A Ray session already open in this process (a notebook, a test) is reused, and
    left open by ``close``.
    """

    def __init__(self, address: str | None = None,
                 task: Callable[[FamilyJob, int], FamilyOutcome] = execute_in_worker,
                 cancel_on_interrupt: bool = True):
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.task = task  # what each Ray task runs; tests inject faults here
        # A driver that exits right after a Ctrl-C needs no cancelling: Ray ends a dead
        # driver's tasks (and the embedded Ray dies with it). Cancelling races with tasks
        # that are finishing, which Ray 2.60 can answer by aborting the driver.
        self.cancel_on_interrupt = cancel_on_interrupt
        self.started_here = False  # whether ``close`` shuts Ray down
        self.restarts = 0  # times the embedded Ray was started again after it died
        self._warming: list = []  # the warm-up tasks of the embedded Ray's workers

    def start(self, resources: ResourceSpec) -> None:
        import ray

        if not ray.is_initialized():
            self._connect()
        if not self.address:
            # A cluster may autoscale to fit; the local Ray is all there is.
            _check_feasible(resources, [n["Resources"] for n in ray.nodes() if n.get("Alive")])

    def _connect(self) -> None:
        import ray

        options: dict = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True}
        try:
            with contextlib.ExitStack() as stack:
                if self.address:
                    _check_reachable(self.address)
                    # Nodes of an existing cluster need not have theoryscope installed:
                    # ship the package with the job (they still need torch, numpy,
                    # pyarrow). Ray uploads it in ray.init; the staged copy goes after.
                    staging = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="theoryscope-")))
                    options["runtime_env"] = {"py_modules": [str(stage_package(staging))]}
                else:
                    options |= {"_node_ip_address": LOOPBACK, "_system_config": EMBEDDED_SYSTEM_CONFIG}
                    stack.enter_context(_quiet_logger(AUTH_SETUP_LOGGER))
                stack.enter_context(sigint_ignored(not self.address))
                stack.enter_context(_loopback_only(not self.address))
                # "local": a new Ray of our own. With no address Ray would join whatever
                # cluster `ray start` last recorded in /tmp/ray (even a dead one).
                ray.init(address=self.address or "local", **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "the local machine"
            raise TheoryscopeError(f"cannot start or reach Ray at {where}: {exc}") from None
        self.started_here = True
        if not self.address:
            # Fresh workers spend seconds importing torch and theoryscope; let them do it
            # while the driver plans and records the sweep, not on the first families' clock.
            warm = ray.remote(num_cpus=1)(warm_worker)
            self._warming = [warm.remote() for _ in range(int(ray.cluster_resources().get("CPU", 1)))]

    def close(self) -> None:
        """Shut down the Ray this backend started (not a session it reused); Ctrl-C
        cannot interrupt it half-way, since everything is already on disk."""
        import ray

        if not (self.started_here and ray.is_initialized()):
            return
        with sigint_ignored():
            if self._warming:  # let warm-up imports finish: Ray complains about tasks it drops
                with contextlib.suppress(Exception):
                    ray.wait(self._warming, num_returns=len(self._warming), timeout=WARM_WAIT_SECONDS)
            self._warming = []
            ray.shutdown()
        self.started_here = False

    def capacity(self, resources: ResourceSpec) -> Capacity | None:
        """From the live nodes' Ray resources; a GPU's memory is asked of a GPU task when
        the driver has no GPU of its own."""
        import ray

        self.start(resources)
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        if not self.address and len(nodes) == 1:
            # The embedded Ray: this machine's physical memory, as ``theoryscope plan`` counts it.
            nodes = [{**nodes[0], "memory": local_node()["memory"]}]
        gpu_bytes = FALLBACK_GPU_BYTES
        if resources.num_gpus > 0:
            gpu_bytes = local_gpu_bytes() if local_node()["GPU"] > 0 else _remote_gpu_bytes(resources)
        return capacity_for(nodes, resources, gpu_bytes)

    def run(self, jobs: Sequence[FamilyJob], resources: ResourceSpec, on_done: OnDone) -> None:
        """Submit every family, report each as it finishes. A family whose worker died
        more often than ``max_retries`` is recorded as failed. If the embedded Ray itself
        dies (its raylet lost, as happens on an overloaded machine), it is started again
        and the families it lost are submitted again, up to ``MAX_LOCAL_RESTARTS`` times.
        On KeyboardInterrupt the interrupt propagates (finished families stay); with
        ``cancel_on_interrupt`` every family still running or queued is cancelled first,
        without it (a driver about to exit) they are left to end with the driver."""
        import ray

        self.start(resources)
        submit = self._submitter(resources)
        pending = {submit(job): job for job in jobs}
        try:
            while pending:
                try:
                    self._collect(pending, on_done)
                except _LocalRayLost:
                    lost = list(pending.values())
                    self._restart(resources)
                    submit = self._submitter(resources)
                    pending = {submit(job): job for job in lost}
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt) and not self.cancel_on_interrupt:
                raise
            # A gentle cancel raises KeyboardInterrupt in the task at its next bytecode;
            # force=True (killing workers) made Ray 2.60 abort on replies of tasks that
            # were finishing. Best effort: Ray may be going down too.
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
            raise

    def _submitter(self, resources: ResourceSpec) -> Callable[[FamilyJob], object]:
        import ray

        task = ray.remote(self.task).options(
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus,
            max_retries=resources.max_retries, retry_exceptions=False,
        )
        threads = family_threads(resources)
        return lambda job: task.remote(job, threads)

    def _collect(self, pending: dict, on_done: OnDone) -> None:
        """Wait for the next finished families and report them (removing them from
        ``pending``); raises ``_LocalRayLost`` when the embedded Ray has died."""
        import ray
        from ray.exceptions import RayError

        try:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)  # a timeout, so Ctrl-C is seen
        except RayError as exc:
            if self._local_ray_lost(exc):
                raise _LocalRayLost from exc
            raise
        for ref in done:
            try:
                outcome = ray.get(ref)
            except RayError as exc:  # the worker died past its retries, or our code raised
                if self._local_ray_lost(exc):
                    raise _LocalRayLost from exc
                outcome = record_failure(pending[ref], _one_line(exc))
            del pending[ref]
            on_done(outcome)

    def _local_ray_lost(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the embedded Ray's own node is gone (and may be restarted)."""
        from ray.exceptions import LocalRayletDiedError, NodeDiedError, RaySystemError

        lost = isinstance(exc, (LocalRayletDiedError, NodeDiedError, RaySystemError))
        return lost and not self.address and self.started_here and self.restarts < MAX_LOCAL_RESTARTS

    def _restart(self, resources: ResourceSpec) -> None:
        import ray

        self.restarts += 1
        logging.getLogger(__name__).warning("the local Ray died; starting it again (%d of %d)",
                                            self.restarts, MAX_LOCAL_RESTARTS)
        with sigint_ignored(), contextlib.suppress(Exception):
            ray.shutdown()
        self.started_here = False
        self.start(resources)


class _LocalRayLost(Exception):
    """The embedded Ray's node died under the driver."""


# The embedded Ray listens on the loopback interface only: nothing off this machine
# needs to reach it.
LOOPBACK = "127.0.0.1"
# Health checks of the embedded Ray: Ray marks a node dead after its raylet fails
# `failure_threshold` checks in a row, each one waiting up to `timeout_ms`. On a machine
# whose every core is busy a raylet can be slow to answer without being dead, and one
# node marked dead is the whole embedded cluster: an unresponsive raylet is given about
# 100 s instead of Ray's 50 s, while a killed one (its port closed) is still noticed in
# about 15 s.
EMBEDDED_SYSTEM_CONFIG = {"health_check_timeout_ms": 20_000, "health_check_period_ms": 3_000,
                          "health_check_failure_threshold": 5}
MAX_LOCAL_RESTARTS = 2
# How long ``close`` lets the workers' warm-up imports finish before shutting down.
WARM_WAIT_SECONDS = 10.0


# Where Ray 2.60 says, on every start of a local Ray, that token authentication is on.
AUTH_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Errors only from logger ``name`` while the block runs."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _loopback_only(active: bool) -> Iterator[None]:
    """Make Ray see this machine's address as 127.0.0.1 while it starts its local
    daemons, so that they bind the loopback interface only. Ray does that by itself on
    macOS and Windows; on Linux it takes the address other hosts would reach, and
    ``ray.init(_node_ip_address="127.0.0.1")`` alone is turned back into that address."""
    if not active:
        yield
        return
    from ray._private import ray_constants

    previous = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous


@contextlib.contextmanager
def sigint_ignored(active: bool = True) -> Iterator[None]:
    """SIGINT ignored meanwhile. While the embedded Ray's daemons start, because the
    disposition survives exec: a terminal sends Ctrl-C to its whole foreground process
    group, which holds those daemons too, and they must not die under the driver. While
    Ray shuts down, because a KeyboardInterrupt inside its teardown ends in a traceback
    or a crash, and there is nothing left to interrupt."""
    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def family_threads(resources: ResourceSpec) -> int:
    """Torch threads of a family: the CPUs it was given (at least one), so families
    sharing a machine do not oversubscribe it."""
    return max(1, math.floor(resources.num_cpus))


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` torch threads, then restore the caller's setting."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _remote_gpu_bytes(resources: ResourceSpec, timeout: float = 60.0) -> int:
    """One GPU's memory, asked of a task on a GPU node (the default if none answers)."""
    import ray

    probe = ray.remote(num_gpus=resources.num_gpus, num_cpus=0)(local_gpu_bytes).remote()
    try:
        return ray.get(probe, timeout=timeout)
    except Exception:  # no GPU node up yet (an autoscaling cluster): the default
        ray.cancel(probe)
        return FALLBACK_GPU_BYTES


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def _check_feasible(resources: ResourceSpec, nodes: list[dict[str, float]]) -> None:
    """Refuse a family no node can host: Ray would keep it pending forever."""
    need = {"CPU": resources.num_cpus, "GPU": resources.num_gpus}
    if any(all(node.get(k, 0.0) >= v for k, v in need.items() if v > 0) for node in nodes):
        return
    most = {k: max((node.get(k, 0.0) for node in nodes), default=0.0) for k in need}
    raise TheoryscopeError(
        f"no Ray node can run a family: resources ask for {resources.num_cpus:g} CPUs and "
        f"{resources.num_gpus:g} GPUs per family, the largest node has {most['CPU']:g} CPUs and "
        f"{most['GPU']:g} GPUs; lower resources.num_cpus / resources.num_gpus"
        + (" (or use --backend local, which trains on the CPU when no GPU is visible)"
           if resources.num_gpus > most["GPU"] else "")
    )


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a cluster address nothing listens at (Ray itself retries for minutes).
    Only plain ``host:port`` addresses are probed; ``auto`` and ``ray://`` are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise TheoryscopeError(
            f"cannot reach Ray at {address}: {exc.strerror or exc}; is the cluster running, and is "
            f"this the host:port of its head node (the address `ray start --head` printed)?"
        ) from None


def make_backend(name: BackendName, address: str | None, exits_on_interrupt: bool = False) -> Backend:
    """``address`` is an explicit ``--address``; ``RAY_ADDRESS`` only matters to Ray. A
    process that ``exits_on_interrupt`` (the CLI) does not cancel Ray tasks first: Ray
    ends a dead driver's tasks by itself."""
    if name is BackendName.LOCAL:
        if address:
            raise TheoryscopeError("--address needs --backend ray (the local backend runs in this process)")
        return LocalBackend()
    return RayBackend(address, cancel_on_interrupt=not exits_on_interrupt)

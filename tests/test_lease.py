"""One driver per sweep: the lease in the results directory (taken, refused while its
holder lives, taken over once it is gone, released only by its holder, kept alive by a
heartbeat), two launches of one sweep at once, and a results directory that cannot be
written refused before anything trains."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import REPO, SMALL_SPEC
from theoryscope.cli import app
from theoryscope.core.errors import StorageError
from theoryscope.storage import lease as storage_lease
from theoryscope.storage.lease import Holder, LeaseHeld, acquire, lease_path, read_holder
from theoryscope.storage.location import results_root
from theoryscope.sweeps.catalog import list_sweeps
from theoryscope.sweeps.dispatch import LocalBackend
from theoryscope.sweeps.launch import launch, prepare, prepare_resume
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.status import sweep_status
from theoryscope.sweeps.tables import TABLES, debris, run_query

KEY = "sweep=small"


def take(results, **kwargs):
    return acquire(results, KEY, "sweep 'small'", "wait for it", **kwargs)


def plant(results, host: str = socket.gethostname(), pid: int = 1, silent: float = 0.0) -> Holder:
    """Write a lease held by someone else, last heard of ``silent`` seconds ago."""
    then = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=silent)).isoformat()
    holder = Holder(host, pid, "someone-else", then, then)
    path = lease_path(results, KEY)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(holder.encode())
    return holder


def holder_of(results) -> Holder:
    return read_holder(lease_path(results, KEY))[1]


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_lease_names_its_holder_and_refuses_a_second_taker(results):
    lease = take(results)
    held = holder_of(results)
    assert (held.host, held.pid, held.token) == (socket.gethostname(), os.getpid(), lease.holder.token)
    assert set(json.loads(lease_path(results, KEY).read_text())) == {
        "host", "pid", "token", "started_at", "heartbeat_at"}
    with pytest.raises(LeaseHeld) as refused:
        take(results)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("sweep 'small' is in use by another driver")
    assert f"host {socket.gethostname()}, pid {os.getpid()}, since 20" in message and "wait for it" in message
    assert holder_of(results).token == lease.holder.token  # the refused taker changed nothing
    assert lease.release() and not lease_path(results, KEY).exists()
    take(results).release()  # free again


def test_a_live_holder_is_honoured_until_its_heartbeat_is_stale(results):
    parent = os.getppid()  # alive, and not us
    plant(results, pid=parent, silent=30)
    with pytest.raises(LeaseHeld, match=f"pid {parent}, .*last heartbeat 30 s ago"):
        take(results)
    plant(results, pid=parent, silent=61)
    lease = take(results)
    assert holder_of(results).token == lease.holder.token
    lease.release()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(results):
    plant(results, pid=dead_pid(), silent=0)
    lease = take(results)
    assert holder_of(results).pid == os.getpid()
    lease.release()


def test_a_holder_on_another_host_is_taken_over_only_when_stale(results):
    plant(results, host="elsewhere", pid=dead_pid(), silent=5)  # its pid means nothing here
    with pytest.raises(LeaseHeld, match="host elsewhere"):
        take(results)
    plant(results, host="elsewhere", silent=120)
    take(results).release()


@pytest.mark.parametrize("before", ["none", "stale"])
def test_of_many_takers_at_once_exactly_one_wins(results, before):
    if before == "stale":
        plant(results, host="elsewhere", silent=600)
    start = threading.Barrier(8)

    def attempt(_):
        start.wait()
        try:
            return take(results)
        except LeaseHeld:
            return None

    with ThreadPoolExecutor(8) as pool:
        won = [lease for lease in pool.map(attempt, range(8)) if lease is not None]
    assert len(won) == 1 and holder_of(results).token == won[0].holder.token
    assert won[0].release()
    assert list(lease_path(results, KEY).parent.iterdir()) == []


def test_without_hard_links_the_lease_is_created_exclusively(results, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_links)
    lease = take(results)
    assert holder_of(results).token == lease.holder.token
    with pytest.raises(LeaseHeld):
        take(results)
    assert lease.release()
    assert list(lease_path(results, KEY).parent.iterdir()) == []  # no temporary file left


def test_an_unreadable_lease_file_is_judged_by_its_age(results):
    path = lease_path(results, KEY)
    path.parent.mkdir(parents=True)
    path.write_text("garbage")
    with pytest.raises(LeaseHeld, match="does not parse"):
        take(results)
    os.utime(path, (time.time() - 120, time.time() - 120))
    take(results).release()


def test_release_removes_only_our_own_lease(results):
    lease = take(results)
    theirs = plant(results, pid=os.getppid())  # taken over while we were silent
    assert not lease.release()
    assert holder_of(results) == theirs


def test_the_heartbeat_refreshes_the_lease_and_notices_when_it_is_lost(results):
    with take(results, heartbeat_seconds=0.05) as lease:
        first = holder_of(results).heartbeat_at
        deadline = time.monotonic() + 10
        while holder_of(results).heartbeat_at == first and time.monotonic() < deadline:
            time.sleep(0.02)
        now = holder_of(results)
        assert now.heartbeat_at > first and now.started_at == lease.holder.started_at
        theirs = plant(results, pid=os.getppid())
        deadline = time.monotonic() + 10
        while not lease.lost and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lease.lost and holder_of(results) == theirs  # not overwritten
    assert holder_of(results) == theirs  # and not released


def test_leaving_the_block_releases_the_lease_whatever_ends_it(results):
    with pytest.raises(KeyboardInterrupt):
        with take(results):
            raise KeyboardInterrupt
    assert not lease_path(results, KEY).exists()


def test_leases_are_not_tables(results):
    launch(prepare(parse_spec(SMALL_SPEC), results), results, LocalBackend())
    with take(results):
        assert "leases" not in TABLES
        found = debris(results)
        assert found.damaged == [] and found.leftovers == []
        assert run_query(results, "SELECT count(*) AS n FROM runs").to_pylist() == [{"n": 8}]
        assert sweep_status(results, "small")[0].remaining == 0  # status takes no lease


def test_a_launch_holds_the_lease_and_releases_it_on_error(results, monkeypatch):
    seen = []

    class Watching(LocalBackend):
        def run(self, jobs, resources, on_done):
            seen.append(holder_of(results))
            raise KeyboardInterrupt

    plan = prepare(parse_spec(SMALL_SPEC), results)
    with pytest.raises(KeyboardInterrupt):
        launch(plan, results, Watching())
    assert seen[0].pid == os.getpid() and not lease_path(results, KEY).exists()


def test_a_launch_refused_by_a_live_lease_writes_nothing(results, monkeypatch):
    plant(results, pid=os.getppid())
    monkeypatch.setattr("theoryscope.core.train.train_family", lambda *a: pytest.fail("trained"))
    plan = prepare(parse_spec(SMALL_SPEC), results)
    with pytest.raises(LeaseHeld, match=f"theoryscope resume small --results {results.resolve()}"):
        launch(plan, results, LocalBackend())
    assert sorted(p.name for p in results.rglob("*") if p.is_file()) == [f"{KEY}.json"]


def test_a_plan_made_before_another_driver_finished_runs_only_what_is_left(results):
    """The second driver planned while the first still ran, and took the lease after
    the first one had finished: it trains nothing twice."""
    spec = parse_spec(SMALL_SPEC)
    stale = prepare(spec, results)
    launch(prepare(spec, results), results, LocalBackend())
    before = run_query(results, "SELECT run_id, finished_at FROM runs ORDER BY run_id")
    summary = launch(stale, results, LocalBackend())
    assert summary.outcomes == [] and summary.already_done == 8
    assert run_query(results, "SELECT run_id, finished_at FROM runs ORDER BY run_id") == before


def test_a_results_directory_that_cannot_be_written_is_refused_before_training(results, monkeypatch):
    """As root, permission bits do not stop writes; the filesystem refusing is simulated
    here (the real read-only mount is the next test)."""
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    plan = prepare(parse_spec(SMALL_SPEC), results)
    monkeypatch.setattr(Path, "mkdir", refuse)
    monkeypatch.setattr("theoryscope.core.train.train_family", lambda *a: pytest.fail("trained"))
    with pytest.raises(StorageError) as refused:
        launch(plan, results, LocalBackend())
    assert str(refused.value) == \
        f"cannot write to results directory {results.resolve()}: Read-only file system"
    assert not results.exists()


def read_only_mount_works() -> bool:
    """Whether this process may bind-mount a directory read-only in a mount namespace of
    its own (root with CAP_SYS_ADMIN; the mount is gone when the namespace ends)."""
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as probe:
        script = (f"mount --bind {probe} {probe} && mount -o remount,ro,bind {probe} {probe} "
                  f"&& ! touch {probe}/x")
        return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True).returncode == 0


@pytest.mark.skipif(not read_only_mount_works(), reason="needs unshare -m and bind mounts (root)")
def test_a_read_only_results_directory_is_refused_before_anything_trains(write_spec, tmp_path):
    """A real read-only filesystem: the results are bind-mounted read-only in a mount
    namespace of the CLI's own; resume would have a family to train."""
    spec = write_spec(SMALL_SPEC)
    results = tmp_path / "ro" / "results"
    launch(prepare(parse_spec(SMALL_SPEC), results), results, LocalBackend())
    first = sorted(p for p in (results / "curves" / "sweep=small").iterdir())[0]
    first.unlink()
    before = {str(p): p.stat().st_mtime_ns for p in results.rglob("*")}
    ro = tmp_path / "ro"
    script = (f"mount --bind {ro} {ro} && mount -o remount,ro,bind {ro} {ro} && exec {sys.executable} -m cli "
              f"resume small --results {results} --backend local")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"error: cannot write to results directory {results}: Read-only file system"], \
        done.stderr
    assert {str(p): p.stat().st_mtime_ns for p in results.rglob("*")} == before
    assert len(prepare_resume(results, "small").families) == 1 and spec.exists()


# Two families, each a few seconds of training on one CPU.
SLOW = SMALL_SPEC.replace("steps = 30", "steps = 4000").replace("log_every = 10", "log_every = 500")


@pytest.mark.slow  # a real second process
def test_two_launches_of_one_sweep_at_once_train_each_family_once(write_spec, results, tmp_path):
    spec = write_spec(SLOW)
    with open(tmp_path / "first.out", "w") as out, open(tmp_path / "first.err", "w") as err:
        first = subprocess.Popen([sys.executable, "-m", "theoryscope.cli", "launch", str(spec), "--results", str(results),
                                  "--backend", "local", "--json"], cwd=REPO, stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while read_holder(lease_path(results, KEY)) is None or not list_sweeps(results):
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.err").read_text()
            time.sleep(0.05)
        second = CliRunner().invoke(app, ["launch", str(spec), "--results", str(results),
                                          "--backend", "local"])
        still_running = first.poll() is None
        status = sweep_status(results, "small")[0]  # read-only commands take no lease
    finally:
        first.wait(timeout=300)
    assert still_running, "the first launch ended before the second one started; make SLOW slower"
    assert second.exit_code == 1, second.output
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in second.output, second.stderr
    holder = f"(host {socket.gethostname()}, pid {first.pid}, since "
    assert lines[0].startswith(f"error: sweep 'small' is in use by another driver {holder}")
    assert "theoryscope resume small" in lines[0] and status.planned == 8

    assert first.returncode == 0, (tmp_path / "first.err").read_text()
    assert json.loads((tmp_path / "first.out").read_text())["ran"] == 8
    rows = run_query(results, "SELECT count(*) AS n, count(DISTINCT run_id) AS d, "
                              "count(DISTINCT family_id) AS f, "
                              "count(DISTINCT (family_id, finished_at)) AS trained FROM runs").to_pylist()
    assert rows == [{"n": 8, "d": 8, "f": 2, "trained": 2}]  # each family trained once, by the first
    curves = run_query(results, "SELECT count(*) AS n, count(DISTINCT (run_id, step)) AS d "
                                "FROM curves").to_pylist()
    assert curves == [{"n": 8 * 9, "d": 8 * 9}]
    assert not lease_path(results, KEY).exists()


def test_a_lease_in_an_object_store(s3_server, monkeypatch):
    monkeypatch.setattr(storage_lease, "STORE_SETTLE_SECONDS", 0.05)
    root = results_root(s3_server("lease"))
    lease = take(root)
    assert holder_of(root).token == lease.holder.token
    with pytest.raises(LeaseHeld, match=f"pid {os.getpid()}"):
        take(root)
    assert lease.release() and read_holder(lease_path(root, KEY)) is None
    stale = Holder("elsewhere", 1, "old", "2000-01-01T00:00:00+00:00", "2000-01-01T00:00:00+00:00")
    path = lease_path(root, KEY)
    with path.fs.open_output_stream(path.path) as stream:
        stream.write(stale.encode())
    with take(root, heartbeat_seconds=0.05) as lease:
        assert holder_of(root).token == lease.holder.token
    assert read_holder(path) is None

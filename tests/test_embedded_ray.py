"""The embedded local Ray: reachable from this machine only, started again when it dies
under a sweep, shut down without a traceback whenever Ctrl-C comes, and every path gives
a family exactly its CPUs as torch threads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from helpers import REPO, SLOW_SPEC, SMALL_SPEC, assert_exactly_once, families_done, kill_session, start, wait_for
from theoryscope.sweeps import dispatch, execute
from theoryscope.sweeps.dispatch import LocalBackend, RayBackend
from theoryscope.sweeps.execute import FamilyOutcome, execute_in_worker
from theoryscope.sweeps.spec import ResourceSpec
from theoryscope.sweeps.tables import run_query

LISTENING = "0A"  # TCP_LISTEN in /proc/net/tcp


def listening_sockets(pids: set[int]) -> list[tuple[int, str]]:
    """(pid, local address) of every TCP socket in the LISTEN state owned by ``pids``."""
    inodes: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTENING:
                inodes[fields[9]] = fields[1]
    found = []
    for pid in pids:
        try:
            links = [os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        for link in links:
            if link.startswith("socket:[") and link[8:-1] in inodes:
                found.append((pid, inodes[link[8:-1]]))
    return found


def is_loopback(hex_address: str) -> bool:
    """/proc/net/tcp{,6} addresses: 127.x.x.x, ::1, or ::ffff:127.x.x.x (IPv4-mapped)."""
    host = hex_address.split(":")[0]
    if len(host) == 8:  # IPv4, one little-endian word
        return host[-2:] == "7F"
    # IPv6, four little-endian words: ::1, or ::ffff:127.x.x.x
    return host == "0" * 24 + "01000000" or (host[:24] == "0000000000000000FFFF0000" and host[-2:] == "7F")


def test_loopback_addresses_are_read_right():
    assert is_loopback("0100007F:1F90") and not is_loopback("00000000:1F90")
    assert is_loopback("0000000000000000FFFF00000100007F:1F90")
    assert is_loopback("00000000000000000000000001000000:1F90")
    assert not is_loopback("00000000000000000000000000000000:1F90")
    assert not is_loopback("0000000000000000FFFF00000202000A:1F90")


EMBEDDED = textwrap.dedent("""
    import json, os, subprocess, sys
    from theoryscope.sweeps.dispatch import RayBackend
    from theoryscope.sweeps.spec import ResourceSpec
    backend = RayBackend()
    backend.start(ResourceSpec())
    import ray
    ray.get([ray.remote(lambda: 1).remote() for _ in range(2)])  # workers up
    pids = subprocess.run(["ps", "-e", "-o", "pid=,sid="], capture_output=True, text=True).stdout.split()
    sid = os.getsid(0)
    print(json.dumps([int(p) for p, s in zip(pids[::2], pids[1::2]) if int(s) == sid]), flush=True)
    sys.stdin.readline()
    backend.close()
""")


@pytest.mark.slow
def test_the_embedded_ray_listens_on_loopback_only(tmp_path):
    import json

    with subprocess.Popen([sys.executable, "-c", EMBEDDED], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, start_new_session=True) as proc:
        try:
            sockets = listening_sockets(set(json.loads(proc.stdout.readline())))
            proc.communicate("\n", timeout=60)
        finally:
            kill_session(proc)
    assert len(sockets) >= 3  # the GCS, the raylet, the workers
    assert [s for s in sockets if not is_loopback(s[1])] == []
    assert proc.returncode == 0


def test_close_leaves_a_reused_ray_session_open(ray_session):
    backend = RayBackend()
    backend.start(ResourceSpec())
    backend.close()
    assert ray_session.is_initialized()


@pytest.mark.slow
def test_a_raylet_killed_mid_sweep_is_started_again_and_the_sweep_completes(write_spec, results):
    spec = write_spec(SLOW_SPEC.format(extra=""))
    proc = start("launch", spec, "--results", results, log=results.parent / "launch")
    try:
        wait_for(lambda: families_done(results) >= 1)
        raylets = subprocess.run(["pgrep", "-P", str(proc.pid), "-x", "raylet"], capture_output=True, text=True)
        os.kill(int(raylets.stdout.split()[0]), signal.SIGKILL)
        assert proc.wait(timeout=300) == 0, (results.parent / "launch.err").read_text()
    finally:
        kill_session(proc)
    assert "starting it again (1 of" in (results.parent / "launch.err").read_text()
    assert_exactly_once(results)


TINY = """
name = "tiny"
[data]
n_train = 32
n_test = 32
input_dim = 4
[train]
steps = 20
log_every = 10
[grid]
seed = [0, 1]
"""


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.3, 0.8, 1.5, 2.5])
def test_ctrl_c_while_ray_shuts_down_after_the_summary_exits_0_cleanly(write_spec, tmp_path, delay):
    """The summary is printed, then the embedded Ray shuts down (seconds): Ctrl-C at any
    moment of it changes nothing, the sweep is done."""
    spec = write_spec(TINY)
    log = tmp_path / f"launch-{delay}"
    proc = start("launch", spec, "--results", tmp_path / "results", log=log)
    try:
        wait_for(lambda: "results" in Path(f"{log}.out").read_text() and "└" in Path(f"{log}.out").read_text(),
                 timeout=180)
        time.sleep(delay)
        try:
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
        except ProcessLookupError:
            pass  # done already
        code = proc.wait(timeout=60)
    finally:
        kill_session(proc)
    stderr = Path(f"{log}.err").read_text()
    assert code == 0, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr


@pytest.mark.slow
def test_ctrl_c_while_planning_exits_130_and_writes_nothing(write_spec, tmp_path):
    seeds = ", ".join(map(str, range(200_000)))
    spec = write_spec(TINY.replace("seed = [0, 1]", f"seed = [{seeds}]"))
    log, results = tmp_path / "launch", tmp_path / "results"
    proc = start("launch", spec, "--results", results, log=log)
    try:
        wait_for(lambda: "grid points" in Path(f"{log}.err").read_text() or proc.poll() is not None, timeout=120)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        kill_session(proc)
    stderr = Path(f"{log}.err").read_text()
    assert code == 130, stderr
    assert "interrupted before anything ran" in stderr and "Traceback" not in stderr
    assert not results.exists()


def recording_threads(monkeypatch) -> list[int]:
    seen: list[int] = []

    def fake(job):
        seen.append(torch.get_num_threads())
        return FamilyOutcome(job.family_id, len(job.runs), len(job.runs), 0, 0, 0.0, "cpu")

    monkeypatch.setattr(dispatch, "execute_family", fake)
    monkeypatch.setattr(execute, "execute_family", fake)
    return seen


@pytest.mark.parametrize("num_cpus,threads", [(1, 1), (2, 2), (0.5, 1)])
def test_every_path_gives_a_family_its_cpus_as_torch_threads(monkeypatch, num_cpus, threads):
    from theoryscope.sweeps.execute import FamilyJob
    from theoryscope.sweeps.load import parse_spec
    from theoryscope.sweeps.plan import plan_sweep

    plan = plan_sweep(parse_spec(TINY))
    jobs = [FamilyJob("tiny", f.family_id, f.runs, "unused") for f in plan.families]
    seen = recording_threads(monkeypatch)
    before = torch.get_num_threads()
    LocalBackend().run(jobs, ResourceSpec(num_cpus=num_cpus), lambda outcome: None)
    assert seen == [threads] * len(jobs) and torch.get_num_threads() == before  # restored afterwards
    seen.clear()
    execute_in_worker(jobs[0], dispatch.family_threads(ResourceSpec(num_cpus=num_cpus)))  # a Ray task's body
    assert seen == [threads]
    torch.set_num_threads(before)


@pytest.mark.slow
def test_a_launch_on_a_machine_with_every_core_busy_completes(write_spec, results):
    """A busy loop on every core beside the launch: the embedded Ray starts, every family
    runs, every run is ok (Ray's own start-up and health checks must tolerate it)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        spec = write_spec(SLOW_SPEC.format(extra="").replace("steps = 600", "steps = 60").replace(
            "depth = [2, 3, 4, 5]", "depth = [2, 3]"))
        done = subprocess.run([sys.executable, "-m", "theoryscope.cli", "launch", str(spec), "--results", str(results), "--json"],
                              cwd=REPO, capture_output=True, text=True, timeout=900)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert done.returncode == 0, done.stderr
    counts = run_query(results, "SELECT count(*) AS n, count(DISTINCT run_id) AS d, "
                                "count(*) FILTER (WHERE status = 'ok') AS ok FROM runs").to_pylist()
    assert counts == [{"n": 8, "d": 8, "ok": 8}]


@pytest.mark.slow
def test_the_embedded_ray_is_its_own_even_where_ray_start_left_an_address():
    """`ray start` records its cluster in <tmp>/ray/ray_current_cluster, and a plain
    ``ray.init()`` joins it, even a dead one; the embedded Ray always starts its own."""
    import shutil
    import tempfile

    temp = Path(tempfile.mkdtemp(prefix="ts-", dir="/tmp"))  # short: Ray's socket paths must fit
    try:
        (temp / "ray").mkdir()
        (temp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9\n")  # nothing listens there
        script = "from theoryscope.sweeps.dispatch import RayBackend\nfrom theoryscope.sweeps.spec import ResourceSpec\n" \
                 "b = RayBackend()\nb.start(ResourceSpec())\nimport ray\n" \
                 "print(ray.get(ray.remote(lambda: 'ran').remote()))\nb.close()\n"
        done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=180,
                              env={**os.environ, "RAY_TMPDIR": str(temp)}, start_new_session=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0 and done.stdout.strip() == "ran", done.stderr[-2000:]


@pytest.mark.slow
def test_a_quiet_launch_on_the_embedded_ray_prints_nothing(write_spec, results):
    """Ray 2.60 warns on every start of a local Ray that token authentication is on by
    default; --quiet promises errors only, and --json one JSON document on stdout."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # Ray's default: token auth on
    spec = write_spec(SMALL_SPEC)
    quiet = subprocess.run([sys.executable, "-m", "theoryscope.cli", "launch", str(spec), "--results", str(results),
                            "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == "", quiet.stderr
    as_json = subprocess.run([sys.executable, "-m", "theoryscope.cli", "launch", str(spec), "--results", str(results),
                              "--json"], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert as_json.returncode == 0 and as_json.stderr == "", as_json.stderr
    assert json.loads(as_json.stdout)["planned"] == 8

"""Real interruptions of real processes on real Ray: kill -9 of the whole launch process
group, Ctrl-C, a node lost from a multi-node cluster. After ``resume`` every planned run
has exactly one row, and runs finished before the interruption keep their rows."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, SLOW_SPEC, assert_exactly_once, families_done, kill_session, start, wait_for
from theoryscope.storage.parquet import scan
from theoryscope.sweeps.tables import run_query


def run_rows(results: Path) -> dict[str, object]:
    return {r["run_id"]: r["finished_at"] for r in run_query(results, "SELECT run_id, finished_at FROM runs").to_pylist()}


def resume(results: Path, *extra: object) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "theoryscope.cli", "resume", "slow", "--results", str(results), *map(str, extra)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


# Each starts the CLI (and its embedded Ray) in processes of its own, twice: tens of seconds.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("when", ["while Ray starts", "after the first family", "half way"])
def test_kill_9_of_the_launch_process_group_then_resume(write_spec, results, when):
    spec = write_spec(SLOW_SPEC.format(extra=""))
    proc = start("launch", spec, "--results", results, log=results.parent / "launch")
    if when == "while Ray starts":
        wait_for(lambda: (results / "sweeps").exists())
    else:
        wait_for(lambda: families_done(results) >= (1 if when == "after the first family" else 4))
    time.sleep(random.Random(when).uniform(0.0, 0.5))  # somewhere inside the next families
    kill_session(proc)
    before = run_rows(results)
    resume(results)
    after = run_rows(results)
    assert_exactly_once(results)
    assert {k: after[k] for k in before} == before  # finished before the kill: not recomputed


def test_ctrl_c_stops_prints_the_resume_command_and_exits_130(write_spec, results):
    spec = write_spec(SLOW_SPEC.format(extra=""))
    proc = start("launch", spec, "--results", results, log=results.parent / "launch")
    wait_for(lambda: families_done(results) >= 2)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    proc.wait(timeout=60)
    stderr = (results.parent / "launch.err").read_text()
    assert proc.returncode == 130, stderr
    kill_session(proc)  # nothing of Ray should be left; make sure
    command = f"theoryscope resume slow --results {results.resolve()}"
    assert command in stderr
    before = run_rows(results)
    assert 2 <= len(before) // 2 < 8
    status = json.loads(subprocess.run([sys.executable, "-m", "theoryscope.cli", "status", "slow", "--results", str(results),
                                        "--json"], cwd=REPO, capture_output=True, text=True).stdout)
    assert status[0]["remaining"] == 16 - len(before)
    resume(results)
    assert_exactly_once(results)
    after = run_rows(results)
    assert {k: after[k] for k in before} == before


def test_a_checkpointed_family_killed_mid_training_resumes_to_the_same_numbers(write_spec, tmp_path):
    """One long family, checkpointed every 100 steps, killed after a checkpoint: the
    resumed results equal an uninterrupted run's exactly (CPU, one thread per family)."""
    spec = write_spec(SLOW_SPEC.format(extra="checkpoint_every = 100").replace(
        "steps = 600", "steps = 3000").replace("depth = [2, 3, 4, 5]\nwidth = [16, 32]", "depth = [3]\nwidth = [64]"))
    clean, broken = tmp_path / "clean", tmp_path / "broken"
    reference = subprocess.run([sys.executable, "-m", "theoryscope.cli", "launch", str(spec), "--results", str(clean)],
                               cwd=REPO, capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    proc = start("launch", spec, "--results", broken, log=tmp_path / "launch")
    checkpoints = broken / "checkpoints" / "sweep=slow"
    wait_for(lambda: checkpoints.is_dir() and any(checkpoints.glob("*.pt")))
    time.sleep(0.5)
    kill_session(proc)
    assert families_done(broken) == 0 and any(checkpoints.glob("*.pt"))
    resume(broken)
    assert not any(checkpoints.glob("*.pt"))  # removed once the family is published
    for sql in ("SELECT run_id, status, train_loss, test_loss, diverged_step FROM runs ORDER BY run_id",
                "SELECT run_id, step, train_loss, test_loss FROM curves ORDER BY run_id, step"):
        assert run_query(clean, sql).to_pylist() == run_query(broken, sql).to_pylist()


def test_a_node_lost_mid_sweep(write_spec, results):
    """A head with no CPUs and two one-CPU workers; one worker node is removed while
    families run on it. Ray retries its families on the other node."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        doomed = cluster.add_node(num_cpus=1)
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        spec = write_spec(SLOW_SPEC.format(extra=""))
        proc = start("launch", spec, "--results", results, "--address", cluster.address, log=results.parent / "launch")
        wait_for(lambda: families_done(results) >= 2)
        cluster.remove_node(doomed)
        proc.wait(timeout=300)
        assert proc.returncode == 0, (results.parent / "launch.err").read_text()
        assert_exactly_once(results)
    finally:
        cluster.shutdown()


def test_a_second_ctrl_c_exits_at_once_and_corrupts_nothing(write_spec, results):
    spec = write_spec(SLOW_SPEC.format(extra=""))
    proc = start("launch", spec, "--results", results, log=results.parent / "launch")
    wait_for(lambda: families_done(results) >= 1)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        pass  # the first one was handled already
    proc.wait(timeout=60)
    assert proc.returncode == 130, (results.parent / "launch.err").read_text()
    kill_session(proc)  # whatever of Ray the abrupt exit left behind
    assert all(not found.damaged for found in (scan(results, t) for t in ("runs", "curves")))
    resume(results)
    assert_exactly_once(results)

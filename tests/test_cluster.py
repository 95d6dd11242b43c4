"""``launch --address`` joins an existing Ray cluster (a real one, started on this machine)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO, SMALL_SPEC


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    yield c
    c.shutdown()


def theoryscope(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "theoryscope.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


@pytest.mark.slow
def test_launch_joins_a_running_cluster(cluster, write_spec, results):
    spec = write_spec(SMALL_SPEC)
    done = theoryscope("launch", spec, "--results", results, "--address", cluster.address)
    assert done.returncode == 0, done.stderr
    assert "8/8 runs" in done.stdout
    status = json.loads(theoryscope("status", "--results", results, "--json").stdout)
    assert status[0]["ok"] == 8 and status[0]["remaining"] == 0


@pytest.mark.slow  # a CLI process waiting for Ray's connection timeout
def test_an_unreachable_address_is_one_line(write_spec, results):
    spec = write_spec(SMALL_SPEC)
    failed = theoryscope("launch", spec, "--results", results, "--address", "127.0.0.1:1")
    assert failed.returncode == 1
    assert "cannot reach Ray at 127.0.0.1:1" in failed.stderr
    assert "Traceback" not in failed.stderr

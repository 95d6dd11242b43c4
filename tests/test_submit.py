"""``theoryscope submit`` against a real head node started here: submit, wait, query."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import SMALL_SPEC, free_port, invoke, one_line_error
from theoryscope.core.errors import TheoryscopeError
from theoryscope.sweeps.tables import run_query

VENV_BIN = Path(sys.executable).parent


def processes_under(folder: str) -> list[int]:
    """PIDs of the processes whose command line names ``folder`` (the head's temp dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if folder.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def head():
    """A Ray head node on 127.0.0.1 with its dashboard (the Jobs API), in a temporary
    directory; stopped afterwards by killing exactly the processes it started."""
    temp = tempfile.mkdtemp(prefix="tsh", dir="/tmp")  # short: Ray's socket paths have a length limit
    dashboard, client = free_port(), free_port()
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    started = subprocess.run(
        [str(VENV_BIN / "ray"), "start", "--head", f"--port={free_port()}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", "--include-dashboard=true", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
         f"--temp-dir={temp}", "--num-cpus=2",
         "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        url = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        yield url, f"ray://127.0.0.1:{client}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in processes_under(temp):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(3)


@pytest.mark.slow
def test_submit_wait_and_query(head, write_spec, tmp_path):
    results = tmp_path / "shared-results"
    spec = write_spec(SMALL_SPEC)
    result = invoke("submit", spec, "--to", head[0], "--results", results, "--wait")
    assert result.exit_code == 0, result.output
    assert "submitted sweep small as Ray job theoryscope-small-" in result.output
    assert "SUCCEEDED" in result.output
    rows = run_query(results, "SELECT count(*) AS n, count(DISTINCT family_id) AS f FROM runs "
                              "WHERE sweep = 'small'").to_pylist()
    assert rows == [{"n": 8, "f": 2}]
    status = json.loads(invoke("status", "small", "--results", results, "--json").output)
    assert status[0]["remaining"] == 0


@pytest.mark.slow
def test_launch_through_a_ray_client_address(head, write_spec, tmp_path):
    """``--address ray://HOST:PORT``: the driver stays here, the families run on the cluster."""
    results = tmp_path / "results"
    spec = write_spec(SMALL_SPEC)
    done = subprocess.run([sys.executable, "-m", "theoryscope.cli", "launch", str(spec), "--results", str(results),
                           "--address", head[1], "--json"], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent,
                          env=dict(os.environ, RAY_AUTH_MODE="token"))  # the head's token auth, as Ray asks
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["ran"] == 8 and summary["failed"] == 0
    rows = run_query(results, "SELECT count(*) AS n FROM runs WHERE sweep = 'small'").to_pylist()
    assert rows == [{"n": 8}]


@pytest.mark.slow
def test_a_bad_spec_is_never_submitted(head, write_spec, tmp_path):
    spec = write_spec(SMALL_SPEC.replace("steps = 30", "steps = -1"))
    line = one_line_error(invoke("submit", spec, "--to", head[0], "--results", tmp_path / "r"))
    assert "train.steps: expected an integer >= 1" in line


def test_an_unreachable_dashboard_is_one_line(write_spec, tmp_path):
    spec = write_spec(SMALL_SPEC)
    line = one_line_error(invoke("submit", spec, "--to", f"http://127.0.0.1:{free_port()}", "--results",
                                 tmp_path / "r"))
    assert line.startswith("error: --to http://127.0.0.1:") and "cannot submit there" in line


def test_the_token_is_found_where_ray_keeps_it(monkeypatch, tmp_path):
    from theoryscope.sweeps.submit import auth_headers

    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc")
    assert auth_headers() == {"Authorization": "Bearer abc"}
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    (tmp_path / "token").write_text("from-file\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert auth_headers() == {"Authorization": "Bearer from-file"}
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(TheoryscopeError, match="RAY_AUTH_TOKEN_PATH: cannot read"):
        auth_headers()

"""Shared fixtures: temporary results directories, spec files, failing families, one Ray
session, a local S3 server. Nothing imports this module; shared constants and functions
are in helpers.py."""

from __future__ import annotations

import os

# The tests' arrays are small: a second BLAS or torch thread only waits on the first, and
# on a busy machine (two cores, another job beside) spinning threads make small ops 10 to
# 40 times slower. Set before numpy and torch load their BLAS; the processes the tests
# start inherit it. Families launched by the tests still get resources.num_cpus threads.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import logging  # noqa: E402
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from helpers import CREDENTIALS, free_port

torch.set_num_threads(1)  # in case torch was loaded before this file (the variables above are then too late)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture
def write_spec(tmp_path: Path):
    """Write spec text to a file and return its path."""

    def write(text: str, name: str = "spec.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def fail_families(monkeypatch):
    """``fail_families(depth, message)``: training of families of that depth raises
    RuntimeError(message) (in this process, i.e. with the local backend); returns a
    function that makes training work again."""
    from theoryscope.core import train

    real = train.train_family

    def arrange(depth: int, message: str):
        def flaky(runs, device, *rest):
            if runs[0].model.depth == depth:
                raise RuntimeError(message)
            return real(runs, device, *rest)

        monkeypatch.setattr("theoryscope.core.train.train_family", flaky)
        return lambda: monkeypatch.setattr("theoryscope.core.train.train_family", real)

    return arrange


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (starting Ray costs seconds).

    Token authentication stays on: Ray 2.60 turns it on for local clusters by itself
    (setting RAY_AUTH_MODE after ``import ray`` would disagree with Ray's cached config).
    ``address="local"``: a Ray of its own, never a cluster that `ray start` (a test of
    this suite, or of another one running beside it) recorded in /tmp/ray.
    """
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             object_store_memory=200 * 1024**2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on a free port; yields a function making results URIs in it."""
    port = free_port()
    server = subprocess.Popen([shutil.which("moto_server", path=Path(sys.executable).parent) or "moto_server",
                               "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("the moto S3 server did not start")
                time.sleep(0.1)

        def uri(prefix: str) -> str:
            return (f"s3://theoryscope/{prefix}?endpoint_override=127.0.0.1:{port}&scheme=http"
                    f"&region=us-east-1&allow_bucket_creation=true")

        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and anything it started
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

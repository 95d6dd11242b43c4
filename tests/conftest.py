"""Shared fixtures: temporary results directories, small specs, one Ray session."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SMALL_SPEC = """
name = "small"

[data]
kind = "teacher-student"
n_train = 64
n_test = 64
input_dim = 8

[model]
kind = "mlp"
width = 16

[train]
optimizer = "gd"
lr = 0.1
steps = 30
log_every = 10

[grid]
depth = [1, 2]
label_noise = [0.0, 0.5]
seed = [0, 1]
"""


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
    import core.train

    real = core.train.train_family

    def arrange(depth: int, message: str):
        def flaky(runs, device, *rest):
            if runs[0].model.depth == depth:
                raise RuntimeError(message)
            return real(runs, device, *rest)

        monkeypatch.setattr("sweeps.execute.train_family", flaky)
        return lambda: monkeypatch.setattr("sweeps.execute.train_family", real)

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

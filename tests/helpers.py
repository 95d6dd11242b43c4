"""What test modules share, in one place: paths, small specs, the CLI runner, the trainer's
oracle families, the interruption tools, closed-form landscapes and a free port.

Test modules import it as ``from helpers import ...`` (pytest puts tests/ on sys.path, as
tests/ is not a package). Fixtures live in conftest.py, which nothing imports; everything
here is a plain constant or function.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from typer.testing import CliRunner

from theoryscope.cli import app
from theoryscope.core.counters import mix
from theoryscope.core.config import (
    DataKind, DataSpec, DType, Experiment, Init, ModelKind, ModelSpec, Optimizer, RunSpec, TrainSpec,
)
from theoryscope.core.seeding import derive_seed
from theoryscope.storage.parquet import scan
from theoryscope.sweeps.checkpoints import Checkpointer
from theoryscope.sweeps.tables import run_query

REPO = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------
# Counter-based draws (core.counters), one Python integer at a time
# ---------------------------------------------------------------------------------------

GOLDEN = 0x9E3779B97F4A7C15


def reference_draw(key: int, j: int) -> int:
    return mix(key ^ mix((j + 1) * GOLDEN))


def reference_key(seed: int, *purpose: object) -> int:
    return mix(mix(seed) ^ derive_seed(*purpose))


def reference_uniform(seed: int, purpose: tuple, count: int) -> list[float]:
    key = reference_key(seed, *purpose)
    return [(reference_draw(key, j) >> 11) * 2.0**-53 for j in range(count)]


def reference_normal(seed: int, purpose: tuple, count: int) -> list[float]:
    u = reference_uniform(seed, purpose, 2 * count)
    return [math.sqrt(-2 * math.log(1 - u[j])) * math.cos(2 * math.pi * u[count + j]) for j in range(count)]


def reference_permutation(seed: int, epoch: int, n: int) -> list[int]:
    """A member's batch order in ``epoch``: positions sorted by their draw (as signed
    64-bit integers, low bits replaced by the position)."""
    key = reference_draw(reference_key(seed, "batches"), epoch)
    low = max(1, (n - 1).bit_length())

    def sort_key(i: int) -> int:
        z = (reference_draw(key, i) >> low << low) | i
        return z - 2**64 if z >= 2**63 else z

    return sorted(range(n), key=sort_key)


# ---------------------------------------------------------------------------------------
# Small specs
# ---------------------------------------------------------------------------------------

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

# train.matmul_precision (tests/test_precision.py, tests/test_gpu.py).
PRECISION_SPEC = """
name = "precision"
[data]
kind = "teacher-student"
n_train = 96
n_test = 32
input_dim = 8
[model]
kind = "mlp"
width = 32
depth = 3
[train]
lr = 0.05
steps = 40
log_every = 10
[grid]
"train.matmul_precision" = ["highest", "bf16", "tf32"]
seed = [0, 1, 2]
"""

# Experiment "acceleration" (tests/test_acceleration_sweep.py, tests/test_report.py):
# format with name, overparam and steps.
ACCELERATION_SPEC = """
name = "{name}"
experiment = "acceleration"
[data]
kind = "lp-regression"
n_train = 128
n_test = 64
input_dim = 8
condition = 10.0
label_noise = 0.1
[model]
kind = "linear"
overparam = "{overparam}"
width = 8
init = "balanced"
init_scale = 0.1
[train]
optimizer = "gd"
steps = {steps}
log_every = 500
lr_grid = 8
lr_range = [1e-3, 4.0]
target = 1e-5
dtype = "float64"
[grid]
"data.p" = [2, 4]
depth = [1, 2]
"""

# The valleys measure (tests/test_valley_sweep.py, tests/test_report.py): format with
# name, kind, options, extra and size.
VALLEY_SPEC = """
name = "{name}"
[data]
kind = "{kind}"
n_train = 48
n_test = 40
input_dim = 5
[model]
width = 6
bias = true
[train]
lr = 0.2
steps = 80
log_every = 40
dtype = "float64"
[measure]
valleys = {{ {options} }}
[grid]
depth = [2, 3]
seed = [0, 1, 2]
{extra}
[resources]
max_family_size = {size}
"""

# ---------------------------------------------------------------------------------------
# The command line in this process
# ---------------------------------------------------------------------------------------

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------
# Families for the trainer's oracle (tests/test_train.py, tests/test_resume.py, tests/test_gpu.py)
# ---------------------------------------------------------------------------------------


def make_runs(base: RunSpec, **axes) -> list[RunSpec]:
    """The product of ``axes`` (``"section.field"`` -> values) over ``base``."""
    runs = []
    for values in itertools.product(*axes.values()):
        run = base
        for key, value in zip(axes, values):
            section, _, name = key.partition("__")
            if not name:
                run = dataclasses.replace(run, **{section: value})
            else:
                run = dataclasses.replace(run, **{section: dataclasses.replace(getattr(run, section), **{name: value})})
        runs.append(run)
    return runs


def base_run(data: DataSpec, model: ModelSpec, train: TrainSpec) -> RunSpec:
    return RunSpec(Experiment.TRAIN, data, model, dataclasses.replace(train, dtype=DType.FLOAT64, log_every=5))


FAMILIES = {
    "gd-mlp-regression": make_runs(
        base_run(DataSpec(n_train=48, n_test=32, input_dim=6, output_dim=2),
                 ModelSpec(depth=3, width=12), TrainSpec(lr=0.1, steps=25)),
        seed=[0, 1], train__lr=[0.05, 0.2], data__label_noise=[0.0, 0.7], model__init_scale=[0.5, 1.5],
    ),
    "sgd-momentum-mlp-classification-bias": make_runs(
        base_run(DataSpec(kind=DataKind.GAUSSIAN_MIXTURE, n_train=40, n_test=24, input_dim=5, n_classes=3),
                 ModelSpec(depth=2, width=10, bias=True),
                 TrainSpec(optimizer=Optimizer.SGD, lr=0.1, steps=22, batch_size=12, weight_decay=1e-3)),
        seed=[0, 3], train__momentum=[0.0, 0.9], data__label_noise=[0.0, 0.25],
    ),
    "adam-deep-linear-gaussian-init": make_runs(
        base_run(DataSpec(kind=DataKind.LINEAR_TEACHER, n_train=30, n_test=20, input_dim=8, label_noise=0.5),
                 ModelSpec(kind=ModelKind.LINEAR, depth=3, width=8, init=Init.GAUSSIAN),
                 TrainSpec(optimizer=Optimizer.ADAM, lr=0.01, steps=20)),
        seed=[0, 1], train__lr=[0.01, 0.03], train__beta1=[0.9, 0.5], data__seed=[0, 1],
    ),
    "adam-minibatch-bias": make_runs(
        base_run(DataSpec(n_train=32, n_test=16, input_dim=4), ModelSpec(depth=2, width=6, bias=True),
                 TrainSpec(optimizer=Optimizer.ADAM, lr=0.02, steps=15, batch_size=8, weight_decay=0.01)),
        seed=[0, 1, 2],
    ),
}

class Interrupting(Checkpointer):
    """Saves like a Checkpointer, then stops training (as a kill would) after ``after`` saves."""

    def __init__(self, path, every_steps, after):
        super().__init__(path, every_steps)
        self.after, self.saves = after, 0

    def save(self, payload):
        super().save(payload)
        self.saves += 1
        if self.saves == self.after:
            raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------
# Real processes, interrupted (tests/test_interrupt.py, tests/test_embedded_ray.py)
# ---------------------------------------------------------------------------------------

# 8 families of 2 runs, each family a second or two of training on one CPU.
SLOW_SPEC = """
name = "slow"
[data]
n_train = 256
n_test = 128
input_dim = 16
[train]
steps = 600
log_every = 50
{extra}
[grid]
depth = [2, 3, 4, 5]
width = [16, 32]
seed = [0, 1]
"""


def start(*args: object, log: Path) -> subprocess.Popen:
    """The CLI in a process group (and session) of its own, as a terminal would run it;
    its output goes to ``log``.out and ``log``.err (files: a killed process group may
    leave pipes half-open)."""
    with open(f"{log}.out", "w") as stdout, open(f"{log}.err", "w") as stderr:
        return subprocess.Popen([sys.executable, "-m", "theoryscope.cli", *map(str, args)], cwd=REPO,
                                start_new_session=True, stdout=stdout, stderr=stderr)


def kill_session(proc: subprocess.Popen) -> None:
    """kill -9 the process group, then anything else of its session (Ray puts its workers
    in groups of their own), by PID."""
    sid = proc.pid
    try:
        os.killpg(sid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is gone already; its session may still hold Ray's workers
    proc.wait(timeout=30)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # session id; skip zombies
            try:
                os.kill(int(stat.parent.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def families_done(results: Path, sweep: str = "slow") -> int:
    return len(scan(results, "runs", sweep).complete)


def assert_exactly_once(results: Path, planned: int = 16) -> None:
    counts = run_query(results, "SELECT count(*) AS n, count(DISTINCT run_id) AS d, "
                                "count(*) FILTER (WHERE status = 'ok') AS ok FROM runs").to_pylist()
    assert counts == [{"n": planned, "d": planned, "ok": planned}]
    curves = run_query(results, "SELECT count(DISTINCT run_id) AS d, count(*) AS n FROM curves").to_pylist()
    assert curves == [{"d": planned, "n": planned * 13}]
    kept = run_query(results, "SELECT count(DISTINCT run_id) AS d, count(*) AS n FROM weights").to_pylist()
    assert kept == [{"d": planned, "n": planned}]  # the final weights, once each
    files = {r["file"] for r in run_query(results, "SELECT DISTINCT file FROM weights").to_pylist()}
    written = (results / "weights" / "sweep=slow").glob("*.safetensors")
    assert {f"weights/sweep=slow/{p.name}" for p in written} == files  # no file left by a family killed mid-way


# ---------------------------------------------------------------------------------------
# Landscapes with closed-form answers (tests/test_valley.py, tests/test_gpu.py)
# ---------------------------------------------------------------------------------------

F64 = torch.float64


def ring(th: torch.Tensor) -> torch.Tensor:
    """A valley around a bump: minima on the unit circle, a maximum of 1 at the origin."""
    return (th[..., 0] ** 2 + th[..., 1] ** 2 - 1) ** 2


ENDS = torch.tensor([-1.0, 0.0], dtype=F64), torch.tensor([1.0, 0.0], dtype=F64)


def embedded(landscape, dim: int, seed: int):
    """``landscape`` on a random plane of R^dim, with stiff and soft quadratic walls in
    the other directions; returns the loss and the images of the two ends."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=F64))
    center = torch.randn(dim, generator=g, dtype=F64)
    walls = torch.linspace(0.5, 3.0, dim - 2, dtype=F64)

    def loss(th: torch.Tensor) -> torch.Tensor:
        z = (th - center) @ q
        return landscape(z[..., :2]) + (walls * z[..., 2:] ** 2).sum(-1)

    def place(p: torch.Tensor) -> torch.Tensor:
        return center + q[:, :2] @ p

    return loss, place(ENDS[0]), place(ENDS[1])


# ---------------------------------------------------------------------------------------
# Local servers (tests/conftest.py's s3_server, tests/test_store.py, tests/test_submit.py)
# ---------------------------------------------------------------------------------------

# moto's S3 server accepts any credentials; these keep boto/pyarrow off the metadata service.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_EC2_METADATA_DISABLED": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

"""The CUDA path of the family trainer (skipped where no GPU is visible, as in CI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import FAMILIES
from theoryscope.core.train import pick_device, train_family

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Small specs of each experiment (the GPU machine has no Ray or DuckDB: no sweep runs there).
ACCELERATION = """
name = "a"
experiment = "acceleration"
data = {kind = "lp-regression", n_train = 64, n_test = 32, input_dim = 6, condition = 10.0, label_noise = 0.1}
model = {kind = "linear", width = 6, init = "balanced", init_scale = 0.1}
train = {steps = 300, log_every = 50, lr_grid = 5, lr_range = [1e-3, 1.0], target = 1e-3, dtype = "float64"}
grid = {"data.p" = [2, 4], depth = [1, 3]}
"""
DYNAMICS = """
name = "d"
experiment = "linear-dynamics"
data = {kind = "linear-modes", n_train = 16, n_test = 8, input_dim = 5, output_dim = 3}
model = {kind = "linear", width = 5, init = "decoupled", init_scale = 0.01}
train = {steps = 300, log_every = 10, dtype = "float64"}
grid = {depth = [2, 3], "train.lr" = [0.01, 0.03], "model.imbalance" = [0.0, 0.5]}
"""
VALLEYS = """
name = "v"
data = {n_train = 48, n_test = 40, input_dim = 5}
model = {width = 6, bias = true}
train = {lr = 0.2, steps = 80, log_every = 40, dtype = "float64"}
measure = {valleys = {pairs = "seed", beads = 3, steps = 20}}
grid = {depth = [2], seed = [0, 1, 2]}
"""


def test_no_gpu_requested_means_cpu():
    assert pick_device(0).type == "cpu"


@needs_cuda
@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_family_on_cuda_matches_the_cpu(name):
    runs = FAMILIES[name]  # float64
    cpu = train_family(runs, torch.device("cpu"))
    gpu = train_family(runs, pick_device(1))
    assert gpu.device.startswith("cuda")
    for key in ("train_loss", "test_loss"):
        np.testing.assert_allclose(getattr(gpu, key), getattr(cpu, key), rtol=1e-6, err_msg=key)
    np.testing.assert_array_equal(gpu.diverged_step, cpu.diverged_step)


@needs_cuda
def test_cushion_measures_on_cuda_match_the_cpu():
    from theoryscope.core.measures import cushion
    from theoryscope.core.measures.compression import matrix_project
    from theoryscope.core.seeding import generator

    g = torch.Generator().manual_seed(0)
    dims = [6, 16, 12, 3]
    weights = [torch.randn(3, o, i, generator=g, dtype=torch.float64) / i**0.5 for i, o in zip(dims[:-1], dims[1:])]
    biases = [0.1 * torch.randn(3, o, generator=g, dtype=torch.float64) for o in dims[1:]]
    x = torch.randn(3, 20, 6, generator=g, dtype=torch.float64)
    cuda = torch.device("cuda")
    on = lambda ts: [t.to(cuda) for t in ts]  # noqa: E731
    for name in ("layer_cushion", "min_interlayer_cushion", "activation_contraction"):
        cpu = getattr(cushion, name)(weights, biases, x)
        gpu = getattr(cushion, name)(on(weights), on(biases), x.to(cuda))
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-12)
    cpu = cushion.interlayer_smoothness(weights, biases, x, generator=generator(1))
    gpu = cushion.interlayer_smoothness(on(weights), on(biases), x.to(cuda), generator=generator(1))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-7, atol=1e-9)
    a = weights[1]
    torch.testing.assert_close(matrix_project(a.to(cuda), 64, generator(2)).cpu(), matrix_project(a, 64, generator(2)),
                               rtol=1e-9, atol=1e-12)


@needs_cuda
def test_valley_strings_on_cuda_match_the_cpu():
    from helpers import ENDS, embedded, ring
    from theoryscope.core.measures.valley import bezier_barrier, string_barrier

    loss, a, b = embedded(ring, 12, seed=3)
    cuda = torch.device("cuda")
    cpu = string_barrier(loss, a, b, beads=6, steps=100, lr=0.05, restarts=2, batched=True)
    gpu = string_barrier(lambda th: loss(th.cpu()).to(cuda), a.to(cuda), b.to(cuda), beads=6, steps=100, lr=0.05,
                         restarts=2, batched=True)
    torch.testing.assert_close(gpu["path"].cpu(), cpu["path"], rtol=1e-9, atol=1e-12)
    ring_cuda = lambda th: ring(th)  # noqa: E731
    bez = bezier_barrier(ring_cuda, ENDS[0].to(cuda), ENDS[1].to(cuda), steps=50, lr=0.05)
    assert bez["path"].device.type == "cuda" and 0 <= bez["barrier"] < 1


@needs_cuda
def test_acceleration_and_dynamics_families_on_cuda_match_the_cpu():
    from theoryscope.core.accelerate import train_acceleration
    from theoryscope.core.dynamics import train_linear_dynamics
    from theoryscope.sweeps.load import parse_spec
    from theoryscope.sweeps.plan import plan_sweep

    for family in plan_sweep(parse_spec(ACCELERATION)).families:
        cpu, gpu = train_acceleration(family.runs, torch.device("cpu")), train_acceleration(family.runs, pick_device(1))
        assert gpu.family.device.startswith("cuda")
        np.testing.assert_allclose(gpu.final_loss, cpu.final_loss, rtol=1e-6)
        np.testing.assert_array_equal(gpu.steps, cpu.steps)
    for family in plan_sweep(parse_spec(DYNAMICS)).families:
        cpu, gpu = train_linear_dynamics(family.runs, torch.device("cpu")), train_linear_dynamics(family.runs,
                                                                                                  pick_device(1))
        np.testing.assert_allclose(gpu.family.rule_deviation, cpu.family.rule_deviation, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(gpu.strengths, cpu.strengths, rtol=1e-6, atol=1e-12)


@needs_cuda
def test_the_valleys_measure_on_cuda_matches_the_cpu():
    from theoryscope.sweeps.load import parse_spec
    from theoryscope.sweeps.measures.valleys import valley_tables
    from theoryscope.sweeps.plan import plan_sweep

    spec = parse_spec(VALLEYS)
    family = plan_sweep(spec).families[0]
    tables = {}
    for device in (torch.device("cpu"), pick_device(1)):
        result = train_family(family.runs, device)
        tables[device.type] = valley_tables(spec.measure.valleys, "v", family.runs, result)["valleys"].to_pylist()
    for cpu_row, gpu_row in zip(tables["cpu"], tables["cuda"]):
        assert gpu_row["barrier"] == pytest.approx(cpu_row["barrier"], rel=1e-6, abs=1e-12)
        assert gpu_row["normalized_length"] == pytest.approx(cpu_row["normalized_length"], rel=1e-6)


@needs_cuda
def test_reduced_precision_on_cuda_is_close_to_exact_and_reports_its_error():
    from helpers import PRECISION_SPEC as SPEC
    from theoryscope.sweeps.load import parse_spec
    from theoryscope.sweeps.plan import plan_sweep

    by_precision = {f.exemplar.train.matmul_precision.value: list(f.runs) for f in plan_sweep(parse_spec(SPEC)).families}
    cuda = pick_device(1)
    exact = train_family(by_precision["highest"], cuda)
    for name, tolerance in (("tf32", 1e-2), ("bf16", 5e-2)):
        reduced = train_family(by_precision[name], cuda)
        assert (reduced.precision_error < tolerance).all(), name
        assert (abs(reduced.train_loss[-1] / exact.train_loss[-1] - 1) < tolerance).all(), name
    assert torch.backends.cuda.matmul.allow_tf32 is False


CNN = """
name = "c"
data = {kind = "digits", n_train = 60, n_test = 40}
model = {kind = "cnn", width = 3}
train = {optimizer = "sgd", lr = 0.1, batch_size = 16, steps = 20, log_every = 10, dtype = "float64"}
grid = {depth = [1, 2], seed = [0, 1]}
"""


@needs_cuda
def test_a_cnn_family_on_cuda_matches_the_cpu():
    from theoryscope.sweeps.load import parse_spec
    from theoryscope.sweeps.plan import plan_sweep

    runs = [r for r in plan_sweep(parse_spec(CNN)).runs if r.model.depth == 2]  # float64
    cpu = train_family(runs, torch.device("cpu"))
    gpu = train_family(runs, pick_device(1))
    for key in ("train_loss", "test_loss", "test_error"):
        np.testing.assert_allclose(getattr(gpu, key), getattr(cpu, key), rtol=1e-6, err_msg=key)

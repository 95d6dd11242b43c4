"""The benchmark's baselines train the same nets as theoryscope: same data, same
initial weights, same final losses (to float32 rounding); the complexity benchmark
measures what a launch measures."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from bench.baselines import timed, train_one
from bench.compare import sample, worst_difference
from bench.complexity_cost import GROUPS, family_runs, measure
from bench.workloads import workload
from helpers import SMALL_SPEC
from theoryscope.core.train import train_family
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.measures.complexity import MEASURE_NAMES
from theoryscope.sweeps.plan import plan_sweep


def test_a_baseline_net_follows_the_family_trainer():
    spec = parse_spec(SMALL_SPEC.replace("[model]\n", "[model]\nbias = true\n"))
    runs = [r for r in plan_sweep(spec).runs if r.model.depth == 2]
    family = train_family(runs, torch.device("cpu"))
    for member, run in enumerate(runs):
        rows = train_one(run)
        assert [r["step"] for r in rows] == family.steps.tolist()
        np.testing.assert_allclose([r["train_loss"] for r in rows], family.train_loss[:, member], rtol=1e-4)
        np.testing.assert_allclose([r["test_loss"] for r in rows], family.test_loss[:, member], rtol=1e-4)


def test_the_sequential_baseline_reports_every_runs_final_loss():
    runs = plan_sweep(parse_spec(SMALL_SPEC)).runs[:3]
    seconds, losses = timed("sequential", runs)
    assert seconds > 0 and sorted(losses) == sorted(r.run_id for r in runs)


def test_workloads_and_samples():
    compute, tiny = workload("compute"), workload("tiny")
    assert len(compute.runs) == 108 and len(tiny.runs) == 2048
    assert 6.5e12 < compute.flops < 7.5e12  # the issue's ~6.9 TFLOP plus the logged evaluations
    picked = sample(tiny, 4)
    assert [tiny.runs.index(r) for r in picked] == [0, 682, 1365, 2047]
    assert worst_difference({"a": 1.0, "b": 2.0}, {"a": 1.1, "c": 5.0}) == pytest.approx(0.1)


def test_the_complexity_cost_benchmark_trains_its_family_to_the_stop_and_measures_every_measure():
    args = argparse.Namespace(members=4, depth=2, width=8, n_train=60, batch_size=20, steps=400)
    runs = family_runs(args)
    assert [r.train.lr for r in runs] == [0.02, 0.05] * 2 and [r.seed for r in runs] == [0, 0, 1, 1]
    assert all(r.train.stop_train_loss == 0.01 and r.model.width == 8 for r in runs)
    result = train_family(runs, torch.device("cpu"), snapshot_steps=(400,))
    total, parts = measure(runs, result, draws=2, groups=True)
    assert total > 0 and set(parts) == {"init", "norms", "margins", "pacbayes", "sharpness", "hessian_top"}
    grouped = {name for names in GROUPS.values() for name in names}
    assert grouped == set(MEASURE_NAMES)  # every measure is in a timed group


def test_the_scale_benchmarks_previous_engine_is_the_per_member_one(monkeypatch):
    """The previous engine copies the inputs for every member, draws every init from the
    member's own generator and every batch order by its own randperm; both engines train."""
    from bench import scale
    from theoryscope.core import train as trainer
    from theoryscope.core.seeding import generator

    runs = scale.family_runs(3, width=4, steps=6, batch_size=64)
    assert [r.seed for r in runs] == [0, 1, 2] and runs[0].data.input_dim == 16 and runs[0].model.depth == 3
    current = trainer.FamilyTraining(runs, torch.device("cpu"))
    assert current.data.x_train.stride(0) == 0
    scale.use_previous_engine(monkeypatch.setattr)
    previous = trainer.FamilyTraining(runs, torch.device("cpu"))
    assert previous.data.x_train.stride(0) != 0
    torch.testing.assert_close(previous.data.x_train, current.data.x_train)
    g = generator(1, "init")
    first = (torch.rand(4, 16, generator=g, dtype=torch.float64) * 2 - 1) / 4
    torch.testing.assert_close(previous.params.weights[0][1], first.float())
    order = previous.batches.next()
    assert torch.equal(order[2], torch.randperm(256, generator=generator(2, "batches"))[:64])
    args = argparse.Namespace(engine="previous", members=3, width=4, steps=6, batch_size=64, device="cpu")
    row = scale.measure_one(args)
    assert row["peak_bytes"] > 0 and np.isfinite(row["final_train_loss"]) and row["wall_s"] >= row["train_s"] > 0


def test_the_cnn_benchmarks_baseline_net_is_the_family_member():
    """bench.cnn_speed's one-at-a-time baseline starts each net where its family member
    starts: the same outputs on the digits images."""
    from bench.cnn_speed import SPEC, one_net
    from theoryscope.core import nets
    from theoryscope.core.data import make_dataset

    runs = plan_sweep(parse_spec(SPEC.format(depth=2, width=4, steps=10, seeds=[0, 1]))).runs
    family = nets.init_family(runs, torch.float32, torch.device("cpu"))
    x = make_dataset(runs[0].data).x_train[:8].float()
    stacked = nets.forward(runs[0].model, runs[0].data, family, x.expand(2, *x.shape))
    for member, run in enumerate(runs):
        alone = one_net(run, torch.device("cpu"))(nets.images(run.data, x))
        torch.testing.assert_close(alone, stacked[member], rtol=1e-5, atol=1e-6)

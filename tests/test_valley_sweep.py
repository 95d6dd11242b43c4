"""Valleys inside sweeps: one row per pair, pairs kept in one family, the stacked
relaxation equal to a hand-written loss relaxed one pair at a time."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import VALLEY_SPEC
from theoryscope.core.data import make_dataset
from theoryscope.core.errors import SpecError
from theoryscope.core.measures.valley import string_barrier
from theoryscope.core.seeding import derive_seed
from theoryscope.core.train import train_family
from theoryscope.sweeps.dispatch import LocalBackend
from theoryscope.sweeps.launch import launch, prepare
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.plan import plan_sweep
from theoryscope.sweeps.tables import run_query


def spec(name="v", kind="teacher-student", options='pairs = "seed", beads = 4, steps = 40', extra="", size=512):
    return parse_spec(VALLEY_SPEC.format(name=name, kind=kind, options=options, extra=extra, size=size))


def run(results, sweep):
    summary = launch(prepare(sweep, results), results, LocalBackend())
    assert summary.total("n_failed") == 0
    return summary


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    results = tmp_path_factory.mktemp("valleys") / "results"
    run(results, spec("stacked"))
    run(results, spec("alone", size=3))  # pairs need their group: 3 seeds per family
    return results


def rows(results, sweep):
    return run_query(results, f"SELECT * FROM valleys WHERE sweep = '{sweep}' ORDER BY run_a, run_b").to_pylist()


def test_one_row_per_pair_of_seeds(measured):
    got = rows(measured, "stacked")
    assert len(got) == 2 * 3  # two depths, three pairs of three seeds each
    assert {(r["value_a"], r["value_b"]) for r in got} == {("0", "1"), ("0", "2"), ("1", "2")}
    same = run_query(measured, "SELECT count(*) AS n FROM valleys v JOIN runs a ON a.sweep = v.sweep AND "
                               "a.run_id = v.run_a JOIN runs b ON b.sweep = v.sweep AND b.run_id = v.run_b "
                               "WHERE v.sweep = 'stacked' AND a.depth = b.depth AND a.seed < b.seed").to_pylist()
    assert same[0]["n"] == 6
    for r in got:
        assert r["status"] == "ok" and r["method"] == "string" and r["beads"] == 4
        assert r["barrier"] == pytest.approx(r["max_loss"] - max(r["loss_a"], r["loss_b"]))
        assert r["normalized_length"] >= 1.0
        # Freeman & Bruna's level set at (1 + tolerance) x the worse end's loss, floored.
        ends = max(r["loss_a"], r["loss_b"], r["end_loss_floor"] * r["loss_scale"])
        assert r["end_loss_floor"] == 1e-3 and r["tolerance"] == 0.05
        assert r["relative_barrier"] == pytest.approx(r["barrier"] / ends, rel=1e-12)
        assert r["barrier_over_scale"] == pytest.approx(r["barrier"] / r["loss_scale"], rel=1e-12)
        assert r["connected"] == (r["relative_barrier"] <= r["tolerance"])
        assert r["converged"] == (abs(r["barrier_change"]) <= r["change_tolerance"])
        assert r["max_test_loss"] is not None and r["max_test_error"] is None  # regression


def test_stacked_pairs_equal_pairs_measured_in_smaller_families(measured):
    stacked = {(r["run_a"], r["run_b"]): r for r in rows(measured, "stacked")}
    alone = {(r["run_a"], r["run_b"]): r for r in rows(measured, "alone")}
    assert stacked.keys() == alone.keys()
    for key, row in stacked.items():
        for column in ("barrier", "normalized_length", "linear_barrier", "max_test_loss"):
            assert row[column] == pytest.approx(alone[key][column], rel=1e-9, abs=1e-12)


# The half-sum objective relaxes (n_train / 2 = 24) x the mean loss the rows report, at a
# rate scaled down to match.
HALF_SUM = '"train.objective" = ["half-sum"]\n"train.lr" = [0.008]'


@pytest.mark.parametrize("scale, extra", [(1.0, ""), (24.0, HALF_SUM)], ids=["mean", "half-sum"])
def test_the_sweep_relaxes_the_loss_its_nets_were_trained_on(tmp_path, scale, extra):
    """Oracle: a hand-written MLP loss on the run's own data, relaxed pair by pair."""
    results = tmp_path / "results"
    sweep = spec("oracle", extra=extra, options='pairs = "seed", beads = 3, steps = 25')
    run(results, sweep)
    plan = plan_sweep(sweep)
    runs = {r.run_id: r for r in plan.runs}
    row = max(rows(results, "oracle"), key=lambda r: abs(r["barrier_change"]))  # a pair whose string moves
    a_run, b_run = runs[row["run_a"]], runs[row["run_b"]]
    data = make_dataset(a_run.data)

    def weights_of(run):  # train the one net again, alone, with the same trainer
        params = train_family([run], torch.device("cpu")).params
        return torch.cat([t[0].flatten() for t in params.weights + params.biases])

    dims = a_run.model.layer_dims(a_run.data.n_inputs, a_run.data.n_outputs)

    def mlp_loss(theta):
        h, at = data.x_train, 0
        layers = list(zip(dims[:-1], dims[1:]))
        shapes = [(o, i) for i, o in layers]
        mats = []
        for o, i in shapes:
            mats.append(theta[at:at + o * i].view(o, i))
            at += o * i
        for k, (o, _) in enumerate(shapes):
            h = h @ mats[k].T + theta[at:at + o]
            at += o
            if k < len(shapes) - 1:
                h = torch.relu(h)
        return ((h - data.y_train) ** 2).mean()

    # The objective the runs minimized, at each point [P, M, D] one by one.
    every_point = torch.vmap(torch.vmap(lambda theta: scale * mlp_loss(theta)))
    found = string_barrier(every_point, weights_of(a_run), weights_of(b_run), beads=3, steps=25, lr=a_run.train.lr,
                           seed=derive_seed(0, a_run.run_id, b_run.run_id), refine=8, batched=True)
    assert row["barrier"] == pytest.approx(found["barrier"] / scale, rel=1e-7, abs=1e-12)
    assert row["normalized_length"] == pytest.approx(found["normalized_length"], rel=1e-7)
    assert row["loss_a"] == pytest.approx(float(mlp_loss(weights_of(a_run))), rel=1e-9)
    # The relative numbers from their formulas: over max(end losses, 1e-3 x mean y^2).
    ends = max(float(found["loss_a"]), float(found["loss_b"]), 1e-3 * scale * float((data.y_train ** 2).mean()))
    assert row["relative_barrier"] == pytest.approx(found["barrier"] / ends, rel=1e-7, abs=1e-12)
    history = found["history"]
    assert row["barrier_change"] == pytest.approx(float(history[-2] - history[-1]) / ends, rel=1e-6, abs=1e-10)
    assert abs(row["barrier_change"]) > 1e-6  # 25 steps: the string still moves


def test_classification_pairs_report_test_error_and_ln_c_scale(tmp_path):
    results = tmp_path / "results"
    run(results, spec("cls", kind="gaussian-mixture", options='pairs = "seed", method = "bezier", beads = 4, '
                                                             'steps = 20, restarts = 2'))
    got = rows(results, "cls")
    assert len(got) == 6
    for r in got:
        assert r["method"] == "bezier" and r["beads"] == 1 and r["restarts"] == 2
        assert 0 <= r["max_test_error"] <= 1
        assert r["loss_scale"] == pytest.approx(math.log(2))


def test_linear_method_is_the_straight_line(tmp_path):
    results = tmp_path / "results"
    # A floor above every end loss: the barrier is judged against floor x loss_scale.
    run(results, spec("lin", options='pairs = "seed", method = "linear", end_loss_floor = 100.0'))
    for r in rows(results, "lin"):
        assert r["barrier"] == pytest.approx(r["linear_barrier"], rel=1e-12, abs=1e-15)
        assert r["normalized_length"] == pytest.approx(1.0)
        assert r["steps"] == 0 and r["lr"] is None
        assert r["barrier_change"] is None and r["converged"] is None  # nothing relaxed
        assert r["relative_barrier"] == pytest.approx(r["barrier"] / (100 * r["loss_scale"]), rel=1e-12)
        assert r["connected"] == (r["barrier"] <= 0.05 * 100 * r["loss_scale"])


def test_pairs_over_init_scale_stay_in_one_family_when_families_are_small():
    sweep = spec(options='pairs = "init_scale"', extra="init_scale = [0.5, 1.0]", size=2)
    plan = plan_sweep(sweep)
    family_of = {r.run_id: f.family_id for f in plan.families for r in f.runs}
    assert all(f.size <= 2 for f in plan.families)
    for run in plan.runs:
        partner = next(r for r in plan.runs if r.seed == run.seed and r.model.depth == run.model.depth
                       and r.model.init_scale != run.model.init_scale)
        assert family_of[run.run_id] == family_of[partner.run_id]


def test_a_pair_with_a_diverged_end_gets_a_row_without_numbers(tmp_path):
    results = tmp_path / "results"
    run(results, spec("div", options='pairs = "seed", beads = 2, steps = 5', extra='"train.lr" = [0.2, 1e12]'))
    got = run_query(results, "SELECT v.*, r.lr AS run_lr FROM valleys v JOIN runs r ON r.sweep = v.sweep AND "
                              "r.run_id = v.run_a WHERE v.sweep = 'div'").to_pylist()
    assert len(got) == 12
    for r in got:
        if r["run_lr"] > 1:
            assert r["status"] == "end-diverged" and r["barrier"] is None and r["connected"] is None
        else:
            assert r["status"] == "ok" and r["barrier"] is not None


def test_a_string_that_blows_up_keeps_its_last_path_and_no_convergence_verdict(tmp_path):
    results = tmp_path / "results"
    # Deep linear nets (no ReLU to die): a step of 1e12 overflows the loss within a few steps.
    run(results, spec("blow", options='pairs = "seed", beads = 2, steps = 8, lr = 1e12',
                      extra='"model.kind" = ["linear"]'))
    for r in rows(results, "blow"):
        assert r["status"] == "relaxation-stopped" and r["stopped_step"] >= 1
        assert r["barrier"] is not None and r["connected"] is not None and r["converged"] is None


@pytest.mark.parametrize("options, extra, message", [
    ('pairs = "seed"', "", None),
    ('pairs = "depth"', "", 'measure.valleys.pairs: expected "seed" | "init_scale"'),
    ('pairs = "init_scale"', "", "measure.valleys.pairs: model.init_scale must be swept in [grid] over at least two"),
    ('method = "neb"', "", 'measure.valleys.method: expected one of "string" | "bezier" | "linear"'),
    ("beads = 0", "", "measure.valleys.beads: expected an integer >= 1"),
    ("tolerance = -0.1", "", "measure.valleys.tolerance: expected a number >= 0"),
    ("end_loss_floor = -1e-3", "", "measure.valleys.end_loss_floor: expected a number >= 0"),
    ('change_tolerance = "small"', "", "measure.valleys.change_tolerance"),
])
def test_bad_valley_options_are_one_line_errors(options, extra, message):
    if message is None:
        assert spec(options=options).measure.valleys.pairs == "seed"
        return
    with pytest.raises(SpecError, match=message.replace("|", r"\|").replace("[", r"\[").replace("]", r"\]")):
        spec(options=options, extra=extra)


def test_a_pair_group_larger_than_a_family_is_refused():
    with pytest.raises(SpecError, match="max_family_size = 2 is smaller than 3 runs"):
        plan_sweep(spec(size=2))

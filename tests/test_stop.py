"""train.stop_train_loss: members frozen once their training loss reaches a target, as
Jiang et al. (2020) train every net to a cross-entropy of 0.01 before comparing them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from helpers import ACCELERATION_SPEC, base_run, make_runs
from theoryscope.core.config import DataKind, DataSpec, FieldError, ModelSpec, Optimizer, TrainSpec
from theoryscope.core.errors import SpecError
from theoryscope.core.train import FamilyTraining, train_family
from theoryscope.sweeps.dispatch import LocalBackend
from theoryscope.sweeps.launch import launch, prepare
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.tables import run_query

CPU = torch.device("cpu")
STOP = 0.3
CLASSIFIER = base_run(DataSpec(kind=DataKind.GAUSSIAN_MIXTURE, n_train=40, n_test=24, input_dim=5, n_classes=3,
                               class_sep=4.0),
                      ModelSpec(depth=2, width=16), TrainSpec(lr=0.2, steps=60, stop_train_loss=STOP))


def family(**changes):
    runs = make_runs(dataclasses.replace(CLASSIFIER, train=dataclasses.replace(CLASSIFIER.train, **changes)),
                     train__lr=[0.02, 0.2, 0.5], seed=[0, 1])
    return runs, train_family(runs, CPU)


def unstopped(run, log_every=1):
    """The same run trained for every step, logged at every step."""
    train = dataclasses.replace(run.train, stop_train_loss=0.0, log_every=log_every)
    return train_family([dataclasses.replace(run, train=train)], CPU)


def test_a_member_stops_at_the_first_step_its_training_loss_reaches_the_target():
    runs, result = family()
    stopped = result.stopped_step
    assert (stopped >= 0).sum() >= 3 and (stopped == -1).any()  # the slow rate never gets there
    for f, run in enumerate(runs):
        alone = unstopped(run)
        below = np.flatnonzero(alone.train_loss[:, 0] <= STOP)
        assert stopped[f] == (alone.steps[below[0]] if len(below) else -1)


def test_a_stopped_member_keeps_the_weights_and_numbers_of_its_stop_step():
    """Its weights are those of the run trained alone for exactly stopped_step steps, and
    its curve stays at that step's values to the end."""
    runs, result = family()
    for f, run in enumerate(runs):
        step = int(result.stopped_step[f])
        if step < 0:
            continue
        until = train_family([dataclasses.replace(run, train=dataclasses.replace(
            run.train, stop_train_loss=0.0, steps=step))], CPU) if step else None
        start = FamilyTraining([run], CPU).params if step == 0 else until.params
        for got, want in zip(result.params.weights, start.weights):
            torch.testing.assert_close(got[f], want[0], rtol=1e-9, atol=1e-12)
        after = result.steps >= step
        assert np.all(result.train_loss[after, f] == result.train_loss[after, f][0])
        assert result.train_loss[-1, f] <= STOP
        if until is not None:
            assert result.train_loss[-1, f] == pytest.approx(until.train_loss[-1, 0], rel=1e-9)


def test_a_family_ends_once_every_member_has_stopped(monkeypatch):
    runs = make_runs(dataclasses.replace(CLASSIFIER, train=dataclasses.replace(CLASSIFIER.train, steps=400)),
                     train__lr=[0.2, 0.5])
    steps_run = []
    original = FamilyTraining.run_step
    monkeypatch.setattr(FamilyTraining, "run_step", lambda self: (steps_run.append(self.step), original(self))[1])
    result = train_family(runs, CPU, snapshot_steps=[400])
    assert (result.stopped_step >= 0).all() and len(steps_run) == result.stopped_step.max() + 1 < 400
    for f, run in enumerate(runs):  # the final point is the frozen net's: the run trained to its stop step
        until = train_family([dataclasses.replace(run, train=dataclasses.replace(
            run.train, stop_train_loss=0.0, steps=int(result.stopped_step[f])))], CPU)
        assert result.train_loss[-1, f] == pytest.approx(until.train_loss[-1, 0], rel=1e-9)
        assert result.test_error[-1, f] == until.test_error[-1, 0]
    for got, want in zip(result.snapshots[400].weights, result.params.weights):
        torch.testing.assert_close(got.cpu(), want)


def test_with_minibatches_a_family_ends_at_the_logged_step_where_the_last_member_stopped(monkeypatch):
    runs = make_runs(dataclasses.replace(CLASSIFIER, train=dataclasses.replace(
        CLASSIFIER.train, optimizer=Optimizer.SGD, batch_size=10, log_every=7, steps=700)), train__lr=[0.2, 0.5])
    steps_run = []
    original = FamilyTraining.run_step
    monkeypatch.setattr(FamilyTraining, "run_step", lambda self: (steps_run.append(self.step), original(self))[1])
    result = train_family(runs, CPU)
    last = result.stopped_step.max()
    assert (result.stopped_step >= 0).all() and last % 7 == 0 and steps_run == list(range(last + 1))


def test_with_minibatches_the_stop_is_checked_at_logged_steps():
    runs, result = family(optimizer=Optimizer.SGD, batch_size=10, log_every=7)
    logged = set(result.steps.tolist())
    assert (result.stopped_step >= 0).any()
    assert all(s in logged for s in result.stopped_step.tolist() if s >= 0)
    for f in np.flatnonzero(result.stopped_step >= 0):
        row = result.steps.tolist().index(result.stopped_step[f])
        assert result.train_loss[row, f] <= STOP and (row == 0 or result.train_loss[row - 1, f] > STOP)


def test_a_checkpointed_family_continues_its_stops():
    runs, whole = family()
    training = FamilyTraining(runs, CPU)
    while training.step < 15:
        training.run_step()
    again = FamilyTraining(runs, CPU)
    again.load_state_dict(training.state_dict())
    while not again.finished:
        again.run_step()
        if again.all_frozen:
            again.fast_forward()
    np.testing.assert_array_equal(again.result().stopped_step, whole.stopped_step)


def test_the_runs_table_says_who_stopped_and_the_default_changes_no_run_id(tmp_path):
    spec = parse_spec("""
name = "stop"
[data]
kind = "gaussian-mixture"
n_train = 40
n_test = 24
input_dim = 5
n_classes = 3
class_sep = 4.0
[model]
width = 16
[train]
lr = 0.2
steps = 60
stop_train_loss = 0.3
[grid]
"train.lr" = [0.02, 0.5]
""")
    results = tmp_path / "results"
    launch(prepare(spec, results), results, LocalBackend())
    rows = run_query(results, "SELECT lr, stopped_step, reached_stop, train_loss, stop_train_loss FROM runs "
                              "ORDER BY lr").to_pylist()
    assert [(r["reached_stop"], r["stopped_step"] is None) for r in rows] == [(False, True), (True, False)]
    assert rows[1]["train_loss"] <= 0.3 and {r["stop_train_loss"] for r in rows} == {0.3}
    plain = dataclasses.replace(CLASSIFIER, train=dataclasses.replace(CLASSIFIER.train, stop_train_loss=0.0))
    assert "stop_train_loss" not in plain.to_config()["train"]
    assert plain.run_id != CLASSIFIER.run_id


def test_bad_stops_are_refused():
    with pytest.raises(FieldError, match="stop_train_loss: expected a number >= 0"):
        TrainSpec(stop_train_loss=-1.0)
    with pytest.raises(SpecError, match=r'train\.stop_train_loss: expected 0 \(off\) outside experiment = "train"'):
        parse_spec(ACCELERATION_SPEC.format(name="a", overparam="full", steps=10).replace(
            'optimizer = "gd"', 'optimizer = "gd"\nstop_train_loss = 0.1'))

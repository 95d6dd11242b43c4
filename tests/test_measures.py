"""The contract every measure and experiment keeps: one parametrized test over the
registry (``sweeps.measures``) and the map (``sweeps.experiments``)."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from theoryscope.core.config import Experiment, ModelKind
from theoryscope.sweeps.experiments import EXPERIMENTS
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.measures import MEASURES, MeasureSpec
from theoryscope.sweeps.tables import FIGURES, TABLES, VIEWS

PARTS = [*MEASURES.values(), *EXPERIMENTS.values()]


@pytest.mark.parametrize("measure", MEASURES.values(), ids=list(MEASURES))
def test_a_measure_with_options_is_a_key_of_the_measure_section(measure):
    if measure.options is None:
        assert measure.name not in {f.name for f in dataclasses.fields(MeasureSpec)}
        return
    defaults = measure.options()
    assert dataclasses.is_dataclass(defaults) and defaults.__dataclass_params__.frozen
    model = "" if ModelKind.MLP in measure.models else (
        '[data]\nkind = "digits"\nn_train = 100\nn_test = 100\n[model]\nkind = "cnn"\n')  # a CNN's measure
    spec = parse_spec(f'name = "m"\n{model}[measure]\n{measure.name} = true\n[grid]\nseed = [0, 1]')
    assert getattr(spec.measure, measure.name) == defaults


@pytest.mark.parametrize("part", PARTS, ids=[getattr(p, "name", None) or p.experiment.value for p in PARTS])
def test_every_table_is_keyed_by_sweep_and_every_figure_reads_known_views(part):
    for schema in part.tables.values():
        assert schema.names[0] == "sweep"
    views = {*VIEWS.tables, *VIEWS.derived}
    for figure in part.figures:
        assert figure.sql.count("{sweep}") >= 1
        assert any(f" {view} " in f" {figure.sql} " for view in views)


def test_names_are_not_shared_and_every_experiment_has_its_kind():
    tables = [name for part in PARTS for name in part.tables]
    spine = {"sweeps", "runs", "curves", "weights"}
    assert len(tables) == len(set(tables)) and not set(tables) & spine
    assert set(TABLES) == {*spine, *tables}
    assert not [name for name, n in Counter(f.name for f in FIGURES).items() if n > 1]
    assert set(EXPERIMENTS) == set(Experiment)
    assert [f.name for f in dataclasses.fields(MeasureSpec)] == [m.name for m in MEASURES.values() if m.options]

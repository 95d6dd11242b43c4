"""Cushions inside sweeps: rows for every run, layer and measured step; a family's
measures equal the same nets measured one by one."""

from __future__ import annotations

import math

import pytest

from theoryscope.core.measures.compression import effective_params
from theoryscope.sweeps.dispatch import LocalBackend
from theoryscope.sweeps.launch import launch, prepare
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.tables import run_query

CUSHION_SPEC = """
name = "{name}"
[data]
kind = "gaussian-mixture"
n_train = 96
n_test = 64
input_dim = 8
n_classes = 3
class_sep = 5.0
[train]
lr = 0.2
steps = 60
log_every = 20
dtype = "float64"
[grid]
depth = [1, 3]
label_noise = [0.0, 0.2]
seed = [0, 1]
[model]
width = 12
[measure]
cushions = {{ max_samples = 40, steps = [0, 30], compression_k = 32, percentiles = [10, 50], margin_percentile = 20 }}
[resources]
max_family_size = {size}
"""


def run(results, name, size):
    spec = parse_spec(CUSHION_SPEC.format(name=name, size=size))
    summary = launch(prepare(spec, results), results, LocalBackend())
    assert summary.total("n_ok") == 8
    return summary


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    results = tmp_path_factory.mktemp("cushions") / "results"
    run(results, "stacked", 512)
    run(results, "alone", 1)
    return results


def test_one_layers_row_per_run_layer_and_step(measured):
    rows = run_query(measured, "SELECT r.depth, count(*) AS n, count(DISTINCT l.step) AS steps FROM layers l "
                               "JOIN runs r USING (sweep, run_id) WHERE sweep = 'stacked' GROUP BY r.depth "
                               "ORDER BY r.depth").to_pylist()
    # 4 runs per depth, 3 measured steps (0, 30, the last), depth layers each
    assert rows == [{"depth": 1, "n": 4 * 3 * 1, "steps": 3}, {"depth": 3, "n": 4 * 3 * 3, "steps": 3}]
    bounds = run_query(measured, "SELECT count(*) AS n FROM bounds WHERE sweep = 'stacked'").to_pylist()
    assert bounds == [{"n": 8 * 3}]


def test_percentile_columns_and_paper_quantities_are_consistent(measured):
    rows = run_query(measured, "SELECT * FROM layers WHERE sweep = 'stacked'").to_pylist()
    for r in rows:
        assert r["layer_cushion"] <= r["layer_cushion_p10"] <= r["layer_cushion_p50"]
        assert r["interlayer_cushion"] <= 1 / math.sqrt(r["fan_out"]) + 1e-12  # mu_{i->} <= 1/sqrt(h^i)
        assert r["stable_rank"] >= 1 - 1e-9
        last = r["layer"] == max(x["layer"] for x in rows if x["run_id"] == r["run_id"])
        assert (r["activation_contraction"] is None) == last and (r["interlayer_smoothness"] is None) == last


def test_the_bound_is_theorem_4_1_of_the_measured_quantities(measured):
    bounds = run_query(measured, "SELECT * FROM bounds WHERE sweep = 'stacked' AND margin IS NOT NULL "
                                 "AND step = 60").to_pylist()
    assert bounds, "some trained nets should have a positive 20th-percentile margin"
    for b in bounds:
        layers = run_query(measured, f"SELECT layer_cushion, interlayer_cushion FROM layers WHERE run_id = "
                                     f"'{b['run_id']}' AND step = 60 AND sweep = 'stacked' ORDER BY layer").to_pylist()
        q = effective_params(b["activation_contraction"], len(layers), b["max_output_norm"],
                             [r["layer_cushion"] for r in layers], [r["interlayer_cushion"] for r in layers], b["margin"])
        assert b["effective_params"] == pytest.approx(q, rel=1e-9)
        assert b["bound"] == pytest.approx(b["margin_loss"] + math.sqrt(q / 96), rel=1e-9)
        assert b["compressed_params"] == 32 * len(layers)


@pytest.mark.parametrize("table,key", [("layers", "run_id, step, layer"), ("bounds", "run_id, step")])
def test_a_family_measures_what_its_members_measure_alone(measured, table, key):
    stacked = run_query(measured, f"SELECT * EXCLUDE (sweep) FROM {table} WHERE sweep = 'stacked' ORDER BY {key}")
    alone = run_query(measured, f"SELECT * EXCLUDE (sweep) FROM {table} WHERE sweep = 'alone' ORDER BY {key}")
    assert stacked.num_rows == alone.num_rows > 0
    for a, b in zip(stacked.to_pylist(), alone.to_pylist()):
        for name in a:
            if isinstance(a[name], float):
                assert a[name] == pytest.approx(b[name], rel=1e-6, abs=1e-12), (name, a, b)
            else:
                assert a[name] == b[name], name

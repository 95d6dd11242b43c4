"""Cushions inside sweeps: rows for every run, layer and measured step; a family's
measures equal the same nets measured one by one; the spec options check themselves."""

from __future__ import annotations

import math

import pytest

from theoryscope.core.errors import SpecError
from theoryscope.core.measures.compression import effective_params
from theoryscope.sweeps.dispatch import LocalBackend
from theoryscope.sweeps.launch import launch, prepare
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.measures.cushions import CushionSpec
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
cushions = {{ steps = [0, 30], compression_error = 1.2, percentiles = [10, 50], margin_percentile = 20 }}
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


def rows(results, sql):
    return run_query(results, sql).to_pylist()


def test_one_layers_row_per_run_layer_and_step(measured):
    got = rows(measured, "SELECT r.depth, count(*) AS n, count(DISTINCT l.step) AS steps FROM layers l "
                         "JOIN runs r USING (sweep, run_id) WHERE sweep = 'stacked' GROUP BY r.depth "
                         "ORDER BY r.depth")
    # 4 runs per depth, 3 measured steps (0, 30, the last), depth layers each
    assert got == [{"depth": 1, "n": 4 * 3 * 1, "steps": 3}, {"depth": 3, "n": 4 * 3 * 3, "steps": 3}]
    assert rows(measured, "SELECT count(*) AS n, min(samples) AS lo, max(samples) AS hi FROM bounds "
                          "WHERE sweep = 'stacked'") == [{"n": 8 * 3, "lo": 96, "hi": 96}]  # every sample
    # attenuation: one row per pair i < j of a depth-3 net (3 pairs), none at depth 1
    assert rows(measured, "SELECT r.depth, count(*) AS n, min(a.noise) AS noise FROM attenuation a JOIN runs r "
                          "USING (sweep, run_id) WHERE sweep = 'stacked' GROUP BY r.depth") == [
        {"depth": 3, "n": 4 * 3 * 3, "noise": 0.1}]


def test_percentile_columns_and_paper_quantities_are_consistent(measured):
    got = rows(measured, "SELECT * FROM layers WHERE sweep = 'stacked'")
    for r in got:
        assert r["layer_cushion"] <= r["layer_cushion_p10"] <= r["layer_cushion_p50"]
        assert r["interlayer_cushion"] <= 1 / math.sqrt(r["fan_out"]) + 1e-12  # mu_{i->} <= 1/sqrt(h^i)
        assert r["stable_rank"] >= 1 - 1e-9
        last = r["layer"] == max(x["layer"] for x in got if x["run_id"] == r["run_id"])
        for name in ("activation_contraction", "interlayer_smoothness", "interlayer_smoothness_pooled",
                     "noise_attenuation"):
            assert (r[name] is None) == last, name


def test_the_net_smoothness_is_at_most_every_layers(measured):
    """Per draw the net's minimum is at most each layer's, so rho_delta <= min over layers of the per-layer
    figure; the attenuation at the output is layers.noise_attenuation."""
    got = rows(measured, "SELECT b.run_id, b.step, any_value(b.interlayer_smoothness) AS net, "
                         "min(l.interlayer_smoothness) AS layer, any_value(b.premise_smoothness) AS held FROM bounds b "
                         "JOIN layers l USING (sweep, run_id, step) JOIN runs r USING (sweep, run_id) "
                         "WHERE sweep = 'stacked' AND r.depth = 3 GROUP BY b.run_id, b.step")
    assert len(got) == 4 * 3
    for r in got:  # 0 where a sample's x^j is zero but its perturbation's is not
        assert 0 <= r["net"] <= r["layer"] and r["held"] == (r["net"] >= 9)
    assert sum(r["net"] > 0 for r in got) >= 8
    shallow = rows(measured, "SELECT b.interlayer_smoothness AS rho, b.premise_smoothness AS held FROM bounds b "
                             "JOIN runs r USING (sweep, run_id) WHERE sweep = 'stacked' AND r.depth = 1")
    assert shallow and all(r["rho"] == math.inf and r["held"] for r in shallow)  # no pair i < j: vacuous
    pairs = rows(measured, "SELECT a.attenuation, l.noise_attenuation FROM attenuation a JOIN layers l ON "
                           "l.sweep = a.sweep AND l.run_id = a.run_id AND l.step = a.step AND l.layer = a.layer "
                           "WHERE a.sweep = 'stacked' AND a.at_layer = 3")
    assert pairs and all(p["attenuation"] == p["noise_attenuation"] for p in pairs)


def test_the_bound_is_theorem_4_1_where_its_premises_hold(measured):
    bounds = rows(measured, "SELECT * FROM bounds WHERE sweep = 'stacked' AND step = 60")
    assert any(b["premise"] for b in bounds) and not all(b["premise"] for b in bounds)
    for b in bounds:
        layers = rows(measured, f"SELECT * FROM layers WHERE run_id = '{b['run_id']}' AND step = 60 AND "
                                f"sweep = 'stacked' ORDER BY layer")
        q = effective_params(b["activation_contraction"], len(layers), b["max_output_norm"],
                             [r["layer_cushion"] for r in layers], [r["interlayer_cushion"] for r in layers],
                             b["margin"])
        assert b["effective_params"] == pytest.approx(q, rel=1e-9)
        assert b["bound_formula"] == pytest.approx(b["margin_loss"] + math.sqrt(q / 96), rel=1e-9)
        assert b["premise"] == (b["premise_smoothness"] and b["premise_margin"] and b["premise_cushions"])
        assert b["premise_margin"] == (b["margin"] > 0)
        assert b["bound"] == (b["bound_formula"] if b["premise"] else None)
        stored = [r["compression_k"] if r["compressed"] else r["fan_in"] * r["fan_out"] for r in layers]
        assert b["compressed_params"] == sum(stored) and b["compressed_layers"] == sum(r["compressed"] for r in layers)
        assert b["compression_target"] == 1.2


def test_layers_are_compressed_to_the_target_error(measured):
    """k per layer from the target: a compressed layer uses the k it needs, fewer than its weights, and meets
    eps in expectation; a layer kept needs at least its weights; the measured error is near the expected one."""
    got = rows(measured, "SELECT * FROM layers WHERE sweep = 'stacked'")
    assert {r["compressed"] for r in got} == {True, False}
    for r in got:
        if r["compressed"]:
            assert r["compression_k"] == r["compression_k_needed"] < r["fan_in"] * r["fan_out"]
            assert 0 < r["compression_expected_error"] <= 1.2
            assert r["compression_layer_error"] == pytest.approx(r["compression_expected_error"], rel=0.5)
        else:
            assert r["compression_k"] is None and r["compression_k_needed"] >= r["fan_in"] * r["fan_out"]
            assert r["compression_layer_error"] == r["compression_expected_error"] == 0


@pytest.mark.parametrize("table,key", [("layers", "run_id, step, layer"), ("bounds", "run_id, step"),
                                       ("attenuation", "run_id, step, layer, at_layer")])
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


def spec_with(options: str, depth: str = "[1, 3]"):
    return parse_spec(f'name = "c"\n[model]\nwidth = 4\n[grid]\ndepth = {depth}\n[measure]\ncushions = {{ {options} }}')


def test_the_compression_options_check_themselves():
    assert spec_with("").measure.cushions == CushionSpec()
    assert CushionSpec().max_samples == 0 and CushionSpec().compression_k == () and CushionSpec().draws >= 10
    assert spec_with("compression_k = [8, 0, 4]", "[3]").measure.cushions.compression(3).k == (8, 0, 4)
    assert spec_with("compression_k = 8").measure.cushions.compression(2).k == (8, 8)
    assert spec_with("compression_k = 0").measure.cushions.compression(2) is None
    assert spec_with("compression_error = 0.3").measure.cushions.compression(2).k is None
    with pytest.raises(SpecError, match=r"measure\.cushions\.compression_k: a list of 2 integers .* needs every net "
                                        r"to have depth 2, but \[grid\] sweeps depth over \[1, 3\]"):
        spec_with("compression_k = [8, 8]")
    unswept = 'name = "c"\n[model]\nwidth = 4\ndepth = 3\n[grid]\nseed = [0, 1]\n[measure]\ncushions = { compression_k = [8, 8] }'
    with pytest.raises(SpecError, match=r"compression_k: a list of 2 integers .* but model\.depth is 3"):
        parse_spec(unswept)
    assert parse_spec(unswept.replace("[8, 8]", "[8, 8, 8]")).measure.cushions.compression(3).k == (8, 8, 8)
    with pytest.raises(SpecError, match=r"measure\.cushions\.compression_k: expected 3 integers"):
        CushionSpec(compression_k=(8, 8)).compression(3)
    for bad, message in [("compression_k = -1", r"compression_k: expected an integer >= 0"),
                         ("compression_k = [4, -2]", r"compression_k: expected an integer >= 0 .* got \[4, -2\]"),
                         ('compression_k = "all"', r"compression_k: expected an integer or a list"),
                         ("compression_error = 0", r"compression_error: expected a number > 0"),
                         ("compression_max_k = 0", r"compression_max_k: expected an integer >= 1"),
                         ("attenuation_noise = -0.1", r"attenuation_noise: expected a number > 0"),
                         ("max_samples = -1", r"max_samples: expected an integer >= 0")]:
        with pytest.raises(SpecError, match=r"measure\.cushions\." + message):
            spec_with(bad)

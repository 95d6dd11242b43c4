"""Absurd numbers are refused up front, in one line, with nothing written: integers the
engine cannot hold, and nets whose memory estimate is more than any machine has. Logged
steps are computed, never listed, so a huge step count costs nothing to plan."""

from __future__ import annotations

import dataclasses

import pytest

from helpers import invoke, one_line_error
from theoryscope.core.config import TrainSpec
from theoryscope.sweeps.capacity import capacity_for
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.plan import CURVE_ROW_BYTES, member_cost, plan_sweep
from theoryscope.sweeps.spec import ResourceSpec

TINY = """
name = "tiny"
{top}
[data]
n_train = 16
n_test = 16
input_dim = 4
[model]
width = 4
[train]
steps = {steps}
log_every = {log_every}
{grid}
"""


def tiny(top: str = "", steps: int | str = 5, log_every: int = 1, grid: str = "") -> str:
    return TINY.format(top=top, steps=steps, log_every=log_every, grid=grid)


@pytest.mark.parametrize("text,fragment", [
    (tiny(top="seed = 100000000000000000000000"), "seed: expected an integer of at most 64 bits"),
    (tiny(grid="[grid]\nseed = [0, 100000000000000000000000]"), "grid.seed[1]: expected an integer of at most 64 bits"),
    (tiny(steps="9223372036854775808"), "train.steps: expected an integer of at most 64 bits"),
    (tiny(grid='[grid]\n"data.seed" = [-9223372036854775809]'), "of at most 64 bits"),
])
def test_integers_beyond_64_bits_are_one_line_errors(write_spec, results, text, fragment):
    spec = write_spec(text)
    for command in (("plan", spec), ("launch", spec, "--results", results, "--backend", "local")):
        assert fragment in one_line_error(invoke(*command))
    assert not results.exists()


@pytest.mark.parametrize("steps,log_every", [(99999999999999999, 20), (10**9, 1)])
def test_a_net_larger_than_any_machine_is_refused_before_anything_is_written(write_spec, results, steps, log_every):
    spec = write_spec(tiny(steps=steps, log_every=log_every))
    line = one_line_error(invoke("launch", spec, "--results", results, "--backend", "local"))
    assert "by the memory estimate" in line and "more than the" in line and "train.log_every" in line
    assert not results.exists()
    planned = invoke("plan", spec)  # plan warns (a cluster's nodes may be larger) and shows the plan
    assert planned.exit_code == 0 and "this machine cannot run it" in planned.stderr


def test_the_refusal_is_against_the_largest_slot():
    run = plan_sweep(parse_spec(tiny(steps=10**6))).runs[0]
    need = member_cost(run).bytes
    resources = ResourceSpec()
    fits = capacity_for([{"CPU": 1, "memory": need / 2}, {"CPU": 1, "memory": need * 1.5}], resources)
    plan_sweep(parse_spec(tiny(steps=10**6)), capacity=fits)  # the larger node can hold it
    too_small = capacity_for([{"CPU": 2, "memory": need * 1.5}], resources)  # two slots of 0.75 x need
    with pytest.raises(Exception, match="by the memory estimate"):
        plan_sweep(parse_spec(tiny(steps=10**6)), capacity=too_small)


def test_the_memory_estimate_counts_every_logged_step():
    run = plan_sweep(parse_spec(tiny(steps=1000, log_every=10))).runs[0]
    longer = dataclasses.replace(run, train=dataclasses.replace(run.train, steps=2000))
    assert member_cost(longer).bytes - member_cost(run).bytes == 100 * CURVE_ROW_BYTES


@pytest.mark.parametrize("steps", [1, 2, 5, 19, 20, 21, 40, 97, 1000])
@pytest.mark.parametrize("log_every", [1, 2, 3, 7, 20, 1000, 5000])
def test_logged_steps_are_computed_as_listing_them_would(steps, log_every):
    """Oracle: the set {0, k, 2k, ...} plus the last step, listed the slow way."""
    spec = TrainSpec(steps=steps, log_every=log_every)
    listed = sorted(set(range(0, steps + 1, log_every)) | {steps})
    assert spec.log_steps().tolist() == listed
    assert spec.n_log_steps == len(listed)
    assert [spec.log_row(s) for s in range(-1, steps + 2)] == \
        [listed.index(s) if s in listed else None for s in range(-1, steps + 2)]


def test_a_billion_steps_plan_without_listing_them():
    spec = TrainSpec(steps=10**12, log_every=7)
    assert spec.n_log_steps == 10**12 // 7 + 2
    assert spec.log_row(10**12) == spec.n_log_steps - 1 and spec.log_row(7 * 12345) == 12345
    run = dataclasses.replace(plan_sweep(parse_spec(tiny())).runs[0], train=spec)
    assert member_cost(run).bytes > spec.n_log_steps * CURVE_ROW_BYTES  # computed, not listed

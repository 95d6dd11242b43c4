"""Packing families for the machines: memory estimates against each slot's memory,
large groups split to spread the work, cheap ones left whole, the largest first."""

from __future__ import annotations

import collections
import dataclasses

import pytest

from helpers import SMALL_SPEC
from theoryscope.sweeps.capacity import USABLE, capacity_for
from theoryscope.sweeps.dispatch import LocalBackend
from theoryscope.sweeps.launch import launch, prepare
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.plan import Capacity, Family, estimate_cost, fit_plan, member_cost, pack_families, plan_sweep
from theoryscope.sweeps.spec import ResourceSpec

# Two shapes: a costly depth-3 width-64 group and a cheap depth-1 group.
SPEC = """
name = "packing"

[data]
kind = "teacher-student"
n_train = 256
n_test = 64
input_dim = 8

[model]
kind = "mlp"
width = 64

[train]
lr = 0.05
steps = 40
log_every = 10

[grid]
depth = [1, 3]
seed = [0, 1, 2, 3, 4, 5, 6, 7]
"""

GiB = 1024**3


def group_cost(runs) -> float:
    return sum(member_cost(r).flops for r in runs)


def test_a_group_with_most_of_the_work_is_split_over_the_slots():
    runs = plan_sweep(parse_spec(SPEC)).runs
    deep = [r for r in runs if r.model.depth == 3]
    total = group_cost(runs)
    capacity = Capacity(slots=2, family_bytes=GiB, min_family_flops=0.0)
    families = pack_families(runs, 512, capacity=capacity)
    sizes = collections.Counter(f.exemplar.model.depth for f in families)
    share = total / (2 * capacity.slots)
    assert sizes[3] == -(-group_cost(deep) // share) == 4  # each a quarter of the sweep's work at most
    assert sizes[1] == 1  # the cheap group stays one family
    assert sorted(r.run_id for f in families for r in f.runs) == sorted(r.run_id for r in runs)
    assert {f.size for f in families if f.exemplar.model.depth == 3} == {2}


def test_cheap_groups_are_not_split_below_the_minimum_work():
    runs = plan_sweep(parse_spec(SPEC)).runs
    lots = Capacity(slots=64, family_bytes=GiB, min_family_flops=group_cost(runs))
    assert len(pack_families(runs, 512, capacity=lots)) == 2


def test_a_family_fits_its_slots_memory():
    runs = plan_sweep(parse_spec(SPEC)).runs
    per_member = member_cost(next(r for r in runs if r.model.depth == 3)).bytes
    tight = Capacity(slots=1, family_bytes=3 * per_member, min_family_flops=float("inf"))
    families = [f for f in pack_families(runs, 512, capacity=tight) if f.exemplar.model.depth == 3]
    assert max(f.size for f in families) <= 3 and sum(f.size for f in families) == 8
    assert all(estimate_cost(f).bytes <= tight.family_bytes for f in families)
    # Without a capacity only max_family_size counts.
    assert [f.size for f in pack_families(runs, 512) if f.exemplar.model.depth == 3] == [8]


def test_members_on_one_draw_count_their_inputs_once():
    """10^4 seeds over one data draw: the estimate holds the inputs once, as the trainer
    does (``stack_data``: one copy, expanded); other data seeds count one copy each."""
    text = SPEC.replace("depth = [1, 3]", "depth = [3]").replace("seed = [0, 1, 2, 3, 4, 5, 6, 7]",
                                                                f"seed = {list(range(10_000))}")
    text = text.replace("n_train = 256", "n_train = 4096").replace("input_dim = 8", "input_dim = 512")
    runs = plan_sweep(parse_spec(text)).runs
    cost = member_cost(runs[0])
    assert cost.input_bytes == 4 * (4096 + 64) * 512  # float32 inputs, train and test
    shared = estimate_cost(Family("shared", runs))
    assert shared.bytes == cost.input_bytes + len(runs) * (cost.bytes - cost.input_bytes)
    two_draws = [dataclasses.replace(r, data=dataclasses.replace(r.data, seed=i % 2)) for i, r in enumerate(runs[:4])]
    assert estimate_cost(Family("two", tuple(two_draws))).bytes == 4 * cost.bytes
    # Packing for memory: a slot that holds 8 members with their own inputs holds many
    # more on one draw.
    room = Capacity(slots=1, family_bytes=8 * cost.bytes, min_family_flops=float("inf"))
    fits = (room.family_bytes - cost.input_bytes) // (cost.bytes - cost.input_bytes)
    assert fits > 8
    assert max(f.size for f in pack_families(runs, 10**5, capacity=room)) == fits
    assert max(f.size for f in pack_families(two_draws, 10**5, capacity=room)) == 4
    assert all(estimate_cost(f).bytes <= room.family_bytes for f in pack_families(runs, 10**5, capacity=room))


def test_valley_pairs_stay_together_when_a_group_is_split():
    text = (SPEC.replace("depth = [1, 3]", "depth = [3]\ninit_scale = [0.5, 1.0, 1.5, 2.0]")
            .replace("seed = [0, 1, 2, 3, 4, 5, 6, 7]", "seed = [0, 1]")
            + '\n[measure]\nvalleys = {pairs = "seed", steps = 5}\n')
    plan = plan_sweep(parse_spec(text), capacity=Capacity(slots=4, family_bytes=GiB, min_family_flops=0.0))
    assert len(plan.families) == 4
    for family in plan.families:  # each pair (the two seeds of one init scale) whole
        scales = collections.Counter(r.model.init_scale for r in family.runs)
        assert set(scales.values()) == {2}


def test_capacity_of_cpu_and_gpu_nodes():
    nodes = [{"CPU": 8.0, "memory": 32 * GiB, "GPU": 2.0}, {"CPU": 4.0, "memory": 8 * GiB}]
    cpu = capacity_for(nodes, ResourceSpec(num_cpus=2))
    assert cpu.slots == 4 + 2
    # The tighter node: 8 GiB over 2 slots, half of it, rounded down to a power of two.
    assert cpu.family_bytes == 2 * GiB == int(8 * GiB / 2 * USABLE)
    gpu = capacity_for(nodes, ResourceSpec(num_gpus=0.25), gpu_bytes=80 * GiB)
    assert gpu.slots == 8  # four families share each of the two GPUs
    assert gpu.family_bytes == 8 * GiB  # a quarter of 80 GiB, half of that, rounded down
    assert capacity_for(nodes, ResourceSpec(num_cpus=16)) is None


def test_drifting_free_memory_gives_the_same_packing():
    a = capacity_for([{"CPU": 2.0, "memory": 11.1 * GiB}], ResourceSpec())
    b = capacity_for([{"CPU": 2.0, "memory": 10.3 * GiB}], ResourceSpec())
    assert a == b


def test_fitting_keeps_what_is_done_out():
    spec = parse_spec(SPEC)
    done = frozenset(r.run_id for r in plan_sweep(spec).runs if r.seed < 3)
    plan = plan_sweep(spec, exclude=done)
    fitted = fit_plan(plan, Capacity(slots=2, family_bytes=GiB, min_family_flops=0.0))
    assert fitted.done == done and len(fitted.families) > len(plan.families)
    left = sorted(r.run_id for f in fitted.families for r in f.runs)
    assert left == sorted(r.run_id for f in plan.families for r in f.runs)
    assert fit_plan(fitted, fitted.capacity) is fitted


class Recording(LocalBackend):
    def __init__(self, capacity: Capacity):
        self.fixed, self.order = capacity, []

    def capacity(self, resources):
        return self.fixed

    def run(self, jobs, resources, on_done):
        self.order = [sum(member_cost(r).flops for r in job.runs) for job in jobs]
        super().run(jobs, resources, on_done)


@pytest.mark.parametrize("text", [SPEC, SMALL_SPEC])
def test_launch_packs_for_the_backend_and_submits_the_largest_first(text, results):
    backend = Recording(Capacity(slots=2, family_bytes=GiB, min_family_flops=0.0))
    summary = launch(prepare(parse_spec(text), results), results, backend)
    assert backend.order == sorted(backend.order, reverse=True) and len(backend.order) == summary.families
    assert summary.total("n_runs") == summary.planned and summary.total("n_ok") == summary.planned

"""Spec -> runs -> families.

A *run* is one point of the grid. A *family* is a set of runs whose tensors have the
same shapes and whose training loop is the same, so they train together as one stacked
model: same experiment, data kind and sizes, model kind, depth, width, activation, bias,
steps, optimizer, batch size, logging and dtype. Everything else (seed, init, init scale,
label noise, data seed, lr, momentum, ...) may differ between members.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from theoryscope.core import datasets
from theoryscope.core.config import (
    REAL_DATA, DataSpec, Experiment, FieldError, ModelKind, ModelSpec, RunSpec, TrainSpec, shares_inputs,
)
from theoryscope.core.config.shapes import conv_shapes
from theoryscope.core.datasets.table import check_table_rows, input_width
from theoryscope.core.errors import DoesNotFit, SpecError
from theoryscope.sweeps import measures
from theoryscope.sweeps.experiments import EXPERIMENTS
from theoryscope.sweeps.spec import SweepSpec


@dataclass(frozen=True)
class Family:
    """Runs trained together as one stacked model (one Ray task)."""

    family_id: str
    runs: tuple[RunSpec, ...]

    @property
    def size(self) -> int:
        return len(self.runs)

    @property
    def exemplar(self) -> RunSpec:
        """Any member: they agree on everything that fixes shapes and the loop."""
        return self.runs[0]


@dataclass(frozen=True)
class Plan:
    """What a sweep will run: its runs and how they are packed into families."""

    spec: SweepSpec
    sweep: str
    runs: tuple[RunSpec, ...]
    families: tuple[Family, ...]
    # Points of the grid; more than runs when some differ only in fields that do not
    # apply to them (``RunSpec.applies``).
    grid_points: int = 0
    # Runs left out as already done, and the capacity the families were packed for.
    done: frozenset[str] = frozenset()
    capacity: Capacity | None = None
    # What the user should know before running it (``plan_notes``), one line each.
    notes: tuple[str, ...] = ()


# Called as planning goes: (grid points expanded so far, all grid points).
OnPlanned = Callable[[int, int], None]
# How many grid points are expanded between two progress calls.
PROGRESS_EVERY = 2048


def grid_size(spec: SweepSpec) -> int:
    """Points of the grid (the product of its axes' lengths), without expanding it."""
    return math.prod(len(values) for _, values in spec.grid)


def grid_points(spec: SweepSpec) -> Iterator[RunSpec]:
    """The Cartesian product of the grid over the spec's base run, in grid order."""
    base = spec.base_run()
    axes = spec.grid
    for values in itertools.product(*(vals for _, vals in axes)):
        yield _apply(base, dict(zip((target for target, _ in axes), values)))


def expand_runs(spec: SweepSpec, on_planned: OnPlanned | None = None) -> list[RunSpec]:
    """The distinct runs of the grid, in grid order: points that differ only in fields
    that do not apply to them are one run (the first such point stands for it)."""
    runs: dict[str, RunSpec] = {}
    total = grid_size(spec)
    for count, point in enumerate(grid_points(spec), 1):
        runs.setdefault(point.run_id, point)
        if on_planned is not None and (count % PROGRESS_EVERY == 0 or count == total):
            on_planned(count, total)
    return list(runs.values())


def _apply(base: RunSpec, assignment: dict) -> RunSpec:
    by_section: dict[str, dict] = {}
    for target, value in assignment.items():
        section, _, name = target.partition(".")
        by_section.setdefault(section, {})[name] = value
    try:
        seed = by_section.pop("seed", {}).get("", base.seed)
        sections = {s: dataclasses.replace(getattr(base, s), **kv) for s, kv in by_section.items()}
        return dataclasses.replace(base, seed=seed, **sections)
    except FieldError as exc:
        where = ", ".join(f"{k} = {_show(v)}" for k, v in assignment.items())
        raise SpecError(f"the run with {where}: {exc}") from None


def _show(value: object) -> str:
    return repr(getattr(value, "value", value))


def family_key(run: RunSpec) -> tuple:
    """What members of one family must share (and what their experiment adds); the same
    for every run in ``run.shared()``."""
    shared = run.shared()
    if "family_key" not in shared:
        shared["family_key"] = _family_key(run)
    return shared["family_key"]


def _family_key(run: RunSpec) -> tuple:
    d, m, t = run.data, run.model, run.train
    return (
        run.experiment, d.kind, d.n_train, d.n_test, input_width(d), d.n_outputs,
        m.kind, m.depth, m.width if run.applies("model", "width") else None,
        *((m.kernel_size, m.pool) if m.kind is ModelKind.CNN else ()),
        m.activation if run.applies("model", "activation") else None, m.bias,
        t.optimizer, t.steps, t.batch_size, t.log_every, t.dtype, t.matmul_precision,
        m.overparam, *EXPERIMENTS[run.experiment].family_key(run),
    )


@dataclass(frozen=True)
class Capacity:
    """What the machines running a sweep offer its families (``sweeps.capacity``).

    ``slots``: families that can train at once; ``family_bytes``: the memory one family
    may fill (host memory for CPU families, GPU memory for GPU ones); families whose
    estimated work is below ``min_family_flops`` are not split to fill slots (their
    start-up would cost more than the parallelism gains).
    """

    slots: int
    family_bytes: int
    min_family_flops: float
    # All the memory one slot has (``family_bytes`` is the share the estimate may fill);
    # a single net estimated above it cannot run anywhere. 0: unknown. It drifts with
    # free memory, so it does not count when capacities are compared: packing does not
    # depend on it.
    slot_bytes: int = dataclasses.field(default=0, compare=False)


def pack_families(runs: Sequence[RunSpec], max_family_size: int,
                  together: Callable[[RunSpec], str] | None = None,
                  capacity: Capacity | None = None) -> list[Family]:
    """Group runs by ``family_key`` and split each group into near-equal families of at
    most ``max_family_size`` (600 runs at 512 give two of 300, not 512 + 88).

    With a ``capacity``, a family also fits in ``capacity.family_bytes`` by the memory
    estimate, and a group holding much of the sweep's work is split so that the work
    spreads over the slots: into families of about a (2 x slots)-th of the sweep's work
    each (finer than one per slot, so the scheduler can balance them), but never below
    ``capacity.min_family_flops``.

    Runs with the same ``together`` key (the runs a measure compares, such as the ends of
    valley pairs; ``sweeps.measures.together``) are never split between families.
    """
    groups: dict[tuple, list[RunSpec]] = {}
    for run in runs:
        groups.setdefault(family_key(run), []).append(run)
    total_flops = sum(member_cost(members[0]).flops * len(members) for members in groups.values())
    families = []
    for members in groups.values():
        limit, n_chunks = _split(members, max_family_size, total_flops, capacity)
        chunks = _even_chunks(members, n_chunks) if together is None else \
            _chunks_of_units(members, together, limit, -(-len(members) // n_chunks))
        families.extend(Family(family_id(chunk), chunk) for chunk in chunks)
    return families


def _split(members: list[RunSpec], max_family_size: int, total_flops: float,
           capacity: Capacity | None) -> tuple[int, int]:
    """The largest family a group may have, and into how many families it goes."""
    if capacity is None:
        return max_family_size, -(-len(members) // max_family_size)
    cost = member_cost(members[0])
    if shares_inputs(r.data for r in members):  # then so does every part of the group
        fits = (capacity.family_bytes - cost.input_bytes) // max(1, cost.bytes - cost.input_bytes)
    else:
        fits = capacity.family_bytes // max(1, cost.bytes)
    limit = max(1, min(max_family_size, fits))
    share = max(total_flops / (2 * capacity.slots), capacity.min_family_flops)
    by_work = min(len(members), math.ceil(cost.flops * len(members) / share))
    return limit, max(-(-len(members) // limit), by_work)


def _even_chunks(members: list[RunSpec], n_chunks: int) -> list[tuple[RunSpec, ...]]:
    base, extra = divmod(len(members), n_chunks)
    chunks, start = [], 0
    for i in range(n_chunks):
        chunks.append(tuple(members[start:start + base + (i < extra)]))
        start += len(chunks[-1])
    return chunks


def _chunks_of_units(members: list[RunSpec], together: Callable[[RunSpec], str], max_size: int,
                     goal: int) -> list[tuple[RunSpec, ...]]:
    """Whole units (runs with one ``together`` key, in order of first appearance) filled
    into chunks of about ``goal`` runs and never more than ``max_size``."""
    units: dict[str, list[RunSpec]] = {}
    for run in members:
        units.setdefault(together(run), []).append(run)
    chunks: list[list[RunSpec]] = [[]]
    for unit in units.values():
        if len(unit) > max_size:
            raise SpecError(f"resources.max_family_size = {max_size} is smaller than {len(unit)} runs that "
                            f"must train together (the ends of valley pairs); raise it")
        if chunks[-1] and (len(chunks[-1]) + len(unit) > goal):
            chunks.append([])
        chunks[-1].extend(unit)
    return [tuple(c) for c in chunks]


def family_id(runs: Iterable[RunSpec]) -> str:
    """Content hash of a family: the sorted run ids of its members."""
    ids = sorted(r.run_id for r in runs)
    return hashlib.sha256(",".join(ids).encode()).hexdigest()[:16]


def plan_sweep(spec: SweepSpec, sweep: str | None = None, exclude: frozenset[str] = frozenset(),
               capacity: Capacity | None = None, on_planned: OnPlanned | None = None) -> Plan:
    """Expand and check a sweep (``planned_runs``), then pack it (``pack_plan``).
    ``on_planned`` hears how far the expansion is."""
    return pack_plan(spec, sweep or spec.name, planned_runs(spec, on_planned), exclude, capacity)


def planned_runs(spec: SweepSpec, on_planned: OnPlanned | None = None) -> tuple[RunSpec, ...]:
    """The sweep's distinct runs, expanded once, with the data files they read checked
    before anything runs or is written; errors name the spec's file."""
    try:
        runs = expand_runs(spec, on_planned)
        for kind, path in {(r.data.kind.value, r.data.path) for r in runs if r.data.kind.reads_files}:
            datasets.check_files(kind, path)
        for data in {r.data for r in runs if r.data.from_table}:
            check_table_rows(data)
    except SpecError as exc:
        raise type(exc)(f"{spec.origin}: {exc}") from None
    return tuple(runs)


def pack_plan(spec: SweepSpec, sweep: str, runs: tuple[RunSpec, ...], exclude: frozenset[str] = frozenset(),
              capacity: Capacity | None = None) -> Plan:
    """Pack expanded runs into families (to fit ``capacity`` when given), then leave out
    the runs in ``exclude`` (already done); ``DoesNotFit`` if a run cannot fit at all.

    Families are packed from *all* runs before anything is left out, so a family keeps
    its id (and finds its checkpoint) however many times the sweep is resumed on the same
    machines. A family only part of which is done keeps its remaining members, under a
    new id.
    """
    check_fits(runs, capacity)
    families = []
    units = measures.together(spec.measure, runs)
    for family in pack_families(runs, spec.resources.max_family_size, units, capacity):
        todo = tuple(r for r in family.runs if r.run_id not in exclude)
        if len(todo) == family.size:
            families.append(family)
        elif todo:
            families.append(Family(family_id(todo), todo))
    return Plan(spec=spec, sweep=sweep, runs=runs, families=tuple(families), grid_points=grid_size(spec),
                done=exclude, capacity=capacity, notes=plan_notes(spec, runs))


def plan_notes(spec: SweepSpec, runs: Sequence[RunSpec]) -> tuple[str, ...]:
    """Warnings about a grid that runs, but not as its author may think: a swept seed
    that cannot change what some runs train."""
    seeds = dict(spec.grid).get("seed", ())
    if len(seeds) < 2:
        return ()
    same = sum(not run.trains_by_seed for run in runs)
    if not same:
        return ()
    return (f"grid.seed: {same} of the {len(runs)} runs train the same net for each of the {len(seeds)} seeds "
            "(zero or data-set init, and full-batch training); they differ only in what measures draw",)


def fit_plan(plan: Plan, capacity: Capacity | None) -> Plan:
    """``plan`` packed again for ``capacity`` (the same runs, not expanded again, the same
    ones left out)."""
    if capacity is None or capacity == plan.capacity:
        return plan
    return pack_plan(plan.spec, plan.sweep, plan.runs, plan.done, capacity)


@dataclass(frozen=True)
class FamilyCost:
    """Rough size of a family: parameters, floating-point work and memory."""

    params_per_member: int
    flops: float
    bytes: int


@dataclass(frozen=True)
class MemberCost:
    """One net's work and memory; ``input_bytes`` of its ``bytes`` are the inputs, which
    members on one draw share (``core.config.shares_inputs``)."""

    params: int
    flops: float
    bytes: int
    input_bytes: int = 0


def member_cost(run: RunSpec) -> MemberCost:
    """Matmul FLOPs (forward 2 n P, training step 3x forward, plus the logged
    evaluations) and resident bytes (data, parameters, gradients, optimizer state,
    activations) of one member: the same for runs that differ only in their seed."""
    return _member_cost(run.experiment, run.data, run.model, run.train)


@functools.lru_cache(maxsize=4096)
def _member_cost(experiment: Experiment, data: DataSpec, model: ModelSpec, train: TrainSpec) -> MemberCost:
    run = RunSpec(experiment, data, model, train)
    d, t = run.data, run.train
    params, weights, units = net_size(run.model, d)
    full_batch = t.batch_size == 0 or t.batch_size >= d.n_train
    batch = d.n_train if full_batch else t.batch_size
    n_logs = t.n_log_steps
    evaluated = d.n_test + (0 if full_batch else d.n_train)
    flops = t.steps * 6.0 * batch * weights + n_logs * 2.0 * evaluated * weights
    itemsize = t.dtype.itemsize
    states = t.optimizer.state_tensors
    inputs = (d.n_train + d.n_test) * input_width(d)
    labels = (d.n_train + d.n_test) * d.n_outputs
    activations = 3 * max(batch, d.n_test) * units
    resident = itemsize * (inputs + labels + params * (2 + states) + activations)
    return MemberCost(params, flops, resident + n_logs * CURVE_ROW_BYTES + per_step_bytes(run), itemsize * inputs)


def net_size(model: ModelSpec, data: DataSpec) -> tuple[int, int, int]:
    """One net's (parameters, multiply-adds per sample, layer outputs per sample). A conv
    block of k x k kernels from C_in to C_out channels on an H x W map: C_out C_in k^2
    weights, H W times as many multiply-adds, C_out H W outputs and the pooled map."""
    if model.kind is ModelKind.CNN:
        shapes = conv_shapes(REAL_DATA[data.kind].image, model.depth, model.kernel_size, model.pool, model.width)
        convs = [b.out_channels * b.in_channels * model.kernel_size ** 2 for b in shapes.blocks]
        head = shapes.features * data.n_outputs
        maps = [math.prod(b.map) for b in shapes.blocks]
        biases = sum(b.out_channels for b in shapes.blocks) + data.n_outputs if model.bias else 0
        units = sum(b.out_channels * (m + math.prod(b.pooled)) for b, m in zip(shapes.blocks, maps))
        return sum(convs) + head + biases, sum(c * m for c, m in zip(convs, maps)) + head, units + data.n_outputs
    dims = model.layer_dims(input_width(data), data.n_outputs)
    weights = sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    return weights + (sum(dims[1:]) if model.bias else 0), weights, sum(dims[1:])


# A logged step of one member: four metrics on the device, their float64 copy on the
# host, and its row of the ``curves`` table in Arrow (strings, step, eight numbers).
CURVE_ROW_BYTES = 4 * 8 + 4 * 8 + 128


def per_step_bytes(run: RunSpec) -> int:
    """Memory kept for *every* step, not only the logged ones, by the run's experiment
    (e.g. acceleration's training loss of each rate tried)."""
    return EXPERIMENTS[run.experiment].per_step_bytes(run)


def check_fits(runs: Iterable[RunSpec], capacity: Capacity | None) -> None:
    """Refuse, before anything runs, a net whose memory estimate is more than any slot of
    ``capacity`` has, however the runs are packed."""
    if capacity is None or capacity.slot_bytes <= 0:
        return
    seen = set()
    for run in runs:
        key = family_key(run)
        if key in seen:
            continue
        seen.add(key)
        need = member_cost(run).bytes
        if need > capacity.slot_bytes:
            raise DoesNotFit(
                f"one net of this sweep needs about {_gib(need)} by the memory estimate (data, weights, "
                f"optimizer state, activations, {run.train.n_log_steps:,} logged steps), more than the "
                f"{_gib(capacity.slot_bytes)} a family can have on these machines; lower train.steps, "
                f"raise train.log_every, shrink the data or the model, or give each family more of a "
                f"machine (resources.num_cpus)")


def _gib(n: float) -> str:
    return f"{n / 1024**3:,.1f} GiB"


def estimate_cost(family: Family) -> FamilyCost:
    """A whole family's parameters per member, FLOPs and resident bytes (the inputs once
    when its members share them)."""
    cost = member_cost(family.exemplar)
    copies = 1 if shares_inputs(r.data for r in family.runs) else family.size
    resident = (cost.bytes - cost.input_bytes) * family.size + cost.input_bytes * copies
    return FamilyCost(cost.params, cost.flops * family.size, resident)

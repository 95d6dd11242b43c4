"""Every measure of trained families, found through this one registry.

Each measure is one module of this folder that fills in ``base.Measure`` (its options,
tables, rows, views and figures); ``MEASURES`` lists them, and everything else reads
them from here: the ``[measure]`` section (``MeasureSpec``, one optional field per
measure that has options), the checks against the sweep, the snapshot steps training
keeps, which runs train together, a trained family's tables, and the views and figures
of the results (``sweeps.tables``). Adding a measure is adding its module and its line
below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from theoryscope.core.config import ModelKind, RunSpec
from theoryscope.core.errors import SpecError
from theoryscope.sweeps.measures import complexity, cushions, invertibility, overtraining, valleys
from theoryscope.sweeps.measures.base import Grid, Measure

if TYPE_CHECKING:
    from theoryscope.core.train import FamilyResult

MEASURES: dict[str, Measure] = {m.name: m for m in (cushions.MEASURE, valleys.MEASURE, overtraining.MEASURE,
                                                    complexity.MEASURE, invertibility.MEASURE)}

# The `[measure]` section: each measure with options is off unless named there (true, or
# a table of its options).
MeasureSpec = dataclasses.make_dataclass(
    "MeasureSpec", [(m.name, m.options | None, dataclasses.field(default=None))
                    for m in MEASURES.values() if m.options is not None],
    frozen=True, namespace={"__doc__": "Measurements of trained nets; each is off unless named here."})
MeasureSpec.__module__ = __name__  # pickled by name (a family's job carries it to its worker)


def enabled(spec: MeasureSpec) -> list[tuple[Measure, Any]]:
    """The measures a sweep runs, with their options: those named in ``[measure]`` and
    those that are always on (options None)."""
    on = []
    for measure in MEASURES.values():
        options = getattr(spec, measure.name) if measure.options is not None else None
        if measure.options is None or options is not None:
            on.append((measure, options))
    return on


def check_measures(spec: MeasureSpec, grid: Grid, base: RunSpec) -> None:
    """What each enabled measure needs of the rest of the sweep (its grid, and its base
    run for the fields the grid leaves alone); raises ``SpecError``."""
    kinds = dict(grid).get("model.kind", (base.model.kind,))
    for measure, options in enabled(spec):
        if options is not None and any(kind not in measure.models for kind in kinds):
            allowed = " | ".join(f'"{k.value}"' for k in ModelKind if k in measure.models)
            shown = " | ".join(f'"{k.value}"' for k in kinds if k not in measure.models)
            raise SpecError(f"measure.{measure.name}: measures model.kind = {allowed}, not {shown}")
        measure.check(options, grid, base)


def snapshot_steps(spec: MeasureSpec, run: RunSpec) -> list[int]:
    """Steps whose weights the enabled measures need, in order."""
    steps: set[int] = set()
    for measure, options in enabled(spec):
        steps |= measure.snapshot_steps(options, run)
    return sorted(steps)


def together(spec: MeasureSpec, runs: Sequence[RunSpec]) -> Callable[[RunSpec], str] | None:
    """A key per run such that runs any enabled measure needs in one family share it (the
    connected groups of every measure's ``together``); None when no measure cares."""
    keyed = [(m.together, options) for m, options in enabled(spec) if m.together is not None]
    if not keyed:
        return None
    parent: dict[str, str] = {run.run_id: run.run_id for run in runs}

    def root(run_id: str) -> str:
        while parent[run_id] != run_id:
            parent[run_id] = run_id = parent[parent[run_id]]
        return run_id

    for key, options in keyed:
        first: dict[str, str] = {}
        for run in runs:
            parent[root(run.run_id)] = root(first.setdefault(key(options, run), run.run_id))
    unit = {run.run_id: root(run.run_id) for run in runs}
    return lambda run: unit[run.run_id]


def measure_family(spec: MeasureSpec, sweep: str, runs: Sequence[RunSpec],
                   result: FamilyResult) -> dict[str, pa.Table]:
    """Every enabled measure's tables for one trained family."""
    tables: dict[str, pa.Table] = {}
    for measure, options in enabled(spec):
        if measure.rows is not None:
            tables.update(measure.rows(options, sweep, runs, result))
    return tables

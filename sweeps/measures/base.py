"""What a measure is: the one protocol every measure of trained families fills in.

A measure is a record of its parts, as optax's ``GradientTransformation`` is a pair of
functions: its ``[measure]`` key and options, the tables it writes, what it asks of
training and of packing, the rows it computes from a trained family, and the views and
figures a sweep's results show of it. Every part but ``name`` has a default that does
nothing, so a measure states only what it has. The math is in ``core.measures``; a
measure's module turns it into rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from theoryscope.core.config import ModelKind, RunSpec
from theoryscope.sweeps.figures import Figure

if TYPE_CHECKING:
    from theoryscope.core.train import FamilyResult

Grid = tuple[tuple[str, tuple[Any, ...]], ...]  # SweepSpec.grid: (dotted path, values) in spec order


class Rows(Protocol):
    """(the measure's options, sweep, the family's runs, its training result) -> its tables."""

    def __call__(self, options: Any, sweep: str, runs: Sequence[RunSpec], result: FamilyResult, /
                 ) -> dict[str, pa.Table]: ...


def _nothing(*_: Any) -> None:
    return None


def _no_steps(*_: Any) -> set[int]:
    return set()


@dataclass(frozen=True)
class Measure:
    """One measure of trained families.

    ``name``: its key in ``[measure]`` (``true`` or a table of ``options``) and in the
    registry. ``options``: a frozen dataclass whose ``__post_init__`` checks each value
    (raising ``FieldError``); None for a measure that is always on and has no key.
    ``check(options, grid, base)``: what the options need of the rest of the sweep (its
    grid and its base run, the values of every field the grid does not sweep), raising
    ``SpecError`` (e.g. the field valleys pair runs on must be swept).
    ``tables``: name -> schema of every table it writes; a view shows these columns
    while the table has no files (the rows of one sweep may carry more, e.g. percentile
    columns that follow the options).
    ``snapshot_steps(options, run)``: the steps whose weights training keeps for it.
    ``together(options, run)``: runs with the same key are trained in one family (the
    ends of a pair); None: any packing will do.
    ``rows(options, sweep, runs, result)``: its tables' rows for one trained family,
    computed stacked over the family's members.
    ``derived``: views computed from the other views (name -> SQL); ``enriched``: tables
    whose view wraps the files' rows (``{stored}`` in the SQL) with what other views made
    before it add; ``per_sweep``: its tables written once per sweep,
    not per family (a launch keeps their files whatever families it reruns);
    ``figures``: what a report draws of it. ``models``: the ``model.kind`` values it
    measures (a sweep enabling it on another kind is refused).
    """

    name: str
    options: type | None = None
    check: Callable[[Any, Grid, RunSpec], None] = _nothing
    tables: Mapping[str, pa.Schema] = field(default_factory=dict)
    snapshot_steps: Callable[[Any, RunSpec], set[int]] = _no_steps
    together: Callable[[Any, RunSpec], str] | None = None
    rows: Rows | None = None
    derived: Mapping[str, str] = field(default_factory=dict)
    enriched: Mapping[str, str] = field(default_factory=dict)
    per_sweep: frozenset[str] = frozenset()
    figures: tuple[Figure, ...] = ()
    models: frozenset[ModelKind] = frozenset({ModelKind.MLP, ModelKind.LINEAR})

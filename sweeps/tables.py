"""Everything a sweep's results hold, gathered once: tables, views and figures.

The spine (``sweeps``, ``runs``, ``curves``; ``storage.schemas``) and the index of the
kept nets (``weights``; ``sweeps.weights``) come first, then every
measure's tables and views (``sweeps.measures``), then every experiment's
(``sweeps.experiments``). Storage knows rows, not measures, so the query functions here
are ``storage.query``'s with these views filled in: what the CLI, the report and
notebooks call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import pyarrow as pa

from theoryscope.storage import query
from theoryscope.storage.location import ResultsLike
from theoryscope.storage.parquet import Scan
from theoryscope.storage.query import DEFAULT_TIMEOUT, Views
from theoryscope.storage.schemas import SPINE
from theoryscope.sweeps.experiments import EXPERIMENTS
from theoryscope.sweeps.figures import SPINE_FIGURES, Figure
from theoryscope.sweeps.measures import MEASURES
from theoryscope.sweeps.weights import WEIGHTS

_PARTS = (*MEASURES.values(), *EXPERIMENTS.values())

# Every table a sweep may write: name -> the columns of its view while it has no files.
TABLES: dict[str, pa.Schema] = {**SPINE, "weights": WEIGHTS,
                                 **{name: schema for part in _PARTS for name, schema in part.tables.items()}}

# Tables written once per sweep (``rankings*``: per sweep and target, by ``theoryscope
# analyze``), not once per family: launch keeps their files whatever families it reruns.
PER_SWEEP: frozenset[str] = frozenset({"sweeps", *(name for m in MEASURES.values() for name in m.per_sweep)})

VIEWS = Views(
    tables=TABLES,
    derived={name: sql for part in _PARTS for name, sql in part.derived.items()},
    enriched={name: sql for part in _PARTS for name, sql in part.enriched.items()},
)

# The canonical figures, in the order a report shows them.
FIGURES: tuple[Figure, ...] = (*SPINE_FIGURES, *(figure for part in _PARTS for figure in part.figures))


@contextmanager
def connect(results: ResultsLike) -> Iterator[duckdb.DuckDBPyConnection]:
    """``storage.query.connect`` with every view."""
    with query.connect(results, VIEWS) as con:
        yield con


def run_query(results: ResultsLike, sql: str, timeout: float = DEFAULT_TIMEOUT) -> pa.Table:
    """One read-only statement against every view (``storage.query.run_query``)."""
    return query.run_query(results, sql, VIEWS, timeout)


def describe_views(results: ResultsLike) -> dict[str, list[tuple[str, str]]]:
    """Each view's columns as (name, DuckDB type)."""
    return query.describe_views(results, VIEWS)


def debris(results: ResultsLike) -> Scan:
    """Damaged and leftover files across every table and the checkpoints."""
    return query.debris(results, TABLES)

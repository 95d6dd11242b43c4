"""``theoryscope analyze``: which complexity measure ranks a sweep's nets by what they did.

The rank statistics of Jiang, Neyshabur, Mobahi, Krishnan & Bengio, "Fantastic
generalization measures and where to find them" (ICLR 2020) and the robust
sign errors of Dziugaite et al., "In search of robust measures of generalization"
(NeurIPS 2020), computed by ``core.measures.ranking`` for every measure of the
``complexity`` view (the ``[measure] complexity`` rows and, where ``[measure] cushions``
ran, Arora et al.'s compression bound) at each run's final step, against a target of the
``runs`` table:

* ``rankings``, one row per measure: Kendall's tau over every pair of runs with its 95 %
  bootstrap interval, the granulated Psi, the conditional mutual information K and the
  mean and worst sign error over environments;
* ``rankings_axes``, one row per measure and swept axis: psi_i and its number of groups;
* ``rankings_environments``, one row per measure and environment (two grid points that
  differ in one swept field): its sign error.

The swept axes are the grid's fields other than the seeds (``seed``, ``data.seed``) that
take two or more values among the ranked runs: runs that differ only in seeds are points
of one group. The ranked runs are the finished ones (``status = 'ok'``) and, with
``train.stop_train_loss``, only those that reached it: Jiang et al. compare nets at equal
fit. A measure is ranked over the runs where it has a value (``n_runs``; a margin ratio
is NULL where gamma <= 0). Each table gets one file per sweep and target, written
atomically after every check passed and replaced by a rerun.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from theoryscope.core.config import Choice
from theoryscope.core.errors import TheoryscopeError
from theoryscope.core.measures import ranking
from theoryscope.storage.location import ResultsLike
from theoryscope.storage.parquet import table_path, write_atomic
from theoryscope.storage.query import sql_string
from theoryscope.sweeps.catalog import recorded_sweep
from theoryscope.sweeps.measures.complexity import (
    COMPRESSION, MEASURE_NAMES, RANKINGS, RANKINGS_AXES, RANKINGS_ENVIRONMENTS,
)
from theoryscope.sweeps.records import RENAMED
from theoryscope.sweeps.spec import SweepSpec
from theoryscope.sweeps.tables import run_query

# Fields that are seeds, not hyperparameters: runs differing only in them share a group.
SEEDS = ("seed", "data.seed")
RANKABLE = (*MEASURE_NAMES, *COMPRESSION)


class Target(Choice):
    """What the measures are ranked against: a ``runs`` column."""

    GEN_GAP = "gen_gap"
    TEST_ERROR = "test_error"
    TEST_LOSS = "test_loss"


@dataclass(frozen=True)
class Ranked:
    """The runs a sweep's measures are ranked over: their target values and their values
    on each swept axis (``runs`` column -> one value per run), in ``run_ids`` order."""

    run_ids: list[str]
    target: np.ndarray
    axes: dict[str, list]
    unfit: int  # finished runs left out for not reaching train.stop_train_loss


@dataclass(frozen=True)
class Analysis:
    sweep: str
    target: Target
    runs: Ranked
    rankings: pa.Table
    rankings_axes: pa.Table
    rankings_environments: pa.Table


def axis_column(path: str) -> str:
    """The ``runs`` column of a grid field (``"train.lr"`` -> ``lr``)."""
    section, _, name = path.partition(".")
    return RENAMED.get((section, name), name or section)


def swept_axes(spec: SweepSpec, sweep: str) -> list[str]:
    """The ``runs`` columns of the fields the grid sweeps over two or more values, seeds
    left out; ``TheoryscopeError`` when there is none."""
    axes = [axis_column(path) for path, values in spec.grid if path not in SEEDS and len(values) >= 2]
    if not axes:
        swept = ", ".join(path for path, _ in spec.grid) or "nothing"
        raise TheoryscopeError(f"sweep {sweep!r} has no swept field to rank across (its grid sweeps {swept}; seeds "
                               "do not count): sweep a hyperparameter such as depth, width or train.lr")
    return axes


def ranked_runs(results: ResultsLike, sweep: str, target: Target, axes: Sequence[str], include_unfit: bool) -> Ranked:
    """The finished runs (that reached ``train.stop_train_loss``, unless ``include_unfit``)
    with their target and swept values; refuses fewer than two, and a target they lack."""
    columns = ", ".join(f'"{axis}"' for axis in axes)
    table = run_query(results, f"SELECT run_id, {target.value} AS target, coalesce(reached_stop, true) AS fit, "
                               f"{columns} FROM runs WHERE sweep = {sql_string(sweep)} AND status = 'ok' "
                               "ORDER BY run_id")
    rows = table.to_pylist()
    unfit = 0 if include_unfit else sum(not r["fit"] for r in rows)
    rows = [r for r in rows if include_unfit or r["fit"]]
    if len(rows) < 2:
        left_out = f", {unfit} more left out for not reaching train.stop_train_loss (--include-unfit ranks them)" \
            if unfit else ""
        raise TheoryscopeError(f"sweep {sweep!r} has {len(rows)} finished run(s) to rank (status 'ok'{left_out}); "
                               "ranking needs at least 2")
    if all(r["target"] is None for r in rows):
        raise TheoryscopeError(f"target {target.value!r} does not exist in sweep {sweep!r}: its runs have no "
                               f"{target.value} (the 0-1 error is for classification); use gen_gap or test_loss")
    rows = [r for r in rows if r["target"] is not None]
    return Ranked([r["run_id"] for r in rows], np.array([r["target"] for r in rows], dtype=float),
                  {axis: [r[axis] for r in rows] for axis in axes}, unfit)


def measure_values(results: ResultsLike, sweep: str, runs: Ranked) -> dict[str, np.ndarray]:
    """Per measure of the ``complexity`` view, its value at each run's final step, in
    ``runs.run_ids`` order (NaN where it has none)."""
    table = run_query(results, "SELECT c.run_id, c.measure, c.value FROM complexity c JOIN runs r "
                               f"USING (sweep, run_id) WHERE c.sweep = {sql_string(sweep)} AND c.step = r.steps")
    position = {run_id: k for k, run_id in enumerate(runs.run_ids)}
    values: dict[str, np.ndarray] = {}
    for run_id, measure, value in zip(*(table.column(c).to_pylist() for c in ("run_id", "measure", "value"))):
        if run_id in position:
            column = values.setdefault(measure, np.full(len(position), math.nan))
            column[position[run_id]] = math.nan if value is None else value
    return values


def choose_measures(requested: Sequence[str] | None, values: dict[str, np.ndarray], sweep: str) -> list[str]:
    """The measures to rank: those asked for (each must exist and have rows), else every
    one the sweep has, in ``RANKABLE`` order."""
    if not values:
        raise TheoryscopeError(f"sweep {sweep!r} has no complexity rows for its finished runs: launch it with "
                               "[measure] complexity = true, then analyze it")
    if not requested:
        return [m for m in RANKABLE if m in values]
    missing = [m for m in requested if m not in values]
    if missing:
        raise TheoryscopeError(f"measure {missing[0]!r} has no rows in sweep {sweep!r} (it has "
                               f"{', '.join(m for m in RANKABLE if m in values)})")
    return list(dict.fromkeys(requested))


def check_measure_names(requested: Sequence[str] | None) -> None:
    for name in requested or ():
        if name not in RANKABLE:
            raise TheoryscopeError(f"--measures: unknown measure {name!r}; allowed: {', '.join(RANKABLE)}")


def parse_target(target: str | Target) -> Target:
    try:
        return Target(target)
    except ValueError:
        raise TheoryscopeError(f"--target: unknown target {target!r}; allowed: {Target.allowed()}") from None


def rank_measure(mu: np.ndarray, g: np.ndarray, axes: dict[str, list]) -> tuple[dict, list[dict], list[dict]]:
    """One measure's ``rankings`` row, ``rankings_axes`` rows and ``rankings_environments``
    rows (without the sweep, target and measure keys) over the runs where it has a value."""
    keep = np.isfinite(mu)
    mu, g = mu[keep], g[keep]
    axes = {name: [v for v, k in zip(values, keep) if k] for name, values in axes.items()}
    low, high = ranking.bootstrap_tau(mu, g)
    psi, per_axis = ranking.granulated(mu, g, axes)
    signs = ranking.sign_errors(mu, g, axes)
    row = {"n_runs": int(keep.sum()), "kendall_tau": ranking.kendall_tau(mu, g), "tau_low": low, "tau_high": high,
           "granulated_psi": psi, "cmi": ranking.conditional_mutual_information(mu, g, axes),
           "environments": len(signs.per_environment), "sign_error_mean": signs.mean, "sign_error_max": signs.worst}
    by_axis = [{"axis": a.axis, "tau": a.tau, "n_groups": a.n_groups} for a in per_axis]
    names = list(axes)
    environments = [{"axis": axis, "point_a": json.dumps(dict(zip(names, a))),
                     "point_b": json.dumps(dict(zip(names, b))), "sign_error": error}
                    for axis, a, b, error in signs.per_environment]
    return row, by_axis, environments


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows as a table of ``schema``, NaN as NULL."""
    def cell(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v
    return pa.Table.from_pylist([{f.name: cell(r.get(f.name)) for f in schema} for r in rows], schema=schema)


def analyze(results: ResultsLike, sweep: str, target: str | Target = Target.GEN_GAP,
            measures: Sequence[str] | None = None, include_unfit: bool = False) -> Analysis:
    """Rank the sweep's measures against ``target`` and write the three rankings tables
    (one file each for this sweep and target, replacing an earlier analysis). Bad input
    (an unknown target or measure, no swept field, fewer than two finished runs, a target
    the runs lack, no complexity rows) raises ``TheoryscopeError`` before anything is
    written."""
    target = parse_target(target)
    check_measure_names(measures)
    axes = swept_axes(recorded_sweep(results, sweep).spec(), sweep)
    runs = ranked_runs(results, sweep, target, axes, include_unfit)
    varying = {a: v for a, v in runs.axes.items() if len(set(v)) >= 2}
    if not varying:
        raise TheoryscopeError(f"sweep {sweep!r} has no swept field that varies among its {len(runs.run_ids)} ranked "
                               f"runs (swept: {', '.join(axes)})")
    values = measure_values(results, sweep, runs)
    chosen = choose_measures(measures, values, sweep)
    keys = {"sweep": sweep, "target": target.value}
    rows: dict[str, list[dict]] = {"rankings": [], "rankings_axes": [], "rankings_environments": []}
    for measure in chosen:
        row, by_axis, environments = rank_measure(values[measure], runs.target, varying)
        named = keys | {"measure": measure}
        rows["rankings"].append(named | row)
        rows["rankings_axes"] += [named | r for r in by_axis]
        rows["rankings_environments"] += [named | r for r in environments]
    schemas = {"rankings": RANKINGS, "rankings_axes": RANKINGS_AXES, "rankings_environments": RANKINGS_ENVIRONMENTS}
    tables = {name: _table(rows[name], schema) for name, schema in schemas.items()}
    for name, table in tables.items():
        write_atomic(table, table_path(results, name, sweep, target.value))
    return Analysis(sweep, target, Ranked(runs.run_ids, runs.target, varying, runs.unfit), tables["rankings"],
                    tables["rankings_axes"], tables["rankings_environments"])

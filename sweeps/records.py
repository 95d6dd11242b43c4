"""A trained family -> rows of the ``runs`` and ``curves`` tables."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from theoryscope.core.config import RUN_SECTIONS, Choice, RunSpec, is_hashed
from theoryscope.core.measures.overtraining import theory_optimal_stopping, theory_test_loss, theory_train_loss
from theoryscope.storage import schemas

if TYPE_CHECKING:
    from theoryscope.core.train import FamilyResult

# Config fields whose column name is not the field's own name.
RENAMED = {("data", "kind"): "dataset", ("model", "kind"): "model", ("data", "seed"): "data_seed"}


class RunStatus(Choice):
    OK = "ok"
    DIVERGED = "diverged"
    FAILED = "failed"


def runs_column(target: str) -> str:
    """The ``runs`` column of a grid target (``model.width`` -> ``width``, ``seed`` -> ``seed``)."""
    section, _, name = target.partition(".")
    return RENAMED.get((section, name), name) if name else section


def config_column_names() -> list[str]:
    """The ``runs`` column of every field that is part of a run's id, plus experiment and seed."""
    names = ["experiment", "seed"]
    for section, cls in RUN_SECTIONS.items():
        names += [RENAMED.get((section, f.name), f.name) for f in dataclasses.fields(cls) if is_hashed(f)]
    return names


def check_runs_schema(schema: pa.Schema, names: list[str]) -> None:
    """Raise if a config field has no column: ``from_pylist`` would drop it silently."""
    missing = [n for n in names if n not in schema.names]
    if missing:
        raise TypeError(f"the runs table has no column for the spec field(s) {', '.join(missing)}: "
                        "add them to storage.schemas.RUNS")


check_runs_schema(schemas.RUNS, config_column_names())  # at import: a new spec field cannot go unrecorded


def config_columns(run: RunSpec) -> dict[str, object]:
    """Every field of the run's config under its ``runs`` column name."""
    columns: dict[str, object] = {"experiment": run.experiment.value, "seed": run.seed}
    for section in RUN_SECTIONS:
        spec = getattr(run, section)
        for f in dataclasses.fields(spec):
            if not is_hashed(f):
                continue
            value = getattr(spec, f.name) if run.applies(section, f.name) else None
            if isinstance(value, tuple) or f.name == "lr_grid" and value is not None:
                value = json.dumps(value)  # lists (and a count or a list) as JSON text
            columns[RENAMED.get((section, f.name), f.name)] = getattr(value, "value", value)
    return columns


def trained_family_tables(sweep: str, family_id: str, runs: Sequence[RunSpec], result: FamilyResult,
                          code_version: str, finished_at: dt.datetime) -> tuple[pa.Table, pa.Table]:
    """The ``runs`` rows (one per member) and ``curves`` rows of a trained family."""
    # A diverged member has no meaningful numbers from the step it was frozen at on
    # (its weights already gave a non-finite loss; argmax over NaN outputs would even
    # give finite-looking errors): those curve points and its final metrics are NULL.
    frozen = (result.diverged_step[None, :] >= 0) & (result.steps[:, None] >= result.diverged_step[None, :])
    rows = []
    for f, run in enumerate(runs):
        diverged = int(result.diverged_step[f])
        stopped = -1 if result.stopped_step is None else int(result.stopped_step[f])
        final = {name: _final(values, f, frozen) for name, values in (
            ("train_loss", result.train_loss), ("test_loss", result.test_loss),
            ("train_error", result.train_error), ("test_error", result.test_error))}
        train, test = ("train_loss", "test_loss") if result.train_error is None else ("train_error", "test_error")
        gap = None if final[train] is None or final[test] is None else final[test] - final[train]
        rows.append(_run_row(
            sweep, family_id, run, len(runs), code_version, finished_at,
            status=RunStatus.DIVERGED if diverged >= 0 else RunStatus.OK,
            gen_gap=gap, diverged_step=diverged if diverged >= 0 else None,
            stopped_step=stopped if stopped >= 0 else None,
            reached_stop=stopped >= 0 if run.train.stop_train_loss else None,
            wall_seconds=result.wall_seconds, device=result.device, **final,
            precision_error=None if result.precision_error is None else nullable(result.precision_error[f]),
        ))
    t, f = result.train_loss.shape
    curves = pa.table({
        "sweep": pa.array([sweep] * (t * f), pa.string()),
        "run_id": pa.array(np.repeat([r.run_id for r in runs], t), pa.string()),
        "step": pa.array(np.tile(result.steps, f), pa.int64()),
        "train_loss": _curve(result.train_loss, frozen),
        "test_loss": _curve(result.test_loss, frozen),
        "train_error": _curve(result.train_error, frozen),
        "test_error": _curve(result.test_error, frozen),
        "rule_deviation": _curve(result.rule_deviation, frozen),
        **_theory(runs, result.steps),
    }, schema=schemas.CURVES)
    return pa.Table.from_pylist(rows, schema=schemas.RUNS), curves


def _theory(runs: Sequence[RunSpec], steps: np.ndarray) -> dict[str, pa.Array]:
    """The closed-form columns of ``curves`` (Advani & Saxe 2017, where their theory covers
    the run; else NULL), member-major: test and training loss at every step, and the
    optimal stopping step and test loss repeated on every row of the run."""
    columns: dict[str, list] = {name: [] for name in (
        "theory_test_loss", "theory_train_loss", "theory_best_step", "theory_best_test_loss")}
    for run in runs:
        test = theory_test_loss(run, steps)
        if test is None:
            for values in columns.values():
                values.extend([None] * len(steps))
            continue
        best_step, best_loss = theory_optimal_stopping(run)
        columns["theory_test_loss"].extend(test.tolist())
        columns["theory_train_loss"].extend(theory_train_loss(run, steps).tolist())
        columns["theory_best_step"].extend([best_step] * len(steps))
        columns["theory_best_test_loss"].extend([best_loss] * len(steps))
    return {name: pa.array(values, pa.float64()) for name, values in columns.items()}


def nullable(x: float) -> float | None:
    """A number for a table cell: NaN and infinities (a diverged member's) become NULL."""
    return float(x) if np.isfinite(x) else None


def _final(values: np.ndarray | None, member: int, frozen: np.ndarray) -> float | None:
    if values is None or frozen[-1, member]:
        return None
    return float(values[-1, member])


def failed_family_table(sweep: str, family_id: str, runs: Sequence[RunSpec], message: str,
                        code_version: str, finished_at: dt.datetime, device: str) -> pa.Table:
    """``runs`` rows marking every member of a family whose training raised."""
    rows = [_run_row(sweep, family_id, run, len(runs), code_version, finished_at,
                     status=RunStatus.FAILED, error=message, device=device) for run in runs]
    return pa.Table.from_pylist(rows, schema=schemas.RUNS)


def _curve(values: np.ndarray | None, frozen: np.ndarray) -> pa.Array:
    """``[T, F]`` -> member-major column (all steps of member 0, then member 1, ...),
    NULL where the member was frozen (or for errors of a regression)."""
    if values is None:
        return pa.nulls(frozen.size, pa.float64())
    return pa.array(values.T.reshape(-1), pa.float64(), mask=frozen.T.reshape(-1))


def _run_row(sweep: str, family_id: str, run: RunSpec, family_size: int, code_version: str,
             finished_at: dt.datetime, status: RunStatus, **measured: object) -> dict[str, object]:
    return {
        **config_columns(run),
        "sweep": sweep, "run_id": run.run_id, "family_id": family_id, "family_size": family_size,
        "status": status.value, "finished_at": finished_at, "config": run.canonical_json(),
        "code_version": code_version, **measured,
    }

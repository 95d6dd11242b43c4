"""Rows of the ``modes`` table: Saxe et al.'s mode timing, measured and in closed form."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from core.dynamics import DynamicsResult
from core.measures.acceleration import saxe_mode_time
from storage import schemas
from sweeps.spec import Init, RunSpec


def crossing_step(values: np.ndarray, level: float) -> float | None:
    """First (fractional) step at which ``values [T]`` reaches ``level``, interpolated
    linearly between the two steps around the crossing; None if it never does."""
    above = np.nonzero(values >= level)[0]
    if len(above) == 0:
        return None
    k = int(above[0])
    if k == 0:
        return 0.0
    before, after = values[k - 1], values[k]
    return k - 1 + float((level - before) / (after - before))


def modes_table(sweep: str, runs: Sequence[RunSpec], result: DynamicsResult) -> pa.Table:
    rows = []
    if result.strengths is not None:
        for f, run in enumerate(runs):
            scale = float(result.time_per_step[f])
            for a, s in enumerate(run.data.singular_values):
                curve = result.strengths[:, f, a]
                u0 = float(curve[0])
                half = crossing_step(curve, s / 2) if np.isfinite(curve).all() else None
                theory = None
                if run.model.depth == 2 and run.model.init is Init.DECOUPLED and 0 < u0 < s / 2:
                    theory = saxe_mode_time(s, u0)
                measured = None if half is None else half * scale
                rows.append({
                    "sweep": sweep, "run_id": run.run_id, "mode": a + 1, "singular_value": s,
                    "initial_strength": u0, "final_strength": float(curve[-1]) if np.isfinite(curve[-1]) else None,
                    "half_step": half, "half_time": measured, "theory_half_time": theory,
                    "relative_error": None if measured is None or theory is None else measured / theory - 1,
                    "time_per_step": scale,
                })
    return pa.Table.from_pylist(rows, schema=schemas.MODES)

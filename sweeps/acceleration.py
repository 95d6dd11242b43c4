"""Rows of the ``acceleration`` table (Arora, Cohen & Hazan 2018), one per run.

``ratio_vs_depth1`` compares runs of different families (the depth-1 baseline has other
shapes), so it is not stored: the ``acceleration`` view computes it by joining every run
to the depth-1 run of the same sweep with the same ``baseline_key``: the same data (p
and conditioning included), seed, init scale and training settings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pyarrow as pa

from core.accelerate import AccelerationResult
from storage import schemas
from sweeps.records import nullable
from sweeps.spec import RunSpec


def baseline_key(run: RunSpec) -> str:
    """What a run shares with the depth-1 run it is compared with: its config without
    the model, except the init scale that sets the common starting point w0."""
    config = run.to_config()
    config["model"] = {"init_scale": run.model.init_scale}
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def acceleration_table(sweep: str, runs: Sequence[RunSpec], result: AccelerationResult) -> pa.Table:
    rows = []
    for i, run in enumerate(runs):
        g = int(result.chosen[i])
        steps = int(result.steps[i, g])
        optimum, initial = float(result.optimum[i]), float(result.initial_loss[i])
        depth = run.model.depth
        rows.append({
            "sweep": sweep, "run_id": run.run_id, "p": run.data.p, "depth": depth,
            "lr": float(result.lrs[i, g]) if result.stable[i, g] else None,
            "steps_to_target": steps if steps >= 0 else None, "reached": steps >= 0,
            "target_loss": optimum + run.train.target * (initial - optimum),
            "overparam": run.model.overparam.value if depth > 1 else None,
            "hidden_width": run.model.hidden_width if depth > 1 else None,
            "init": run.model.init.value if depth > 1 else None,
            "optimizer": run.train.optimizer.value, "condition": run.data.condition, "seed": run.seed,
            "target": run.train.target, "train_steps": run.train.steps, "optimum_loss": optimum, "initial_loss": initial,
            "final_loss": nullable(result.final_loss[i, g]),
            "lrs_tried": int(result.lrs.shape[1]), "lrs_stable": int(result.stable[i].sum()),
            "lr_steps": json.dumps({f"{lr:.6g}": (int(s) if s >= 0 else None)
                                    for lr, s in zip(result.lrs[i], result.steps[i])}),
            "baseline_key": baseline_key(run),
        })
    return pa.Table.from_pylist(rows, schema=schemas.ACCELERATION)

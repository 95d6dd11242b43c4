"""Experiment "acceleration" (Arora, Cohen & Hazan 2018): its families train every run at
every rate of its grid (``core.accelerate``), and write one ``acceleration`` row per run.

``ratio_vs_depth1`` compares runs of different families (the depth-1 baseline has other
shapes), so it is not stored: the ``acceleration`` view computes it by joining every run
to the depth-1 run of the same sweep with the same ``baseline_key``: the same data (p
and conditioning included), seed, init scale and training settings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pyarrow as pa
import torch

from theoryscope.core.accelerate import AccelerationResult, train_acceleration
from theoryscope.core.checkpoint import Checkpoint
from theoryscope.core.config import Experiment, RunSpec
from theoryscope.core.train import FamilyResult
from theoryscope.sweeps.experiments.base import ExperimentKind
from theoryscope.sweeps.figures import Figure, Rows, distinct, label, pyplot
from theoryscope.sweeps.records import nullable

# One row per run of experiment "acceleration" (Arora, Cohen & Hazan 2018). The view of
# the same name adds ratio_vs_depth1 (ENRICHED).
ACCELERATION = pa.schema([
    ("sweep", pa.string()),
    ("run_id", pa.string()),
    ("p", pa.int64()),
    ("depth", pa.int64()),
    ("lr", pa.float64()),                     # the fastest stable rate of the grid; null if none
    ("steps_to_target", pa.int64()),          # first step with L - L* <= target (L_0 - L*); null if never
    ("reached", pa.bool_()),
    ("target_loss", pa.float64()),            # L* + target (L_0 - L*)
    ("overparam", pa.string()),               # full | scalar (null at depth 1)
    ("hidden_width", pa.int64()),
    ("init", pa.string()),                    # balanced | identity (null at depth 1)
    ("optimizer", pa.string()),
    ("condition", pa.float64()),
    ("seed", pa.int64()),
    ("target", pa.float64()),
    ("train_steps", pa.int64()),              # the step budget (train.steps)
    ("optimum_loss", pa.float64()),           # L*, the depth-1 optimum (float64)
    ("initial_loss", pa.float64()),           # L_0, the same at every depth
    ("final_loss", pa.float64()),             # at the reported rate
    ("lrs_tried", pa.int64()),
    ("lrs_stable", pa.int64()),
    ("lr_steps", pa.string()),                # JSON: every rate tried -> its steps_to_target
    ("baseline_key", pa.string()),            # joins a run to its depth-1 baseline
])

# The view adds columns computed across families; the SQL wraps the files' rows
# (``stored``): each run's speed-up over the depth-1 run with the same data,
# seed, init scale and training settings (Arora, Cohen & Hazan 2018's ratio); where the
# depth-1 run never reached the target, ratio_at_least = train_steps / steps_to_target.
ENRICHED = """
        WITH stored AS ({stored}),
        baseline AS (SELECT sweep, baseline_key, any_value(steps_to_target) AS depth1_steps
                     FROM stored WHERE depth = 1 GROUP BY sweep, baseline_key)
        SELECT stored.*, CAST(baseline.depth1_steps AS DOUBLE) / stored.steps_to_target AS ratio_vs_depth1,
               baseline.depth1_steps,
               CASE WHEN baseline.baseline_key IS NOT NULL AND baseline.depth1_steps IS NULL AND stored.reached
                    THEN CAST(stored.train_steps AS DOUBLE) / stored.steps_to_target END AS ratio_at_least
        FROM stored LEFT JOIN baseline USING (sweep, baseline_key)"""


def baseline_key(run: RunSpec) -> str:
    """What a run shares with the depth-1 run it is compared with: its config without
    the model, except the init scale that sets the common starting point w0."""
    config = run.to_config()
    config["model"] = {"init_scale": run.model.init_scale}
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def acceleration_table(sweep: str, runs: Sequence[RunSpec], result: AccelerationResult) -> pa.Table:
    """One row per run: its fastest stable rate and the steps it took to the target."""
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
    return pa.Table.from_pylist(rows, schema=ACCELERATION)


def train(sweep: str, runs: Sequence[RunSpec], _measure, device: torch.device,
          _checkpoint: Checkpoint) -> tuple[FamilyResult, dict[str, pa.Table]]:
    accelerated = train_acceleration(runs, device)
    return accelerated.family, {"acceleration": acceleration_table(sweep, runs, accelerated)}


def per_step_bytes(run: RunSpec) -> int:
    """The training loss of each rate tried, at every step (on the device and the host)."""
    return (run.train.steps + 1) * len(run.train.learning_rates()) * 2 * 8


def rates(run: RunSpec) -> tuple:
    """Members of a family train every run at as many rates."""
    return (len(run.train.learning_rates()),)


def draw_acceleration(rows: Rows, _: str):
    """Speed-up over depth 1 against depth, one line per p, one panel per conditioning;
    hollow markers are lower bounds (depth 1 never reached the target)."""
    rows = [r for r in rows if r["ratio"] is not None]
    if not rows:
        return None
    plt = pyplot()
    conditions = distinct(rows, "condition") or [None]
    fig, axes = plt.subplots(1, len(conditions), figsize=(4.4 * len(conditions), 3.6), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, condition in zip(axes[0], conditions):
        for p in distinct(rows, "p"):
            mine = sorted((r for r in rows if r["condition"] == condition and r["p"] == p), key=lambda r: r["depth"])
            line, = ax.plot([r["depth"] for r in mine], [r["ratio"] for r in mine], label=f"p = {p}")
            for r in mine:
                ax.plot(r["depth"], r["ratio"], "o", color=line.get_color(),
                        mfc="none" if r["lower_bound"] else line.get_color())
        ax.axhline(1, color="grey", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(distinct(rows, "depth"))
        ax.set_xlabel("depth")
        ax.set_title(f"condition {label(condition)}")
    axes[0][0].set_ylabel("steps at depth 1 / steps")
    axes[0][0].legend(fontsize=8)
    return fig


KIND = ExperimentKind(
    Experiment.ACCELERATION, train,
    tables={"acceleration": ACCELERATION},
    enriched={"acceleration": ENRICHED},
    figures=(
        Figure("acceleration", "Speed-up from depth",
               "SELECT condition, p, depth, coalesce(ratio_vs_depth1, ratio_at_least) AS ratio, "
               "ratio_vs_depth1 IS NULL AS lower_bound FROM acceleration WHERE sweep = {sweep}", draw_acceleration,
               "Steps to the target at depth 1 over steps at each depth (Arora, Cohen & Hazan 2018); hollow "
               "markers are lower bounds, where depth 1 never reached the target."),
    ),
    per_step_bytes=per_step_bytes,
    family_key=rates,
)

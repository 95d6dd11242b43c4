"""Experiment "acceleration" (Arora, Cohen & Hazan 2018): its families train every run at
every rate of its grid and refine the best (``core.accelerate``), and write one
``acceleration`` row per run.

The ratios compare runs of different families (the depth-1 baselines have other shapes
or optimizers), so they are not stored: the ``acceleration`` view computes them.
``ratio_vs_depth1`` joins every run to the depth-1 run of the same sweep with the same
``baseline_key``: the same data (p and conditioning included), seed, init scale and
training settings, optimizer included. ``ratio_vs_best_depth1`` joins it to the fastest
depth-1 run of the same sweep with the same ``problem_key``: the same data, seed, init
scale, target and loss, whatever its optimizer and rate search (Arora et al.'s Section 8
compares depth-N GD with AdaGrad and AdaDelta on the depth-1 model).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from theoryscope.core.config import Experiment, RunSpec
from theoryscope.core.measures.rate_search import refinement_members
from theoryscope.sweeps.experiments.base import ExperimentKind
from theoryscope.sweeps.figures import Figure
from theoryscope.sweeps.panels import (
    Rows, distinct, facets, layout, mean_note, note, shared_legend, shared_log_axes, with_spread,
)
from theoryscope.sweeps.records import nullable

if TYPE_CHECKING:
    import torch

    from theoryscope.core.accelerate import AccelerationResult
    from theoryscope.core.checkpoint import Checkpoint
    from theoryscope.core.train import FamilyResult

# One row per run of experiment "acceleration" (Arora, Cohen & Hazan 2018). The view of
# the same name adds ratio_vs_depth1 (ENRICHED).
ACCELERATION = pa.schema([
    ("sweep", pa.string()),
    ("run_id", pa.string()),
    ("p", pa.int64()),
    ("depth", pa.int64()),
    ("lr", pa.float64()),                     # the fastest stable rate (grid, refined); null if none
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
    ("lrs_tried", pa.int64()),                # rates of the grid plus rates tried in refinement
    ("lrs_stable", pa.int64()),               # stable rates of the grid
    ("lr_steps", pa.string()),                # JSON: every rate of the grid -> its steps_to_target
    ("baseline_key", pa.string()),            # joins a run to its depth-1 baseline
    ("lr_refined", pa.string()),              # JSON: every rate tried in refinement -> steps (null: not
                                              #   reached within its round, i.e. no faster than the best)
    ("lr_rounds", pa.int64()),                # refinement rounds the run took part in
    ("lr_resolution", pa.float64()),          # max ratio of lr to its nearest tried rates on either side
    ("lr_at_edge", pa.bool_()),               # the grid's best was its smallest or largest rate
])

# What a run shares with every depth-1 run it can be compared with, whatever their
# optimizers: its experiment, data and seed, the init scale that sets w0, and the training
# settings that define its loss and its target; the optimizer, its settings, the rate
# search, the step budget and logging are left out. Read from ``baseline_key`` (the run's
# config without the model but its init scale), so files written before it have it too.
PROBLEM = ("experiment", "data", "seed", "model.init_scale", "train.target", "train.dtype", "train.objective",
           "train.weight_decay")
PROBLEM_KEY = ("CAST(json_object(" + ", ".join(f"'{k}', json_extract(baseline_key, '$.{k}')" for k in PROBLEM)
               + ") AS VARCHAR)")

# The view adds columns computed across families; the SQL wraps the files' rows
# (``stored``): each run's speed-up over the depth-1 run with the same data,
# seed, init scale and training settings (Arora, Cohen & Hazan 2018's ratio); where the
# depth-1 run never reached the target, ratio_at_least = train_steps / steps_to_target;
# and its speed-up over the fastest depth-1 run of the same problem (problem_key), any
# optimizer (the paper's Section 8 baselines), which is named by best_depth1_optimizer
# (ties: the first optimizer name in alphabetical order).
ENRICHED = """
        WITH stored AS (SELECT *, """ + PROBLEM_KEY + """ AS problem_key
                        FROM ({stored})),
        baseline AS (SELECT sweep, baseline_key, any_value(steps_to_target) AS depth1_steps
                     FROM stored WHERE depth = 1 GROUP BY sweep, baseline_key),
        fastest AS (SELECT sweep, problem_key, min(steps_to_target) AS best_depth1_steps,
                           arg_min(optimizer, (steps_to_target, optimizer)) AS best_depth1_optimizer
                    FROM stored WHERE depth = 1 AND steps_to_target IS NOT NULL GROUP BY sweep, problem_key)
        SELECT stored.*, CAST(baseline.depth1_steps AS DOUBLE) / stored.steps_to_target AS ratio_vs_depth1,
               baseline.depth1_steps,
               CASE WHEN baseline.baseline_key IS NOT NULL AND baseline.depth1_steps IS NULL AND stored.reached
                    THEN CAST(stored.train_steps AS DOUBLE) / stored.steps_to_target END AS ratio_at_least,
               CAST(fastest.best_depth1_steps AS DOUBLE) / stored.steps_to_target AS ratio_vs_best_depth1,
               fastest.best_depth1_steps, fastest.best_depth1_optimizer
        FROM stored LEFT JOIN baseline USING (sweep, baseline_key) LEFT JOIN fastest USING (sweep, problem_key)"""


def baseline_key(run: RunSpec) -> str:
    """What a run shares with the depth-1 run it is compared with: its config without
    the model, except the init scale that sets the common starting point w0."""
    config = run.to_config()
    config["model"] = {"init_scale": run.model.init_scale}
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def _steps_json(rates, steps) -> str:
    return json.dumps({f"{lr:.6g}": (int(s) if s >= 0 else None) for lr, s in zip(rates, steps)})


def acceleration_table(sweep: str, runs: Sequence[RunSpec], result: AccelerationResult) -> pa.Table:
    """One row per run: its fastest stable rate and the steps it took to the target."""
    rows = []
    for i, run in enumerate(runs):
        steps = int(result.steps_to_target[i])
        optimum, initial = float(result.optimum[i]), float(result.initial_loss[i])
        depth = run.model.depth
        refined = result.refined[i]
        rows.append({
            "sweep": sweep, "run_id": run.run_id, "p": run.data.p, "depth": depth,
            "lr": nullable(result.lr[i]),
            "steps_to_target": steps if steps >= 0 else None, "reached": steps >= 0,
            "target_loss": optimum + run.train.target * (initial - optimum),
            "overparam": run.model.overparam.value if depth > 1 else None,
            "hidden_width": run.model.hidden_width if depth > 1 else None,
            "init": run.model.init.value if depth > 1 else None,
            "optimizer": run.train.optimizer.value, "condition": run.data.condition, "seed": run.seed,
            "target": run.train.target, "train_steps": run.train.steps, "optimum_loss": optimum, "initial_loss": initial,
            "final_loss": nullable(result.final_loss[i]),
            "lrs_tried": int(result.lrs.shape[1]) + len(refined), "lrs_stable": int(result.stable[i].sum()),
            "lr_steps": _steps_json(result.lrs[i], result.steps[i]), "baseline_key": baseline_key(run),
            "lr_refined": _steps_json(refined, refined.values()), "lr_rounds": int(result.rounds[i]),
            "lr_resolution": nullable(result.resolution[i]), "lr_at_edge": bool(result.at_edge[i]),
        })
    return pa.Table.from_pylist(rows, schema=ACCELERATION)


def train(sweep: str, runs: Sequence[RunSpec], _measure, device: torch.device,
          _checkpoint: Checkpoint) -> tuple[FamilyResult, dict[str, pa.Table]]:
    from theoryscope.core.accelerate import train_acceleration  # loads torch: see sweeps.experiments.base

    accelerated = train_acceleration(runs, device)
    return accelerated.family, {"acceleration": acceleration_table(sweep, runs, accelerated)}


def per_step_bytes(run: RunSpec) -> int:
    """The training loss of each rate of the grid at every step (on the device and the
    host), and of a refinement round's rates while the grid's are kept."""
    rates = len(run.train.learning_rates()) + refinement_members(run.train)
    return (run.train.steps + 1) * rates * 2 * 8


def rates(run: RunSpec) -> tuple:
    """Members of a family train every run at as many rates."""
    return (len(run.train.learning_rates()),)


def draw_acceleration(rows: Rows, swept: Sequence[str]):
    """Speed-up over depth 1 against depth, one line per p (dashed per optimizer, when the
    sweep has several), one panel per value of every other swept field (conditioning...);
    hollow markers are lower bounds (depth 1 never reached the target)."""
    rows = [r for r in rows if r["ratio"] is not None]
    if not rows:
        return None
    shape = layout(rows, swept, shown=("depth",), lines=("p", "optimizer"), line_fields=2)
    fig, rows, panels = facets(rows, shape, size=(3.8, 3.2), order="depth")
    for panel in panels:
        ax, key = panel.ax, panel.key
        for line, points, style in panel.lines:
            style = {**style, "marker": "o"}
            with_spread(ax, points, "depth", "ratio", shape.line_label(line), style)
            bounds = [r for r in points if r["lower_bound"]]
            ax.plot([r["depth"] for r in bounds], [r["ratio"] for r in bounds], "o", color="w", mec=style["color"],
                    zorder=3)  # above the line (errorbar draws at 2.1)
        ax.axhline(1, color="grey", lw=0.8)
        ax.set_xticks(distinct(rows, "depth"))
        ax.set_xlabel("depth")
        ax.set_ylabel("steps at depth 1 / steps")
        ax.set_title(shape.panel_title(key), fontsize=9)
    shared_log_axes([panel.ax for panel in panels])
    shared_legend(fig)
    note(fig, mean_note(rows, "bars: min–max"), "hollow: lower bound (depth 1 never reached the target)"
         if any(r["lower_bound"] for r in rows) else "", shape.held_note())
    return fig


KIND = ExperimentKind(
    Experiment.ACCELERATION, train,
    tables={"acceleration": ACCELERATION},
    enriched={"acceleration": ENRICHED},
    figures=(
        Figure("acceleration", "Speed-up from depth",
               "SELECT {fields}r.depth, r.p, count(*) AS runs, avg(coalesce(a.ratio_vs_depth1, a.ratio_at_least)) "
               "AS ratio, min(coalesce(a.ratio_vs_depth1, a.ratio_at_least)) AS low, "
               "max(coalesce(a.ratio_vs_depth1, a.ratio_at_least)) AS high, "
               "bool_or(a.ratio_vs_depth1 IS NULL AND a.ratio_at_least IS NOT NULL) AS lower_bound "
               "FROM acceleration a JOIN runs r USING (sweep, run_id) WHERE a.sweep = {sweep} GROUP BY ALL",
               draw_acceleration,
               "Steps to the target at depth 1 over steps at each depth (Arora, Cohen & Hazan 2018), one line per "
               "p, one panel per value of every other swept field (e.g. the conditioning); hollow markers are "
               "lower bounds, where depth 1 never reached the target."),
    ),
    per_step_bytes=per_step_bytes,
    defaults={"model.init": "balanced"},  # "default" (nn.Linear's) is not an end-to-end start
    family_key=rates,
)

"""Experiment "linear-dynamics" (Arora, Cohen & Hazan 2018, Theorem 1; Saxe, McClelland &
Ganguli 2014): deep linear nets trained beside the end-to-end rule (``core.dynamics``).

Its curves carry ``rule_deviation``; on linear-modes data it writes one ``modes`` row per
run and target mode: when the mode reached half its strength, measured and in theory
(``core.dynamics.mode_time``: every depth, balanced or imbalanced, from the decoupled
start; none from the "balanced" and "identity" starts, whose modes are coupled).
"""

from __future__ import annotations

from collections.abc import Sequence

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from theoryscope.core.config import Experiment, Init, RunSpec
from theoryscope.sweeps.experiments.base import ExperimentKind
from theoryscope.sweeps.figures import Figure
from theoryscope.sweeps.panels import (
    Rows, column, facets, layout, matching, mean_note, note, panel_grid, shared_legend, shared_log_axes,
)

if TYPE_CHECKING:
    import torch

    from theoryscope.core.checkpoint import Checkpoint
    from theoryscope.core.dynamics import DynamicsResult
    from theoryscope.core.train import FamilyResult

# One row per run and target mode of experiment "linear-dynamics" on linear-modes data
# (Saxe, McClelland & Ganguli 2014): when the mode reached half its strength.
MODES = pa.schema([
    ("sweep", pa.string()),
    ("run_id", pa.string()),
    ("mode", pa.int64()),                     # 1 = the largest singular value
    ("singular_value", pa.float64()),         # s
    ("initial_strength", pa.float64()),       # u0 = u_a^T W_e(0) v_a
    ("final_strength", pa.float64()),         # at the last step
    ("half_step", pa.float64()),              # first crossing of s/2, interpolated between steps
    ("half_time", pa.float64()),              # in Saxe's time units (tau = 1): half_step x time_per_step
    ("theory_half_time", pa.float64()),       # core.dynamics.mode_time from the start's factors (decoupled init)
    ("relative_error", pa.float64()),         # half_time / theory_half_time - 1
    ("time_per_step", pa.float64()),          # lr x 2/outputs ("mean") or lr x n_train ("half-sum")
])


def modes_table(sweep: str, runs: Sequence[RunSpec], result: DynamicsResult) -> pa.Table:
    from theoryscope.core.measures.acceleration import crossing_step  # load torch: see sweeps.experiments.base
    from theoryscope.core.measures.modes import mode_time

    """One row per run and target mode (linear-modes data; none otherwise)."""
    rows = []
    if result.strengths is not None:
        for f, run in enumerate(runs):
            scale = float(result.time_per_step[f])
            for a, s in enumerate(run.data.singular_values):
                curve = result.strengths[:, f, a]
                u0 = float(curve[0])
                half = crossing_step(curve, s / 2) if np.isfinite(curve).all() else None
                theory = None
                if run.model.init is Init.DECOUPLED:
                    theory = mode_time(s, result.factor_strengths[f, :, a])
                measured = None if half is None else half * scale
                rows.append({
                    "sweep": sweep, "run_id": run.run_id, "mode": a + 1, "singular_value": s,
                    "initial_strength": u0, "final_strength": float(curve[-1]) if np.isfinite(curve[-1]) else None,
                    "half_step": half, "half_time": measured, "theory_half_time": theory,
                    "relative_error": None if measured is None or not theory else measured / theory - 1,
                    "time_per_step": scale,
                })
    return pa.Table.from_pylist(rows, schema=MODES)


def train(sweep: str, runs: Sequence[RunSpec], _measure, device: torch.device,
          _checkpoint: Checkpoint) -> tuple[FamilyResult, dict[str, pa.Table]]:
    from theoryscope.core.dynamics import train_linear_dynamics  # loads torch: see sweeps.experiments.base

    dynamics = train_linear_dynamics(runs, device)
    return dynamics.family, {"modes": modes_table(sweep, runs, dynamics)}


def per_step_bytes(run: RunSpec) -> int:
    """The strength of every target mode, at every step (on the device and the host)."""
    return (run.train.steps + 1) * len(run.data.singular_values) * 2 * 8


def draw_rule_deviation(rows: Rows, swept: Sequence[str]):
    """Relative distance of the trained product from Theorem 1's trajectory (mean over
    seeds, min–max band), colour by rate, dashed by imbalance of the initial factors, one
    panel per value of every other swept field (depth...)."""
    rows = [r for r in rows if r["deviation"] is not None]
    if not rows:
        return None
    shape = layout(rows, swept, shown=("step",), lines=("lr", "imbalance"), line_fields=2)
    fig, rows, panels = facets(rows, shape, size=(4.2, 3.2), order="step")
    for panel in panels:
        ax, key = panel.ax, panel.key
        for line, points, style in panel.lines:
            steps, low, high = column(points, "step"), column(points, "low"), column(points, "high")
            ax.plot(steps, column(points, "deviation"), color=style["color"], ls=style["ls"],
                    label=shape.line_label(line))
            if np.any(high > low):
                ax.fill_between(steps, low, high, color=style["color"], alpha=0.15, lw=0)
        ax.set_xlabel("step")
        ax.set_ylabel("‖W_e − W_rule‖ / ‖W_rule‖")
        ax.set_title(shape.panel_title(key), fontsize=9)
    shared_log_axes([panel.ax for panel in panels])
    shared_legend(fig)
    note(fig, mean_note(rows, "band: min–max"), shape.held_note())
    return fig


def draw_modes(rows: Rows, swept: Sequence[str]):
    """Measured time to half strength of every mode of every run against Saxe et al.'s
    closed form, colour by rate, marked by imbalance, one panel per value of every other
    swept field (depth...)."""
    rows = [r for r in rows if r["measured"] is not None and r["theory"] is not None]
    if not rows:
        return None
    shape = layout(rows, swept, lines=("lr", "imbalance"), line_fields=2)
    rows = shape.keep(rows)
    keys = shape.panel_keys(rows)
    fig, (axes,) = panel_grid(len(keys), size=(3.6, 3.4))
    styles = shape.styles(rows)
    top = max(max(r["theory"], r["measured"]) for r in rows) * 1.1
    for ax, key in zip(axes, keys):
        mine = matching(rows, shape.panels, key)
        for line in shape.line_keys(mine):
            points = matching(mine, shape.lines, line)
            ax.scatter([r["theory"] for r in points], [r["measured"] for r in points], s=22,
                       color=styles[line]["color"], marker=styles[line]["marker"], label=shape.line_label(line))
        ax.plot([0, top], [0, top], color="grey", lw=0.8)
        ax.set_xlabel("theory (Saxe et al.'s mode ODE)")
        ax.set_ylabel("measured half time")
        ax.set_title(shape.panel_title(key), fontsize=9)
    shared_legend(fig)
    note(fig, "one point per mode and run; grey: equality", shape.held_note())
    return fig


KIND = ExperimentKind(
    Experiment.LINEAR_DYNAMICS, train,
    tables={"modes": MODES},
    figures=(
        Figure("rule-deviation", "Gradient descent against the end-to-end rule",
               "SELECT c.step, {fields}count(*) AS runs, avg(c.rule_deviation) AS deviation, "
               "min(c.rule_deviation) AS low, max(c.rule_deviation) AS high FROM curves c "
               "JOIN runs r USING (sweep, run_id) WHERE c.sweep = {sweep} GROUP BY ALL ORDER BY ALL",
               draw_rule_deviation,
               "Relative distance between the trained end-to-end matrix and the trajectory of Theorem 1's rule, "
               "mean over seeds; colour: learning rate, dashed: imbalanced initial factors, one panel per value "
               "of every other swept field."),
        Figure("modes", "Mode learning times against the theory",
               "SELECT {fields}m.half_time AS measured, m.theory_half_time AS theory FROM modes m "
               "JOIN runs r USING (sweep, run_id) WHERE m.sweep = {sweep}", draw_modes,
               "Time for each target mode to reach half its strength (Saxe et al. 2014), measured against the "
               "theory from the same start (every depth, imbalance included), one point per mode and run, "
               "coloured by learning rate, one panel per value of every other swept field; the grey line is "
               "equality."),
    ),
    per_step_bytes=per_step_bytes,
    defaults={"model.init": "balanced"},  # "default" (nn.Linear's) is not an end-to-end start
)

"""Experiment "linear-dynamics" (Arora, Cohen & Hazan 2018, Theorem 1; Saxe, McClelland &
Ganguli 2014): deep linear nets trained beside the end-to-end rule (``core.dynamics``).

Its curves carry ``rule_deviation``; on linear-modes data it writes one ``modes`` row per
run and target mode: when the mode reached half its strength, measured and in theory
(``core.dynamics.mode_time``: every depth, balanced or imbalanced, from the decoupled
start; none from the "balanced" and "identity" starts, whose modes are coupled).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from theoryscope.core.checkpoint import Checkpoint
from theoryscope.core.config import Experiment, Init, RunSpec
from theoryscope.core.dynamics import DynamicsResult, train_linear_dynamics
from theoryscope.core.measures.acceleration import crossing_step
from theoryscope.core.measures.modes import mode_time
from theoryscope.core.train import FamilyResult
from theoryscope.sweeps.experiments.base import ExperimentKind
from theoryscope.sweeps.figures import Figure, Rows, distinct, pyplot

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
    dynamics = train_linear_dynamics(runs, device)
    return dynamics.family, {"modes": modes_table(sweep, runs, dynamics)}


def per_step_bytes(run: RunSpec) -> int:
    """The strength of every target mode, at every step (on the device and the host)."""
    return (run.train.steps + 1) * len(run.data.singular_values) * 2 * 8


def draw_rule_deviation(rows: Rows, _: str):
    """Relative distance of the trained product from Theorem 1's trajectory, one panel per
    depth, colour by rate, dashed when the factors started imbalanced."""
    rows = [r for r in rows if r["deviation"] is not None]
    if not rows:
        return None
    plt = pyplot()
    depths, rates = distinct(rows, "depth"), distinct(rows, "lr")
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(depths), figsize=(5 * len(depths), 3.8), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, depth in zip(axes[0], depths):
        for key in sorted({(r["lr"], r["imbalance"] or 0.0) for r in rows if r["depth"] == depth}):
            mine = [r for r in rows if r["depth"] == depth and (r["lr"], r["imbalance"] or 0.0) == key]
            ax.plot([r["step"] for r in mine], [r["deviation"] for r in mine], ls="-" if key[1] == 0 else "--",
                    color=cmap(rates.index(key[0]) / max(1, len(rates) - 1)),
                    label=f"lr {key[0]:g}, imbalance {key[1]:g}")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"depth {depth}")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("‖W_e − W_rule‖ / ‖W_rule‖")
    return fig


def draw_modes(rows: Rows, _: str):
    """Measured time to half strength against Saxe et al.'s closed form."""
    rows = [r for r in rows if r["measured"] is not None and r["theory"] is not None]
    if not rows:
        return None
    fig, ax = pyplot().subplots(figsize=(4.6, 4), layout="constrained")
    points = ax.scatter([r["theory"] for r in rows], [r["measured"] for r in rows], c=[r["lr"] for r in rows],
                        cmap="viridis", s=22)
    top = max(max(r["theory"], r["measured"]) for r in rows) * 1.1
    ax.plot([0, top], [0, top], color="grey", lw=0.8)
    ax.set_xlabel("theory (Saxe et al.'s mode ODE from the start)")
    ax.set_ylabel("measured half time")
    fig.colorbar(points, ax=ax, label="lr")
    return fig


KIND = ExperimentKind(
    Experiment.LINEAR_DYNAMICS, train,
    tables={"modes": MODES},
    figures=(
        Figure("rule-deviation", "Gradient descent against the end-to-end rule",
               "SELECT c.step, r.depth, r.lr, r.imbalance, c.rule_deviation AS deviation FROM curves c "
               "JOIN runs r USING (sweep, run_id) WHERE c.sweep = {sweep} ORDER BY c.step", draw_rule_deviation,
               "Relative distance between the trained end-to-end matrix and the trajectory of Theorem 1's rule; "
               "dashed: imbalanced initial factors."),
        Figure("modes", "Mode learning times against the theory",
               "SELECT m.half_time AS measured, m.theory_half_time AS theory, r.lr FROM modes m "
               "JOIN runs r USING (sweep, run_id) WHERE m.sweep = {sweep}", draw_modes,
               "Time for each target mode to reach half its strength (Saxe et al. 2014), measured against the "
               "theory from the same start (every depth, imbalance included); the grey line is equality."),
    ),
    per_step_bytes=per_step_bytes,
    defaults={"model.init": "balanced"},  # "default" (nn.Linear's) is not an end-to-end start
)

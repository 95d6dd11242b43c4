"""The canonical figures of a sweep, each drawn from the rows of one SQL query.

A ``Figure`` holds its query (with ``{sweep}`` for the sweep's name, quoted) and a function
that draws the query's rows onto a matplotlib figure. ``draw`` returns None when the rows
do not make the picture (nothing measured, or nothing varies), so a report shows only the
figures a sweep can fill. Matplotlib runs headless (Agg).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

Rows = list[dict]
Draw = Callable[[Rows, str], "plt.Figure | None"]


@dataclass(frozen=True)
class Figure:
    name: str      # file name stem
    title: str
    sql: str       # ``{sweep}`` is the quoted sweep name; ``{color}`` the swept column (curves)
    draw: Draw
    caption: str


def _distinct(rows: Rows, key: str) -> list:
    return sorted({r[key] for r in rows if r[key] is not None}, key=lambda v: (str(type(v)), v))


def _label(value) -> str:
    return "—" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def heatmaps(rows: Rows, _: str):
    """Mean test error (or loss) over depth x width, one panel per label noise."""
    cells = {(r["depth"], r["width"]) for r in rows}
    if len(cells) < 2:
        return None
    noises = sorted({r["label_noise"] for r in rows}, key=lambda v: -1 if v is None else v)
    depths = sorted({r["depth"] for r in rows})
    widths = sorted({r["width"] for r in rows}, key=lambda v: -1 if v is None else v)
    metric = "test error" if rows[0]["is_error"] else "test loss"
    fig, axes = plt.subplots(1, len(noises), figsize=(3.6 * len(noises) + 1, 3.2), squeeze=False,
                             layout="constrained")
    values = {(r["label_noise"], r["depth"], r["width"]): r["value"] for r in rows}
    top = max(v for v in values.values() if v is not None)
    for ax, noise in zip(axes[0], noises):
        grid = np.array([[values.get((noise, d, w), np.nan) if values.get((noise, d, w)) is not None else np.nan
                          for w in widths] for d in depths], dtype=float)
        image = ax.imshow(grid, origin="lower", cmap="viridis", vmin=0, vmax=top, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", color="w" if v < 0.6 * top else "k", fontsize=8)
        ax.set_xticks(range(len(widths)), [_label(w) for w in widths])
        ax.set_yticks(range(len(depths)), [str(d) for d in depths])
        ax.set_xlabel("width")
        ax.set_ylabel("depth")
        ax.set_title(f"label noise {_label(noise)}")
    fig.colorbar(image, ax=axes[0].tolist(), label=metric)
    return fig


def curves(rows: Rows, color: str):
    """Train and test curves, one line per value of the swept field, theory dashed."""
    if not rows:
        return None
    values = _distinct(rows, "value") or [None]
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=False, layout="constrained")
    for k, value in enumerate(values):
        mine = [r for r in rows if r["value"] == value]
        steps = [r["step"] for r in mine]
        shade = cmap(k / max(1, len(values) - 1))
        axes[0].plot(steps, [r["train"] for r in mine], color=shade, label=f"{color} = {_label(value)}")
        axes[1].plot(steps, [r["test"] for r in mine], color=shade)
        theory = [r["theory"] for r in mine]
        if any(t is not None for t in theory):
            axes[1].plot(steps, [np.nan if t is None else t for t in theory], color=shade, ls="--", lw=1)
    for ax, side in zip(axes, ("train", "test")):
        ax.set_xlabel("step")
        ax.set_ylabel(f"{side} loss (mean over runs)")
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    return fig


def cushions(rows: Rows, _: str):
    """Layer cushion of every run (the paper's minimum over samples), per layer and noise."""
    if not rows:
        return None
    layers, noises = _distinct(rows, "layer"), _distinct(rows, "label_noise")
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers) + 0.5, 3.2), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, layer in zip(axes[0], layers):
        data = [[r["layer_cushion"] for r in rows if r["layer"] == layer and r["label_noise"] == n
                 and r["layer_cushion"] is not None] for n in noises]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(noises) + 1), [_label(n) for n in noises])
        ax.set_xlabel("label noise")
        ax.set_title(f"layer {layer}")
    axes[0][0].set_ylabel("layer cushion μ_i")
    return fig


def effective_params(rows: Rows, _: str):
    """Theorem 4.1's effective parameter count q against the generalization gap."""
    rows = [r for r in rows if r["q"] is not None and r["gap"] is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.8), layout="constrained")
    points = ax.scatter([r["q"] for r in rows], [r["gap"] for r in rows], c=[r["label_noise"] or 0 for r in rows],
                        cmap="viridis", s=18)
    ax.set_xscale("log")
    ax.set_xlabel("effective parameters q")
    ax.set_ylabel("generalization gap")
    fig.colorbar(points, ax=ax, label="label noise")
    return fig


def valleys(rows: Rows, _: str):
    """Barrier (found path and straight line) and normalized length against width."""
    rows = [r for r in rows if r["barrier"] is not None]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for depth in _distinct(rows, "depth"):
        mine = sorted((r for r in rows if r["depth"] == depth), key=lambda r: r["width"] or 0)
        widths = [r["width"] or 1 for r in mine]
        line, = axes[0].plot(widths, [r["barrier"] for r in mine], marker="o", label=f"depth {depth}")
        axes[0].plot(widths, [r["straight"] for r in mine], ls="--", color=line.get_color(), lw=1)
        axes[1].plot(widths, [r["length"] for r in mine], marker="o", color=line.get_color())
    axes[0].set_yscale("symlog", linthresh=1e-5)
    axes[0].set_ylabel("barrier (dashed: straight line)")
    axes[1].set_ylabel("normalized path length")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width")
    axes[0].legend(fontsize=8)
    return fig


def acceleration(rows: Rows, _: str):
    """Speed-up over depth 1 against depth, one line per p, one panel per conditioning;
    hollow markers are lower bounds (depth 1 never reached the target)."""
    rows = [r for r in rows if r["ratio"] is not None]
    if not rows:
        return None
    conditions = _distinct(rows, "condition") or [None]
    fig, axes = plt.subplots(1, len(conditions), figsize=(4.4 * len(conditions), 3.6), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, condition in zip(axes[0], conditions):
        for p in _distinct(rows, "p"):
            mine = sorted((r for r in rows if r["condition"] == condition and r["p"] == p), key=lambda r: r["depth"])
            line, = ax.plot([r["depth"] for r in mine], [r["ratio"] for r in mine], label=f"p = {p}")
            for r in mine:
                ax.plot(r["depth"], r["ratio"], "o", color=line.get_color(),
                        mfc="none" if r["lower_bound"] else line.get_color())
        ax.axhline(1, color="grey", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(_distinct(rows, "depth"))
        ax.set_xlabel("depth")
        ax.set_title(f"condition {_label(condition)}")
    axes[0][0].set_ylabel("steps at depth 1 / steps")
    axes[0][0].legend(fontsize=8)
    return fig


def rule_deviation(rows: Rows, _: str):
    """Relative distance of the trained product from Theorem 1's trajectory, one panel per
    depth, colour by rate, dashed when the factors started imbalanced."""
    rows = [r for r in rows if r["deviation"] is not None]
    if not rows:
        return None
    depths, rates = _distinct(rows, "depth"), _distinct(rows, "lr")
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


def modes(rows: Rows, _: str):
    """Measured time to half strength against Saxe et al.'s closed form."""
    rows = [r for r in rows if r["measured"] is not None and r["theory"] is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(4.6, 4), layout="constrained")
    points = ax.scatter([r["theory"] for r in rows], [r["measured"] for r in rows], c=[r["lr"] for r in rows],
                        cmap="viridis", s=22)
    top = max(max(r["theory"], r["measured"]) for r in rows) * 1.1
    ax.plot([0, top], [0, top], color="grey", lw=0.8)
    ax.set_xlabel("closed form (1/2s) ln[u_f (s − u₀) / (u₀ (s − u_f))]")
    ax.set_ylabel("measured half time")
    fig.colorbar(points, ax=ax, label="lr")
    return fig


FIGURES = (
    Figure("test-by-depth-width", "Test error over depth × width",
           "SELECT label_noise, depth, width, avg(coalesce(test_error, test_loss)) AS value, "
           "bool_or(test_error IS NOT NULL) AS is_error FROM runs WHERE sweep = {sweep} AND status = 'ok' "
           "GROUP BY ALL", heatmaps,
           "Mean final test error (test loss for regression) over seeds and other fields, per depth and width, "
           "one panel per label noise."),
    Figure("curves", "Training and test curves",
           "SELECT c.step, r.{color} AS value, avg(c.train_loss) AS train, avg(c.test_loss) AS test, "
           "avg(c.theory_test_loss) AS theory FROM curves c JOIN runs r USING (sweep, run_id) "
           "WHERE c.sweep = {sweep} GROUP BY ALL ORDER BY value, c.step", curves,
           "Mean train and test loss over runs with the same value of the first swept field; dashed: the "
           "closed-form test loss where a theory covers the runs."),
    Figure("cushions", "Layer cushions against label noise",
           "SELECT r.label_noise, l.layer, l.layer_cushion FROM layers l JOIN runs r USING (sweep, run_id) "
           "WHERE l.sweep = {sweep} AND l.step = r.steps", cushions,
           "Distribution over runs of the layer cushion μ_i (Arora et al. 2018) after training, per layer and "
           "label noise."),
    Figure("effective-params", "Effective parameters against the generalization gap",
           "SELECT b.effective_params AS q, b.gen_gap AS gap, r.label_noise FROM bounds b "
           "JOIN runs r USING (sweep, run_id) WHERE b.sweep = {sweep} AND b.step = r.steps", effective_params,
           "Theorem 4.1's effective parameter count q of every run against its generalization gap."),
    Figure("valleys", "Barriers and path lengths against width",
           "SELECT r.depth, r.width, avg(v.barrier) AS barrier, avg(v.linear_barrier) AS straight, "
           "avg(v.normalized_length) AS length FROM valleys v JOIN runs r ON r.sweep = v.sweep AND "
           "r.run_id = v.run_a WHERE v.sweep = {sweep} GROUP BY ALL", valleys,
           "Mean barrier along the relaxed path (solid) and the straight line (dashed) between pairs of "
           "solutions, and the found path's normalized length, per depth and width."),
    Figure("acceleration", "Speed-up from depth",
           "SELECT condition, p, depth, coalesce(ratio_vs_depth1, ratio_at_least) AS ratio, "
           "ratio_vs_depth1 IS NULL AS lower_bound FROM acceleration WHERE sweep = {sweep}", acceleration,
           "Steps to the target at depth 1 over steps at each depth (Arora, Cohen & Hazan 2018); hollow "
           "markers are lower bounds, where depth 1 never reached the target."),
    Figure("rule-deviation", "Gradient descent against the end-to-end rule",
           "SELECT c.step, r.depth, r.lr, r.imbalance, c.rule_deviation AS deviation FROM curves c "
           "JOIN runs r USING (sweep, run_id) WHERE c.sweep = {sweep} ORDER BY c.step", rule_deviation,
           "Relative distance between the trained end-to-end matrix and the trajectory of Theorem 1's rule; "
           "dashed: imbalanced initial factors."),
    Figure("modes", "Mode learning times against the closed form",
           "SELECT m.half_time AS measured, m.theory_half_time AS theory, r.lr FROM modes m "
           "JOIN runs r USING (sweep, run_id) WHERE m.sweep = {sweep}", modes,
           "Time for each target mode to reach half its strength (Saxe et al. 2014), measured against the "
           "closed form; the grey line is equality."),
)

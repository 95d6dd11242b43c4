"""The canonical figures of a sweep, each drawn from the rows of one SQL query.

A ``Figure`` holds its query (with ``{sweep}`` for the sweep's name, quoted, and
``{fields}`` for the sweep's swept ``runs`` columns) and a function that draws the query's
rows onto a matplotlib figure, given the swept columns. ``draw`` returns None when the rows
do not make the picture (nothing measured, or nothing varies), so a report shows only the
figures a sweep can fill. This module holds the figures of the spine (every sweep's runs
and curves); each measure and experiment declares its own beside its tables, and
``sweeps.tables.FIGURES`` lists them all. How figures lay out their panels is
``sweeps.panels``'s.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from theoryscope.sweeps.panels import (
    DECADES, QUESTION_FIELDS, SEED_COLUMNS, Rows, Swept, column, facets, key_line, label, layout, levels, log_axis,
    matching, mean_note, note, number, panel_grid, shared_legend, with_spread,
)

Draw = Callable[[Rows, Swept], Any]  # -> a matplotlib Figure, or None


@dataclass(frozen=True)
class Figure:
    name: str      # file name stem
    title: str     # the heading, unless the drawing sets a suptitle of its own (one that names its data)
    sql: str       # ``{sweep}``: the quoted sweep name; ``{fields}``: ``r.<column>, `` per swept field
    draw: Draw
    caption: str

    def query(self, sweep: str, swept: Swept) -> str:
        """The SQL for the sweep whose name is the literal ``sweep`` (quoted): ``{fields}``
        becomes ``r.<column>, `` for every swept column, seeds aside, that the query does not
        already select as ``r.<column>`` before its first FROM (the ``runs`` table is always
        ``r``). With ``GROUP BY ALL``, the rows are then means over seeds only."""
        selected = re.split(r"\bFROM\b", self.sql, maxsplit=1)[0]
        named = set(re.findall(r"\br\.(\w+)", selected))
        fields = "".join(f"r.{c}, " for c in swept if c not in SEED_COLUMNS and c not in named)
        return self.sql.format(sweep=sweep, fields=fields)


def is_error(rows: Rows) -> bool:
    """Classification rows (an error rate measured), else regression (losses only)."""
    return any(r.get("is_error") for r in rows)


# ---------------------------------------------------------------------------------------
# The spine's figures
# ---------------------------------------------------------------------------------------

def heatmaps(rows: Rows, swept: Swept):
    """Mean final test error (or loss) over depth x width, one panel per value of every
    other swept field."""
    rows = [r for r in rows if r["value"] is not None]
    if len({(r["depth"], r["width"]) for r in rows}) < 2:
        return None
    shape = layout(rows, swept, shown=("depth", "width"))
    rows = shape.keep(rows)
    keys = shape.panel_keys(rows)
    depths, widths = levels(rows, "depth"), levels(rows, "width")
    metric = "test error" if is_error(rows) else "test loss"
    fig, (axes,) = panel_grid(len(keys), size=(0.9 * len(widths) + 1.5, 0.55 * len(depths) + 1.4), legend=False)
    norm = _colour_scale([r["value"] for r in rows])
    for ax, key in zip(axes, keys):
        cells = {(r["depth"], r["width"]): r for r in matching(rows, shape.panels, key)}
        grid = np.array([[number(cells[d, w]["value"]) if (d, w) in cells else np.nan for w in widths]
                         for d in depths])
        image = ax.imshow(grid, origin="lower", cmap="viridis", norm=norm, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, _cell_text(cells[depths[i], widths[j]]), ha="center", va="center", fontsize=7,
                        color="w" if norm(v) < 0.6 else "k")
        ax.set_xticks(range(len(widths)), [label(w) for w in widths])
        ax.set_yticks(range(len(depths)), [label(d) for d in depths])
        ax.set_xlabel("width")
        ax.set_ylabel("depth")
        ax.set_title(shape.panel_title(key), fontsize=9)
    fig.colorbar(image, ax=axes, label=metric + " (mean over seeds)" * (max(r["runs"] for r in rows) > 1))
    fig.suptitle(f"{metric.capitalize()} over depth × width")
    note(fig, mean_note(rows, "± half the min–max range"), shape.held_note())
    return fig


def _colour_scale(values: Sequence[float]):
    """From 0 to the largest value; logarithmic where the values span over two decades
    (losses of nets that interpolate)."""
    from matplotlib.colors import LogNorm, Normalize

    low, high = min(values), max(values)
    if low > 0 and high / low > 100:
        return LogNorm(low, high)
    return Normalize(0, high or 1.0)


def _cell_text(r: dict) -> str:
    spread = (r["high"] - r["low"]) / 2 if r.get("high") is not None and r.get("low") is not None else 0.0
    return f"{r['value']:.3g}" + (f"\n±{spread:.1g}" if r.get("runs", 1) > 1 and spread > 0 else "")


def curves(rows: Rows, swept: Swept):
    """Train (dotted) and test (solid) curves, loss and (classification) error rate, one
    colour per value of the field the sweep asks about, one panel per value of the others;
    closed-form test loss dashed where a theory covers the runs."""
    if not rows:
        return None
    shape = layout(rows, swept, shown=("step",), lines=QUESTION_FIELDS)
    rows = shape.keep(rows)
    metrics = ["loss"] + ["error"] * any(r["train_error"] is not None or r["test_error"] is not None for r in rows)
    keys = shape.panel_keys(rows)
    fig, axes = panel_grid(len(keys), metrics=len(metrics), size=(2.9, 2.5))
    styles = shape.styles(rows)
    theory = False
    for m, metric in enumerate(metrics):
        for ax, key in zip(axes[m], keys):
            mine = matching(rows, shape.panels, key)
            for line in shape.line_keys(mine):
                theory |= _curve(ax, sorted(matching(mine, shape.lines, line), key=lambda r: r["step"]), metric,
                                 shape.line_label(line), styles[line]["color"])
            _scale(ax, metric, column(mine, f"test_{metric}"))
            ax.set_xlabel("step")
            ax.set_ylabel("error rate" if metric == "error" else "loss")
            ax.set_title(shape.panel_title(key), fontsize=9)
    extra = [key_line("-", "test"), key_line(":", "train")] + [key_line("--", "theory (test)")] * theory
    shared_legend(fig, extra)
    fig.suptitle("Training and test curves: " + " and ".join(
        {"loss": "loss", "error": "error rate"}[m] for m in metrics))
    note(fig, mean_note(rows, "band: min–max"), shape.held_note())
    return fig


def _curve(ax, mine: Rows, metric: str, name: str, colour) -> bool:
    """One line's test (solid, min–max band) and train (dotted) curve; True if it drew theory."""
    steps = column(mine, "step")
    test = column(mine, f"test_{metric}")
    ax.plot(steps, test, color=colour, label=name)
    ax.plot(steps, column(mine, f"train_{metric}"), color=colour, ls=":", lw=1.2)
    low, high = column(mine, f"test_{metric}_low"), column(mine, f"test_{metric}_high")
    if np.any(np.isfinite(high - low) & (high > low)):
        ax.fill_between(steps, low, high, color=colour, alpha=0.15, lw=0)
    if metric == "loss" and any(r["theory"] is not None for r in mine):
        ax.plot(steps, column(mine, "theory"), color=colour, ls="--", lw=1)
        return True
    return False


def _scale(ax, metric: str, test: np.ndarray) -> None:
    """Losses on a log axis reaching at most ``DECADES`` below the lowest test loss (a train
    loss interpolating to 1e-17 would squash the test curves flat), error rates from 0."""
    if metric != "loss":
        ax.set_ylim(bottom=0)
        return
    positive = test[np.isfinite(test) & (test > 0)]
    if positive.size:
        ax.set_yscale("log")
        bottom, top = ax.get_ylim()
        ax.set_ylim(max(bottom, positive.min() / 10**DECADES), top)
        log_axis(ax)


def gap_against_noise(rows: Rows, swept: Swept):
    """Final generalization gap (test minus train error; loss for regression) against label
    noise, one line per depth and width, one panel per value of the other swept fields."""
    rows = [r for r in rows if r["gap"] is not None]
    if len(levels(rows, "label_noise")) < 2:
        return None
    shape = layout(rows, swept, shown=("label_noise",), lines=("depth", "width"), line_fields=2)
    fig, rows, panels = facets(rows, shape, order="label_noise")
    metric = "error" if is_error(rows) else "loss"
    for panel in panels:
        ax = panel.ax
        for line, points, style in panel.lines:
            with_spread(ax, points, "label_noise", "gap", shape.line_label(line), style)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xlabel("label noise")
        ax.set_ylabel(f"test − train {metric}")
        ax.set_title(shape.panel_title(panel.key), fontsize=9)
    shared_legend(fig)
    fig.suptitle(f"Generalization gap (test − train {metric}) against label noise")
    note(fig, mean_note(rows, "bars: min–max"), shape.held_note())
    return fig


def against_n_train(rows: Rows, swept: Swept):
    """Final test error (or loss) against the training set size (sample-wise double
    descent; Nakkiran et al. 2019), train dotted, the closed form dashed where one exists."""
    rows = [r for r in rows if r["test"] is not None]
    if len(levels(rows, "n_train")) < 2:
        return None
    shape = layout(rows, swept, shown=("n_train",), lines=("label_noise",))
    fig, rows, panels = facets(rows, shape, order="n_train")
    metric = "error" if is_error(rows) else "loss"
    theory = False
    for panel in panels:
        ax, key, mine = panel.ax, panel.key, panel.rows
        for line, points, style in panel.lines:
            style = {**style, "ls": "-"}
            with_spread(ax, points, "n_train", "test", shape.line_label(line), style)
            ax.plot(column(points, "n_train"), column(points, "train"), color=style["color"], ls=":", lw=1.2)
            if any(p["theory"] is not None for p in points):
                ax.plot(column(points, "n_train"), column(points, "theory"), color=style["color"], ls="--", lw=1)
                theory = True
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels(rows, "n_train"), [label(n) for n in levels(rows, "n_train")])
        ax.minorticks_off()
        _scale(ax, metric, column(mine, "test"))
        ax.set_xlabel("n_train")
        ax.set_ylabel(f"final {metric}")
        ax.set_title(shape.panel_title(key), fontsize=9)
    extra = [key_line("-", "test", "o"), key_line(":", "train")] + [key_line("--", "theory (test)")] * theory
    shared_legend(fig, extra)
    fig.suptitle(f"Test {metric} against training set size")
    note(fig, mean_note(rows, "bars: min–max"), shape.held_note())
    return fig


_RUN_METRIC = "coalesce(r.test_error, r.test_loss)"
_TRAIN_METRIC = "coalesce(r.train_error, r.train_loss)"

SPINE_FIGURES = (
    Figure("test-by-depth-width", "Test error or loss over depth × width",
           f"SELECT {{fields}}r.depth, r.width, count(*) AS runs, avg({_RUN_METRIC}) AS value, "
           f"min({_RUN_METRIC}) AS low, max({_RUN_METRIC}) AS high, bool_or(r.test_error IS NOT NULL) AS is_error "
           "FROM runs r WHERE r.sweep = {sweep} AND r.status = 'ok' GROUP BY ALL", heatmaps,
           "Final test error (test loss for regression) per depth and width, the mean over seeds (± half their "
           "min–max range), one panel per value of every other swept field."),
    Figure("curves", "Training and test curves",
           "SELECT c.step, {fields}count(*) AS runs, avg(c.train_loss) AS train_loss, avg(c.test_loss) AS test_loss, "
           "min(c.test_loss) AS test_loss_low, max(c.test_loss) AS test_loss_high, "
           "avg(c.train_error) AS train_error, avg(c.test_error) AS test_error, "
           "min(c.test_error) AS test_error_low, max(c.test_error) AS test_error_high, "
           "avg(c.theory_test_loss) AS theory FROM curves c JOIN runs r USING (sweep, run_id) "
           "WHERE c.sweep = {sweep} GROUP BY ALL ORDER BY ALL", curves,
           "Train (dotted) and test (solid, shaded: min–max over seeds) loss, and error rate for classification, "
           "mean over seeds; one colour per value of label noise (else training set size, else the first swept "
           "field), one panel per value of every other swept field; dashed: the closed-form test loss where a "
           "theory covers the runs."),
    Figure("gap-by-label-noise", "Generalization gap against label noise",
           "SELECT {fields}r.label_noise, r.depth, r.width, count(*) AS runs, avg(r.gen_gap) AS gap, "
           "min(r.gen_gap) AS low, max(r.gen_gap) AS high, bool_or(r.test_error IS NOT NULL) AS is_error "
           "FROM runs r WHERE r.sweep = {sweep} AND r.status = 'ok' GROUP BY ALL", gap_against_noise,
           "Final test minus train error (loss for regression) against label noise, mean over seeds with "
           "min–max bars, one line per depth and width, one panel per value of every other swept field; drawn "
           "when label noise is swept."),
    Figure("test-by-n-train", "Test error against training set size",
           f"SELECT {{fields}}r.n_train, count(*) AS runs, avg({_RUN_METRIC}) AS test, min({_RUN_METRIC}) AS low, "
           f"max({_RUN_METRIC}) AS high, avg({_TRAIN_METRIC}) AS train, avg(c.theory_test_loss) AS theory, "
           "bool_or(r.test_error IS NOT NULL) AS is_error FROM runs r LEFT JOIN curves c ON c.sweep = r.sweep "
           "AND c.run_id = r.run_id AND c.step = r.steps WHERE r.sweep = {sweep} AND r.status = 'ok' GROUP BY ALL",
           against_n_train,
           "Final test error (loss for regression; solid, min–max bars over seeds) and train error (dotted) "
           "against n_train: sample-wise double descent shows as a peak near the interpolation threshold "
           "(Nakkiran et al. 2019). Dashed: the closed-form test loss at the last step where a theory covers "
           "the runs. Drawn when data.n_train is swept."),
)

"""The canonical figures of a sweep, each drawn from the rows of one SQL query.

A ``Figure`` holds its query (with ``{sweep}`` for the sweep's name, quoted) and a function
that draws the query's rows onto a matplotlib figure. ``draw`` returns None when the rows
do not make the picture (nothing measured, or nothing varies), so a report shows only the
figures a sweep can fill. This module holds the figures of the spine (every sweep's runs
and curves); each measure and experiment declares its own beside its tables, and
``sweeps.tables.FIGURES`` lists them all. Matplotlib loads on the first drawing
(``pyplot``), headless (Agg), so declaring figures costs nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Rows = list[dict]
Draw = Callable[[Rows, str], Any]  # -> a matplotlib Figure, or None


@dataclass(frozen=True)
class Figure:
    name: str      # file name stem
    title: str
    sql: str       # ``{sweep}`` is the quoted sweep name; ``{color}`` the swept column (curves)
    draw: Draw
    caption: str


@functools.cache
def pyplot():
    """``matplotlib.pyplot``, drawing headless (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def distinct(rows: Rows, key: str) -> list:
    return sorted({r[key] for r in rows if r[key] is not None}, key=lambda v: (str(type(v)), v))


def label(value) -> str:
    return "—" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def heatmaps(rows: Rows, _: str):
    """Mean test error (or loss) over depth x width, one panel per label noise."""
    plt = pyplot()
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
        ax.set_xticks(range(len(widths)), [label(w) for w in widths])
        ax.set_yticks(range(len(depths)), [str(d) for d in depths])
        ax.set_xlabel("width")
        ax.set_ylabel("depth")
        ax.set_title(f"label noise {label(noise)}")
    fig.colorbar(image, ax=axes[0].tolist(), label=metric)
    return fig


def curves(rows: Rows, color: str):
    """Train and test curves, one line per value of the swept field, theory dashed."""
    if not rows:
        return None
    plt = pyplot()
    values = distinct(rows, "value") or [None]
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=False, layout="constrained")
    for k, value in enumerate(values):
        mine = [r for r in rows if r["value"] == value]
        steps = [r["step"] for r in mine]
        shade = cmap(k / max(1, len(values) - 1))
        axes[0].plot(steps, [r["train"] for r in mine], color=shade, label=f"{color} = {label(value)}")
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


SPINE_FIGURES = (
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
)

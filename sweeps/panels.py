"""What every report figure shares: how a sweep's swept fields become lines, dashes and
panels (``layout``), the grid of panels, one legend for all of them, log axes on one
range, and the notes under the panels that say what was averaged or held fixed.

A figure never averages over a swept field silently: every swept field it has no axis for
colours or dashes its lines, or gets one panel per value; where that would make more than
``MAX_PANELS`` panels, the fields left over are held at one value (label noise and training
set size last) and the figure says so under its panels. Seeds (``seed``, ``data_seed``) are
averaged, and the figure says over how many, with the min–max spread drawn. Matplotlib
loads on the first drawing (``pyplot``), headless (Agg).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Rows = list[dict]
Swept = Sequence[str]  # the ``runs`` columns of the sweep's grid, in grid order

SEED_COLUMNS = frozenset({"seed", "data_seed"})  # averaged over, never a facet
MAX_PANELS = 8     # panels per figure (per metric), beyond which fields are held fixed
PER_ROW = 4        # panels per row of a figure, at most
MAX_WIDTH = 13.5   # inches: a report's page shows figures about 1100 pixels wide, 110 dpi
DASHES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
DECADES = 3        # of a log loss axis shown below the lowest test loss
# The fields whose effect the spine's sweeps usually ask about: the curves' colour, and the
# last fields a figure holds fixed.
QUESTION_FIELDS = ("label_noise", "n_train")


@functools.cache
def pyplot():
    """``matplotlib.pyplot``, drawing headless (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def distinct(rows: Rows, key: str) -> list:
    return sorted({r[key] for r in rows if r[key] is not None}, key=lambda v: (str(type(v)), v))


def levels(rows: Rows, key: str) -> list:
    """The values of ``key`` in ``rows``, NULL (if any) first."""
    present = {r.get(key) for r in rows}
    return [None] * (None in present) + sorted(present - {None}, key=lambda v: (str(type(v)), v))


def label(value) -> str:
    return "—" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def field_name(column: str) -> str:
    """A ``runs`` column as a figure names it: ``label_noise`` -> ``label noise``."""
    return column if column.startswith("n_") else column.replace("_", " ")


def setting(columns: Sequence[str], values: Sequence) -> str:
    return ", ".join(f"{field_name(c)} {label(v)}" for c, v in zip(columns, values))


def matching(rows: Rows, columns: Sequence[str], values: Sequence) -> Rows:
    return [r for r in rows if all(r.get(c) == v for c, v in zip(columns, values))]


def number(value) -> float:
    return math.nan if value is None else float(value)


def column(rows: Rows, key: str) -> np.ndarray:
    return np.array([number(r.get(key)) for r in rows], dtype=float)


# ---------------------------------------------------------------------------------------
# Layout: where every swept field goes
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Where a figure puts the swept fields it has no axis for: ``lines`` colour (the first)
    and dash or mark (the second) its lines, ``panels`` get one panel per combination of
    values, ``held`` are held at one value to keep the panel count bounded."""
    lines: tuple[str, ...]
    panels: tuple[str, ...]
    held: tuple[tuple[str, Any, int], ...]   # (column, the value kept, how many it had)

    def keep(self, rows: Rows) -> Rows:
        """The rows at the held values."""
        return matching(rows, [h[0] for h in self.held], [h[1] for h in self.held])

    def panel_keys(self, rows: Rows) -> list[tuple]:
        return _combinations(rows, self.panels)

    def line_keys(self, rows: Rows) -> list[tuple]:
        return _combinations(rows, self.lines)

    def panel_title(self, key: tuple) -> str:
        return setting(self.panels, key)

    def line_label(self, key: tuple) -> str:
        return setting(self.lines, key) or "all runs"

    def styles(self, rows: Rows) -> dict[tuple, dict]:
        """Line key -> matplotlib keywords: colour by the first line field, dashes and
        markers by the second."""
        first = levels(rows, self.lines[0]) if self.lines else [None]
        second = levels(rows, self.lines[1]) if len(self.lines) > 1 else [None]
        colour = _colours(first)
        styles = {}
        for key in self.line_keys(rows):
            i = first.index(key[0]) if self.lines else 0
            j = second.index(key[1]) if len(self.lines) > 1 else 0
            styles[key] = {"color": colour(i), "ls": DASHES[j % len(DASHES)], "marker": MARKERS[j % len(MARKERS)]}
        return styles

    def held_note(self) -> str:
        return "; ".join(f"{field_name(c)} held at {label(v)} (of {n} values)" for c, v, n in self.held)


def _colours(values: list) -> Callable[[int], Any]:
    """The i-th value's colour: ordered (viridis, its pale yellow end left out) for numbers,
    distinct (tab10) otherwise."""
    plt = pyplot()
    if all(isinstance(v, (int, float)) for v in values if v is not None):
        return lambda i: plt.get_cmap("viridis")(0.85 * i / max(1, len(values) - 1))
    return lambda i: plt.get_cmap("tab10")(i % 10)


def _combinations(rows: Rows, columns: Sequence[str]) -> list[tuple]:
    present = {tuple(r.get(c) for c in columns) for r in rows}
    return [key for key in itertools.product(*(levels(rows, c) for c in columns)) if key in present]


def varied(rows: Rows, swept: Swept, shown: Sequence[str] = ()) -> list[str]:
    """The swept columns, seeds and ``shown`` aside, that take more than one value in ``rows``."""
    return [c for c in swept if c not in SEED_COLUMNS and c not in shown and rows and c in rows[0]
            and len(levels(rows, c)) > 1]


def layout(rows: Rows, swept: Swept, shown: Sequence[str] = (), lines: Sequence[str] | None = None,
           line_fields: int = 1, max_panels: int = MAX_PANELS) -> Layout:
    """Place every swept field that varies in ``rows`` and is not ``shown`` on an axis.

    ``lines``: the fields the figure would rather draw as lines, in order of preference (at
    most ``line_fields`` of them are), or None for a figure without lines; when none of them
    varies, the first field left over is drawn as lines. Every other field gets panels
    (``QUESTION_FIELDS`` first, then in grid order) while the combinations of their values
    present stay within ``max_panels``; the rest are held at one value (the first not NULL).
    """
    free = sorted(varied(rows, swept, shown), key=lambda c: c not in QUESTION_FIELDS)  # stable: grid order
    chosen = () if lines is None else tuple(c for c in lines if c in free)[:line_fields]
    if lines is not None and not chosen and free:
        chosen = (free[0],)
    panels, held = [], []
    for c in free:
        if c in chosen:
            continue
        if len(_combinations(rows, [*panels, c])) <= max_panels:  # combinations present: depth 1 has no width
            panels.append(c)
        else:
            values = levels(rows, c)
            held.append((c, next((v for v in values if v is not None), values[0]), len(values)))
    return Layout(chosen, tuple(panels), tuple(held))


def panel_grid(panels: int, metrics: int = 1, size: tuple[float, float] = (3.4, 2.8), legend: bool = True):
    """A figure of ``metrics`` blocks of rows of ``panels`` panels each (``PER_ROW`` to a
    row, fewer where wider than ``MAX_WIDTH``), room on the right for a shared legend;
    returns it and its axes[metric][panel]."""
    plt = pyplot()
    margin = 1.8 if legend else 0.4
    fit = max(1, int((MAX_WIDTH - margin) / size[0]))
    rows_each = math.ceil(max(1, panels) / min(PER_ROW, fit))
    per_row = math.ceil(max(1, panels) / rows_each)  # balanced: 4 panels in 2 x 2, not 3 + 1
    width = max(6.5, size[0] * per_row + margin)  # at least room for the suptitle
    fig, grid = plt.subplots(metrics * rows_each, per_row, squeeze=False, layout="constrained",
                             figsize=(width, size[1] * metrics * rows_each + 0.7))
    axes = [[grid[m * rows_each + i // per_row][i % per_row] for i in range(panels)] for m in range(metrics)]
    for extra in range(panels, rows_each * per_row):
        for m in range(metrics):
            grid[m * rows_each + extra // per_row][extra % per_row].set_visible(False)
    return fig, axes


def shared_legend(fig, extra: Sequence = ()) -> None:
    """One legend for every panel, outside them on the right: the labelled artists of all
    axes (each label once) and ``extra`` handles (e.g. what solid and dotted mean)."""
    handles, labels = {}, []
    for ax in fig.axes:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            if text not in handles:
                handles[text] = handle
                labels.append(text)
    pairs = [(handles[t], t) for t in labels] + [(h, h.get_label()) for h in extra]
    if pairs:
        fig.legend([p[0] for p in pairs], [p[1] for p in pairs], loc="outside right center", fontsize=8)


def key_line(style: str, text: str, marker: str | None = None):
    """A legend entry for what a line style means (not a line of the data)."""
    from matplotlib.lines import Line2D

    return Line2D([], [], color="0.3", ls=style, marker=marker, label=text)


def log_axis(ax, axis: str = "y") -> None:
    """A log scale (once the data are drawn) whose labels do not collide and do not vanish:
    on a range under ~1.5 decades, major ticks at 1, 2 and 5 (under half a decade, every
    digit) times powers of ten, labelled as plain numbers; minor ticks unlabelled."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    getattr(ax, f"set_{axis}scale")("log")
    target, (low, high) = (ax.xaxis, ax.get_xlim()) if axis == "x" else (ax.yaxis, ax.get_ylim())
    if 0 < low < high < 30 * low:
        target.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if high > 3 * low else np.arange(1.0, 10.0)))
        target.set_major_formatter(FuncFormatter(lambda v, _: _power_label(v)))
    target.set_minor_formatter(NullFormatter())


def shared_log_axes(axes: Sequence, axis: str = "y") -> None:
    """One range for every panel (so panels compare at a glance), on a log scale
    (``log_axis``) unless the data span under a factor of 3, where a log axis would show one
    tick or none and a linear one reads better."""
    def span() -> tuple[float, float]:
        limits = [ax.get_xlim() if axis == "x" else ax.get_ylim() for ax in axes]
        return min(lo for lo, _ in limits), max(hi for _, hi in limits)

    low, high = span()
    linear = 0 < low < high < 3 * low
    for ax in axes:
        if not linear:
            getattr(ax, f"set_{axis}scale")("log")  # the limits are drawn again, in log space
    low, high = span()
    for ax in axes:
        getattr(ax, f"set_{axis}lim")(low, high)
        if not linear:
            log_axis(ax, axis)


def _power_label(value: float) -> str:
    """0.02, 5, 300; 5×10⁶ beyond (as matplotlib's log axes write powers of ten)."""
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.3g}"
    exponent = math.floor(math.log10(abs(value)))
    mantissa = round(value / 10**exponent, 2)
    return f"${mantissa:g}\\times10^{{{exponent}}}$" if mantissa != 1 else f"$10^{{{exponent}}}$"


def note(fig, *parts: str) -> None:
    """What the figure averaged and held fixed, under the panels."""
    text = "; ".join(p for p in parts if p)
    if text:
        fig.supxlabel(text, fontsize=8, color="0.3")


def mean_note(rows: Rows, spread: str = "", count: str = "runs", of: str = "seeds") -> str:
    """"mean over N seeds per point (``spread``)" when the rows are means over more than
    one run (``count``: the column counting them)."""
    n = max((r.get(count) or 0 for r in rows), default=0)
    if n < 2:
        return ""
    return f"mean over {n} {of} per point" + (f" ({spread})" if spread else "")


def with_spread(ax, points: Rows, x: str, y: str, name: str, style: dict) -> None:
    """A line through the means, min–max error bars where there is a spread."""
    xs, ys = column(points, x), column(points, y)
    low, high = column(points, "low"), column(points, "high")
    below, above = np.nan_to_num(ys - low, nan=0.0).clip(0), np.nan_to_num(high - ys, nan=0.0).clip(0)
    ax.errorbar(xs, ys, yerr=[below, above] if np.any(below + above > 0) else None, label=name, capsize=2,
                ms=4, **style)


@dataclass(frozen=True)
class Panel:
    """One panel of a faceted figure: its axes, its key (values of ``Layout.panels``), its
    rows, and its lines as (line key, the line's rows, its matplotlib keywords)."""

    ax: Any
    key: tuple
    rows: Rows
    lines: list[tuple[tuple, Rows, dict]]


def facets(rows: Rows, shape: Layout, size: tuple[float, float] = (3.4, 2.8), order: str | None = None
           ) -> tuple[Any, Rows, list[Panel]]:
    """A figure of one row of panels per ``shape``: the rows at its held values, and for
    every panel the rows of each of its lines (sorted by ``order``) with their style."""
    rows = shape.keep(rows)
    keys = shape.panel_keys(rows)
    fig, (axes,) = panel_grid(len(keys), size=size)
    styles = shape.styles(rows)
    panels = []
    for ax, key in zip(axes, keys):
        mine = matching(rows, shape.panels, key)
        lines = []
        for line in shape.line_keys(mine):
            points = matching(mine, shape.lines, line)
            lines.append((line, sorted(points, key=lambda r: r[order]) if order else points, styles[line]))
        panels.append(Panel(ax, key, mine, lines))
    return fig, rows, panels

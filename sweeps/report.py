"""``theoryscope report``: one HTML page and its PNG figures for a sweep.

The figures are the canonical pictures of whatever the sweep measured (``sweeps.figures``),
each drawn from the rows of one SQL query over the views, run read-only like ``query``;
the page shows every figure with a caption and the query that produced it, so any picture
can be redrawn or questioned in SQL. The page references its PNGs by relative path and
loads nothing from the network. Files are written into a temporary folder beside the
destination and moved into place only when all of them exist.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt

from theoryscope.storage.location import ResultsLike
from theoryscope.storage.query import sql_string
from theoryscope.sweeps.catalog import recorded_sweep
from theoryscope.sweeps.records import RENAMED
from theoryscope.sweeps.spec import SweepSpec
from theoryscope.sweeps.tables import FIGURES, run_query


@dataclass(frozen=True)
class Report:
    page: Path
    figures: tuple[Path, ...]


def swept_column(spec: SweepSpec) -> str:
    """The ``runs`` column of the first swept field (the curves' colour), else ``seed``."""
    if not spec.grid:
        return "seed"
    target = spec.grid[0][0]
    if target == "seed":
        return "seed"
    section, _, name = target.partition(".")
    return RENAMED.get((section, name), name)


def build_report(results: ResultsLike, sweep: str, out: Path) -> Report:
    record = recorded_sweep(results, sweep)
    spec = record.spec()
    color = swept_column(spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        drawn = []
        for figure in FIGURES:
            sql = figure.sql.format(sweep=sql_string(sweep), color=color)
            picture = figure.draw(run_query(results, sql).to_pylist(), color)
            if picture is None:
                continue
            picture.suptitle(figure.title)
            picture.savefig(staging / f"{figure.name}.png", dpi=110)
            plt.close(picture)
            drawn.append((figure, sql))
        counts = run_query(results, f"SELECT status, count(*) AS n FROM runs WHERE sweep = {sql_string(sweep)} "
                                    "GROUP BY status ORDER BY status").to_pylist()
        (staging / "index.html").write_text(_page(sweep, spec, record.planned_runs, counts, drawn), encoding="utf-8")
        return _publish(staging, out, [f"{f.name}.png" for f, _ in drawn])
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, out: Path, pngs: list[str]) -> Report:
    out.mkdir(parents=True, exist_ok=True)
    for name in [*pngs, "index.html"]:  # the page last: it only ever references files in place
        os.replace(staging / name, out / name)
    return Report(out / "index.html", tuple(out / name for name in pngs))


def _page(sweep: str, spec: SweepSpec, planned: int, counts: list[dict], drawn: list) -> str:
    e = html.escape
    status = ", ".join(f"{c['n']} {e(str(c['status']))}" for c in counts) or "no runs finished yet"
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>theoryscope report: {e(sweep)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "img{max-width:100%}figure{margin:2.5em 0}pre{background:#f4f4f4;padding:.6em;overflow-x:auto;"
        "font-size:.85em}figcaption{color:#333}</style></head><body>",
        f"<h1>{e(sweep)}</h1>",
        f"<p>experiment <b>{e(spec.experiment.value)}</b>; {planned} planned runs: {status}.</p>",
    ]
    if not drawn:
        parts.append("<p>Nothing to draw yet: no finished runs with measurements.</p>")
    for figure, sql in drawn:
        parts += [
            f'<figure id="{figure.name}"><h2>{e(figure.title)}</h2>',
            f'<img src="{figure.name}.png" alt="{e(figure.title)}">',
            f"<figcaption>{e(figure.caption)}<pre><code>{e(sql)}</code></pre></figcaption></figure>",
        ]
    parts += ["<h2>Spec</h2>", f"<pre><code>{e(spec.source)}</code></pre>", "</body></html>"]
    return "\n".join(parts) + "\n"

"""``theoryscope report``: one HTML page and its PNG figures for a sweep.

The figures are the canonical pictures of whatever the sweep measured (``sweeps.figures``),
each drawn from the rows of one SQL query over the views, run read-only like ``query``;
the page shows every figure with a caption and the query that produced it, so any picture
can be redrawn or questioned in SQL. Every figure is given the sweep's swept ``runs``
columns (``swept_columns``), so that it can facet by those it has no axis for, and is
headed by its own suptitle when it sets one (one that names what its rows are, e.g. test
loss for regression). The page references its PNGs by relative path and loads nothing
from the network; its queries wrap, so a screenshot or a print shows them whole. Files are
written into a temporary folder beside the destination and moved into place only when all
of them exist.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from theoryscope.storage.location import ResultsLike
from theoryscope.storage.query import sql_string
from theoryscope.storage.schemas import RUNS
from theoryscope.sweeps.catalog import recorded_sweep
from theoryscope.sweeps.panels import pyplot
from theoryscope.sweeps.records import runs_column
from theoryscope.sweeps.spec import SweepSpec
from theoryscope.sweeps.tables import FIGURES, run_query


@dataclass(frozen=True)
class Report:
    page: Path
    figures: tuple[Path, ...]


def swept_columns(spec: SweepSpec) -> tuple[str, ...]:
    """The ``runs`` column of every swept field, in grid order (``seed`` for the run's seed),
    those without a column (none today) left out: what the figures place on axes, colours
    and panels."""
    return tuple(c for c in (runs_column(target) for target, _ in spec.grid) if c in RUNS.names)


def build_report(results: ResultsLike, sweep: str, out: Path) -> Report:
    record = recorded_sweep(results, sweep)
    spec = record.spec()
    swept = swept_columns(spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        drawn = []
        for figure in FIGURES:
            sql = figure.query(sql_string(sweep), swept)
            picture = figure.draw(run_query(results, sql).to_pylist(), swept)
            if picture is None:
                continue
            if not picture.get_suptitle():  # a drawing may title itself by what its rows are
                picture.suptitle(figure.title)
            title = picture.get_suptitle()
            picture.savefig(staging / f"{figure.name}.png", dpi=110)
            pyplot().close(picture)
            drawn.append((figure, title, sql))
        counts = run_query(results, f"SELECT status, count(*) AS n FROM runs WHERE sweep = {sql_string(sweep)} "
                                    "GROUP BY status ORDER BY status").to_pylist()
        (staging / "index.html").write_text(_page(sweep, spec, record.planned_runs, counts, drawn), encoding="utf-8")
        return _publish(staging, out, [f"{f.name}.png" for f, _, _ in drawn])
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
        # Queries wrap, so a screenshot or a print shows all of them.
        "img{max-width:100%}figure{margin:2.5em 0}pre{background:#f4f4f4;padding:.6em;white-space:pre-wrap;"
        "word-break:break-word;overflow-wrap:anywhere;font-size:.85em}figcaption{color:#333}</style></head><body>",
        f"<h1>{e(sweep)}</h1>",
        f"<p>experiment <b>{e(spec.experiment.value)}</b>; {planned} planned runs: {status}.</p>",
    ]
    if not drawn:
        parts.append("<p>Nothing to draw yet: no finished runs with measurements.</p>")
    for figure, title, sql in drawn:
        parts += [
            f'<figure id="{figure.name}"><h2>{e(title)}</h2>',
            f'<img src="{figure.name}.png" alt="{e(title)}">',
            f"<figcaption>{e(figure.caption)}<pre><code>{e(sql)}</code></pre></figcaption></figure>",
        ]
    parts += ["<h2>Spec</h2>", f"<pre><code>{e(spec.source)}</code></pre>", "</body></html>"]
    return "\n".join(parts) + "\n"

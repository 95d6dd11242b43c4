"""Rich renderables for the terminal: plans, launch summaries, status, query results,
rankings."""

from __future__ import annotations

import io
import math

import pyarrow as pa
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from theoryscope.storage.location import ResultsLike
from theoryscope.sweeps.analyze import Analysis
from theoryscope.sweeps.launch import LaunchSummary
from theoryscope.sweeps.plan import Plan, estimate_cost
from theoryscope.sweeps.records import config_columns, runs_column
from theoryscope.sweeps.status import SweepStatus
from theoryscope.sweeps.weights import Kept, plan_weights

SHOWN = 20


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun in its number: 1 family, 2 families."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def plan_view(plan: Plan) -> RenderableType:
    """The runs (swept values), the families and the resources a plan would use."""
    spec = plan.spec
    axes = ", ".join(f"{k} ({len(v)})" for k, v in spec.grid) or "none"
    costs = [estimate_cost(f) for f in plan.families]
    todo = sum(f.size for f in plan.families)
    head = Text(f"sweep {plan.sweep} ({spec.experiment.value}): {counted(len(plan.runs), 'run')} in "
                f"{counted(len(plan.families), 'family', 'families')}; grid: {axes}")
    if plan.grid_points > len(plan.runs):
        head.append(f"\n{plan.grid_points} grid points make {len(plan.runs)} distinct runs: the others differ "
                    "only in fields that do not apply to them (e.g. width at depth 1)")
    if todo < len(plan.runs):
        head.append(f"\n{len(plan.runs) - todo} runs are already done; {todo} to run")
    for note in plan.notes:
        head.append(f"\nnote: {note}")

    runs = Table(title="runs", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    swept = [runs_column(target) for target, _ in spec.grid]
    family_of = {r.run_id: f.family_id for f in plan.families for r in f.runs}
    for header in ("run_id", *swept, "family"):
        runs.add_column(header)
    for run in plan.runs[:SHOWN]:
        values = config_columns(run)
        runs.add_row(run.run_id, *(_cell(values[c]) for c in swept), family_of.get(run.run_id, "done")[:8])

    families = Table(title="families", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("family", "runs", "data", "net", "training", "params", "GFLOP", "memory"):
        families.add_column(header, justify="right" if header in ("runs", "params", "GFLOP", "memory") else "left")
    for family, cost in list(zip(plan.families, costs))[:SHOWN]:
        run = family.exemplar
        net = f"{run.model.kind.value} depth {run.model.depth}" + (
            f" width {run.model.width}" if run.model.depth > 1 else "")
        batch = f"batch {run.train.batch_size}" if run.train.batch_size else "full batch"
        training = f"{run.train.optimizer.value}, {run.train.steps} steps, {batch}"
        families.add_row(family.family_id[:8], str(family.size), run.data.kind.value, net, training,
                         f"{cost.params_per_member:,}", f"{cost.flops / 1e9:.1f}", _bytes(cost.bytes))
    r = spec.resources
    tail = Text(f"resources per family: {r.num_cpus:g} CPU, {r.num_gpus:g} GPU, max {r.max_family_size} runs, "
                f"{r.max_retries} retries; total ≈ {sum(c.flops for c in costs) / 1e9:.1f} GFLOP, "
                f"largest family ≈ {_bytes(max((c.bytes for c in costs), default=0))}")
    parts: list[RenderableType] = [head, runs]
    if len(plan.runs) > SHOWN:
        parts.append(Text(f"... and {len(plan.runs) - SHOWN} more runs"))
    parts.append(families)
    if len(plan.families) > SHOWN:
        parts.append(Text(f"... and {len(plan.families) - SHOWN} more families"))
    if plan.capacity is not None:
        c = plan.capacity
        tail.append(f"\npacked for this machine's local Ray: {c.slots} families at once, up to "
                    f"{_bytes(c.family_bytes)} each; launch packs for the machines it runs on")
    tail.append(f"\n{weights_line(plan)}")
    parts.append(tail)
    return Group(*parts)


def weights_line(plan: Plan) -> str:
    """What of the trained nets the sweep keeps ([store] weights) and the space it takes."""
    decided = plan_weights(plan.spec.store, plan.spec.measure, plan.runs)
    if decided.kept is Kept.NONE:
        return (f"weights: not kept ({decided.reason}); the final ones would take ≈ {_bytes(decided.final_bytes)}, "
                f"with the snapshots ≈ {_bytes(decided.all_bytes)}")
    return f"weights: {decided.kept.value} kept, ≈ {_bytes(decided.bytes)} ({decided.reason})"


def summary_view(summary: LaunchSummary) -> Table:
    table = Table(title=f"sweep {summary.sweep}", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    ran = summary.total("n_runs")
    rows = [
        ("planned runs", summary.planned), ("already done before", summary.already_done),
        ("ran now", ran), ("ok", summary.total("n_ok")), ("diverged", summary.total("n_diverged")),
        ("failed", summary.total("n_failed")), ("families", summary.families),
        ("wall time", f"{summary.wall_seconds:.1f} s"),
        ("runs/s", f"{ran / summary.wall_seconds:.1f}" if summary.wall_seconds > 0 else "-"),
        ("results", str(summary.results)),
    ]
    for what, value in rows:
        table.add_row(what, str(value))
    return table


def status_view(results: ResultsLike, statuses: list[SweepStatus]) -> Table:
    table = Table(title=f"sweeps in {results}", title_justify="left")
    for column in ("sweep", "planned", "done", "ok", "diverged", "failed", "remaining", "last progress"):
        table.add_column(column, justify="left" if column in ("sweep", "last progress") else "right")
    for s in statuses:
        last = s.last_progress.strftime("%Y-%m-%d %H:%M:%S %Z") if s.last_progress else "-"
        remaining = Text(str(s.remaining), style="bold yellow" if s.remaining else "")
        failed = Text(str(s.failed), style="bold red" if s.failed else "")
        table.add_row(s.sweep, str(s.planned), str(s.done), str(s.ok), str(s.diverged), failed, remaining, last)
    return table


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def arrow_view(table: pa.Table) -> Table:
    view = Table(show_edge=False)
    for name in table.column_names:
        view.add_column(name, overflow="fold")
    for row in table.to_pylist():
        view.add_row(*(_cell(v) for v in row.values()))
    return view


def query_view(table: pa.Table, width: int) -> RenderableType:
    """A query's rows for a terminal ``width`` columns wide: a table when its columns fit
    side by side, else one record per block, a line per column (duckdb's ``.mode line``)."""
    cells = [[_cell(v) for v in column.to_pylist()] for column in table.columns]
    natural = sum(max([len(name), *map(len, column)]) + 3 for name, column in zip(table.column_names, cells))
    if natural <= width or table.num_columns <= 1:
        return arrow_view(table)
    return records_view(table, cells)


def records_view(table: pa.Table, cells: list[list[str]]) -> Text:
    """Every row as a block of ``column = value`` lines, names right-aligned."""
    names = table.column_names
    pad = max(map(len, names))
    text = Text(f"{table.num_rows} rows of {len(names)} columns, one record per block "
                f"(too wide for a table; --format csv or json for other tools)\n", style="dim")
    for i in range(table.num_rows):
        text.append("\n")
        for name, column in zip(names, cells):
            text.append(f"{name:>{pad}} = ", style="bold")
            text.append(f"{column[i]}\n")
    return text


def as_text(renderable: RenderableType, width: int = 200) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def ranked_view(analysis: Analysis) -> Table:
    """The ``rankings`` rows for the terminal, best tau first (undefined last)."""
    def shown(v):
        return "—" if v is None else f"{v:.2f}"

    view = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
                 caption="τ over all pairs of runs, its 95 % bootstrap interval, Ψ granulated, K conditional "
                         "mutual information (Jiang et al. 2020); sign error over envs environments, mean and "
                         "worst (Dziugaite et al. 2020)")
    view.add_column("measure", no_wrap=True)
    for name, width in (("runs", 4), ("τ", 5), ("τ 95%", 12), ("Ψ", 5), ("K", 4), ("envs", 4), ("sign", 4),
                        ("worst", 5)):
        view.add_column(name, justify="right", no_wrap=True, min_width=width)
    ranked = sorted(analysis.rankings.to_pylist(), reverse=True,
                    key=lambda r: -math.inf if r["kendall_tau"] is None else r["kendall_tau"])
    for r in ranked:
        interval = "—" if r["tau_low"] is None else f"{r['tau_low']:.2f}..{r['tau_high']:.2f}"
        view.add_row(r["measure"], str(r["n_runs"]), shown(r["kendall_tau"]), interval, shown(r["granulated_psi"]),
                     shown(r["cmi"]), str(r["environments"]), shown(r["sign_error_mean"]), shown(r["sign_error_max"]))
    return view

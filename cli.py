"""The ``theoryscope`` command: parse, call the library, print."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from core.errors import TheoryscopeError
from storage.export import to_csv, to_json, write_text_atomic
from storage.query import describe_views, run_query
from sweeps.dispatch import BackendName, make_backend
from sweeps.launch import LaunchSummary, launch as launch_plan, prepare
from sweeps.load import check_name, load_spec
from sweeps.plan import Plan, estimate_cost, plan_sweep
from sweeps.progress import SweepProgress
from sweeps.spec import Choice
from sweeps.status import sweep_status

app = typer.Typer(
    name="theoryscope", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Train families of nets across a grid on Ray, measure them, and query the results with SQL.",
)
out = Console()
err = Console(stderr=True)


class Format(Choice):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


Results = Annotated[Path, typer.Option(
    "--results", envvar="THEORYSCOPE_RESULTS", help="Results directory (env THEORYSCOPE_RESULTS).")]
SpecPath = Annotated[Path, typer.Argument(help="The sweep spec (TOML).", show_default=False)]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Our errors become one line on stderr and exit code 1; bugs keep their traceback."""
    try:
        yield
    except TheoryscopeError as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


@app.command()
def plan(spec: SpecPath) -> None:
    """Dry run: the runs, families and resources a spec would use. Runs nothing."""
    with user_errors():
        the_plan = plan_sweep(load_spec(spec))
    print_plan(the_plan)


@app.command()
def launch(
    spec: SpecPath,
    results: Results = Path("results"),
    address: Annotated[Optional[str], typer.Option(
        "--address", envvar="RAY_ADDRESS", help="Join this Ray cluster instead of starting a local Ray.")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Sweep name (default: the spec's name).")] = None,
    backend: Annotated[BackendName, typer.Option(
        "--backend", help="ray: one Ray task per family; local: in this process.")] = BackendName.RAY,
) -> None:
    """Run a sweep: every family as a Ray task, results into Parquet. Runs already in the
    results are not run again."""
    with user_errors():
        sweep_spec = load_spec(spec)
        if name is not None:
            check_name(name, "--name")
        the_plan = prepare(sweep_spec, results, name)
        runner = make_backend(backend, address)
        total = sum(f.size for f in the_plan.families)
        out.print(f"sweep [bold]{the_plan.sweep}[/bold]: {len(the_plan.runs)} runs planned, "
                  f"{len(the_plan.runs) - total} already done, {total} to run in "
                  f"{len(the_plan.families)} families ({backend.value} backend)", highlight=False)
        if not the_plan.families:
            out.print("nothing to run: every planned run is in the results already")
        else:
            runner.start(sweep_spec.resources)
        with SweepProgress(the_plan, out) as progress:
            summary = launch_plan(the_plan, results, runner, on_done=progress.advance)
    print_summary(summary)
    if summary.total("n_failed"):
        err.print(f"[red]error:[/red] {summary.total('n_failed')} runs failed; "
                  f"see: theoryscope query \"SELECT run_id, error FROM runs WHERE status = 'failed'\"")
        raise typer.Exit(1)


@app.command()
def status(
    name: Annotated[Optional[str], typer.Argument(help="One sweep (default: all).", show_default=False)] = None,
    results: Results = Path("results"),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Per sweep: planned, done, diverged, failed and remaining runs."""
    with user_errors():
        statuses = sweep_status(results, name)
    if as_json:
        sys.stdout.write(json.dumps([s.to_json() for s in statuses], indent=2) + "\n")
        return
    if not statuses:
        out.print(f"no sweeps in {results}")
        return
    table = Table(title=f"sweeps in {results}")
    for column in ("sweep", "planned", "done", "ok", "diverged", "failed", "remaining", "last progress"):
        table.add_column(column, justify="left" if column in ("sweep", "last progress") else "right")
    for s in statuses:
        last = s.last_progress.strftime("%Y-%m-%d %H:%M:%S %Z") if s.last_progress else "-"
        table.add_row(s.sweep, *map(str, (s.planned, s.done, s.ok, s.diverged, s.failed, s.remaining)), last)
    out.print(table)


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="SQL over the views runs, curves, sweeps.", show_default=False)],
    results: Results = Path("results"),
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.TABLE,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Run SQL (DuckDB) over the results."""
    with user_errors():
        table = run_query(results, sql)
        if fmt is Format.TABLE:
            if out_file is not None:
                write_text_atomic(render_text_table(table), out_file)
            else:
                out.print(rich_table(table))
            return
        text = to_csv(table) if fmt is Format.CSV else to_json(table)
        if out_file is not None:
            write_text_atomic(text, out_file)
        else:
            sys.stdout.write(text)


@app.command()
def tables(results: Results = Path("results")) -> None:
    """The views you can query and their columns."""
    with user_errors():
        views = describe_views(results)
    for view, columns in views.items():
        table = Table(title=view, title_justify="left")
        table.add_column("column")
        table.add_column("type")
        for column, kind in columns:
            table.add_row(column, kind)
        out.print(table)


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def rich_table(table) -> Table:
    view = Table(show_edge=False)
    for name in table.column_names:
        view.add_column(name, overflow="fold")
    for row in table.to_pylist():
        view.add_row(*(_cell(v) for v in row.values()))
    return view


def render_text_table(table) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(rich_table(table))
    return console.export_text()


def print_plan(the_plan: Plan) -> None:
    spec = the_plan.spec
    axes = ", ".join(f"{k} ({len(v)})" for k, v in spec.grid) or "none"
    costs = [estimate_cost(f) for f in the_plan.families]
    out.print(f"sweep [bold]{the_plan.sweep}[/bold] ({spec.experiment.value}): "
              f"{len(the_plan.runs)} runs in {len(the_plan.families)} families; grid: {axes}", highlight=False)
    table = Table(title="families", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("family", "runs", "data", "net", "training", "params", "GFLOP", "memory"):
        table.add_column(header, justify="right" if header in ("runs", "params", "GFLOP", "memory") else "left")
    shown = 20
    for family, cost in list(zip(the_plan.families, costs))[:shown]:
        run = family.exemplar
        net = f"{run.model.kind.value} depth {run.model.depth}" + (
            f" width {run.model.width}" if run.model.depth > 1 else "")
        batch = f"batch {run.train.batch_size}" if run.train.batch_size else "full batch"
        training = f"{run.train.optimizer.value}, {run.train.steps} steps, {batch}"
        table.add_row(family.family_id[:8], str(family.size), run.data.kind.value, net, training,
                      f"{cost.params_per_member:,}", f"{cost.flops / 1e9:.1f}", _bytes(cost.bytes))
    out.print(table)
    if len(the_plan.families) > shown:
        out.print(f"... and {len(the_plan.families) - shown} more families")
    r = spec.resources
    out.print(f"resources per family: {r.num_cpus:g} CPU, {r.num_gpus:g} GPU, max {r.max_family_size} runs, "
              f"{r.max_retries} retries; total ≈ {sum(c.flops for c in costs) / 1e9:.1f} GFLOP, "
              f"largest family ≈ {_bytes(max((c.bytes for c in costs), default=0))}", highlight=False)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def print_summary(summary: LaunchSummary) -> None:
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
    out.print(table)
    for outcome in summary.outcomes:
        if outcome.error:
            err.print(f"family {outcome.family_id} failed: {outcome.error}", highlight=False)


if __name__ == "__main__":
    app()

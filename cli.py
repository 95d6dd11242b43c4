"""The ``theoryscope`` command: parse, call the library, print.

Each command imports what it calls when it runs, so that ``--help`` and ``--version``
start without DuckDB, Arrow, torch or Ray, and the reading commands without torch
(``tests/test_cli.py``; ``python -m bench.startup`` measures it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from theoryscope.core.config import Choice
from theoryscope.core.errors import DoesNotFit, TheoryscopeError
from theoryscope.storage.limits import DEFAULT_TIMEOUT
from theoryscope.sweeps.events import BackendName, LaunchEvents

if TYPE_CHECKING:
    from theoryscope.sweeps.execute import FamilyOutcome
    from theoryscope.sweeps.launch import LaunchSummary
    from theoryscope.sweeps.plan import Plan
    from theoryscope.sweeps.progress import SweepProgress


def untyped_flags(params: list) -> list:
    """Flags take no value: --help shows no ``<bool>`` type beside them."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    def get_params(self, ctx):
        return untyped_flags(super().get_params(ctx))


class Group(TyperGroup):
    def get_params(self, ctx):
        return untyped_flags(super().get_params(ctx))


app = typer.Typer(
    name="theoryscope", cls=Group, add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Train families of nets across a grid on Ray, measure them, and query the results with SQL.\n\n"
         "Example: theoryscope launch examples/quickstart.toml && theoryscope query \"SELECT depth, "
         "avg(test_loss) FROM runs GROUP BY depth\"",
    epilog="Exit codes: 0 done; 1 bad input, refused SQL, missing sweep or failed runs; 2 bad command "
           "line; 130 interrupted (resumable).",
)
out = Console()
err = Console(stderr=True)

EXIT_INTERRUPTED = 130
# The views `query` reads, for its --help (sweeps.tables builds them; a test keeps the two
# lists equal, so --help need not load what builds them).
VIEW_NAMES = ("sweeps", "runs", "curves", "weights", "layers", "bounds", "attenuation", "valleys", "complexity",
              "rankings", "rankings_axes", "rankings_environments", "invertibility", "acceleration", "modes",
              "overtraining")
TEXT_WIDTH = 200  # columns of a table written to a file


class Format(Choice):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    PARQUET = "parquet"


Results = Annotated[str, typer.Option(
    "--results", envvar="THEORYSCOPE_RESULTS",
    help="Results directory, or a pyarrow filesystem URI such as s3://bucket/dir, gs://bucket/dir or "
         "file:///dir (env THEORYSCOPE_RESULTS).")]
SpecPath = Annotated[Path, typer.Argument(help="The sweep spec (TOML).", show_default=False)]
Address = Annotated[Optional[str], typer.Option(
    "--address", help="Join this Ray cluster (default: $RAY_ADDRESS, else start a local Ray).")]
BackendChoice = Annotated[BackendName, typer.Option(
    "--backend", help="ray: one Ray task per family; local: in this process, one family at a time.")]
RetryFailed = Annotated[bool, typer.Option("--retry-failed", help="Run failed runs again.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary; errors only.")]
AsJson = Annotated[bool, typer.Option("--json", help="No progress; one JSON summary on stdout at the end.")]


def show_version(value: bool) -> None:
    if value:
        from theoryscope.sweeps.version import code_version

        out.print(code_version(), highlight=False)
        raise typer.Exit()


@app.callback()
def options(version: Annotated[bool, typer.Option(
        "--version", callback=show_version, is_eager=True, help="Print the version and exit.")] = False) -> None:
    """Train families of nets across a grid on Ray, measure them, and query the results with SQL."""


def say_error(message: str) -> None:
    err.print(Text.assemble(("error: ", "red"), message), soft_wrap=True)


def warn(message: str) -> None:
    err.print(Text.assemble(("warning: ", "yellow"), message), soft_wrap=True)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Our errors become one line on stderr and exit code 1; bugs keep their traceback."""
    try:
        yield
    except TheoryscopeError as exc:
        say_error(str(exc))
        raise typer.Exit(1) from None


@contextlib.contextmanager
def ctrl_c_stops_the_sweep() -> Iterator[None]:
    """The first Ctrl-C raises KeyboardInterrupt (finished families are kept; the process
    then exits, and its running families with it); a second one ends the process at once. Every result file is published by
    an atomic rename, so neither can leave a half-written result behind."""
    presses = 0

    def on_sigint(signum: int, frame: object) -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            raise KeyboardInterrupt
        os._exit(EXIT_INTERRUPTED)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def interrupted_before_running() -> Iterator[None]:
    """Ctrl-C while a sweep is still being planned: nothing was written, exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        say_error("interrupted before anything ran; nothing was written")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def report_debris(results: str) -> None:
    from theoryscope.sweeps.tables import debris

    found = debris(results)
    if found.damaged or found.leftovers:
        warn(f"ignoring {len(found.damaged)} damaged and {len(found.leftovers)} temporary files in {results} "
             "(launch or resume removes them): " + ", ".join(map(str, (found.damaged + found.leftovers)[:5])))


@app.command(cls=Command, epilog="Example: theoryscope plan examples/quickstart.toml")
def plan(spec: SpecPath) -> None:
    """Dry run: the runs, families (packed for this machine) and resources a spec would use.
    Runs nothing."""
    from theoryscope.sweeps.capacity import local_capacity
    from theoryscope.sweeps.display import plan_view
    from theoryscope.sweeps.load import load_spec
    from theoryscope.sweeps.plan import pack_plan, planned_runs
    from theoryscope.sweeps.progress import PlanningProgress

    with user_errors():
        sweep_spec = load_spec(spec)
        with PlanningProgress(err) as planning:
            runs = planned_runs(sweep_spec, planning.advance)
        try:
            the_plan = pack_plan(sweep_spec, sweep_spec.name, runs, capacity=local_capacity(sweep_spec.resources))
        except DoesNotFit as exc:  # a cluster's nodes may be larger: plan it unpacked
            warn(f"this machine cannot run it: {exc}")
            the_plan = pack_plan(sweep_spec, sweep_spec.name, runs)
    out.print(plan_view(the_plan), highlight=False)


@app.command(cls=Command, epilog="Examples: theoryscope launch examples/quickstart.toml  ·  theoryscope launch spec.toml "
                     "--address ray://head:10001 --results /shared/results  ·  theoryscope launch spec.toml --json")
def launch(
    spec: SpecPath,
    results: Results = "results",
    address: Address = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Sweep name (default: the spec's name).")] = None,
    backend: BackendChoice = BackendName.RAY,
    force_new: Annotated[bool, typer.Option(
        "--force-new", help="If the name is taken by a different spec, launch under a new name derived from "
                            "this spec, keeping the old results apart.")] = False,
    retry_failed: RetryFailed = False,
    quiet: Quiet = False,
    as_json: AsJson = False,
) -> None:
    """Run a sweep: every family as a Ray task, results into Parquet.

    Runs already in the results are not run again, so launching the same spec again
    resumes it."""
    with user_errors(), interrupted_before_running():
        from theoryscope.sweeps.launch import run_sweep
        from theoryscope.sweeps.load import check_name, load_spec

        sweep_spec = load_spec(spec)
        if name is not None:
            check_name(name, "--name")
    events = TerminalEvents(Mode.of(quiet, as_json), name or sweep_spec.name, backend)
    in_terminal(lambda: run_sweep(sweep_spec, results, name=name, backend=backend, address=address,
                                  force_new=force_new, retry_failed=retry_failed, events=events,
                                  exits_on_interrupt=True),
                events, results, address, backend)


@app.command(cls=Command, epilog="Example: theoryscope resume quickstart --retry-failed")
def resume(
    name: Annotated[str, typer.Argument(help="The sweep to finish.", show_default=False)],
    results: Results = "results",
    address: Address = None,
    backend: BackendChoice = BackendName.RAY,
    retry_failed: RetryFailed = False,
    quiet: Quiet = False,
    as_json: AsJson = False,
) -> None:
    """Finish a sweep from its stored spec.

    Runs every planned run that is not in the results yet (and the failed ones with
    --retry-failed)."""
    with interrupted_before_running():
        from theoryscope.sweeps.launch import resume_sweep

    events = TerminalEvents(Mode.of(quiet, as_json), name, backend)
    in_terminal(lambda: resume_sweep(name, results, backend=backend, address=address, retry_failed=retry_failed,
                                     events=events, exits_on_interrupt=True), events, results, address, backend)


class Mode(Choice):
    """How much ``launch``/``resume`` print: everything, errors only, or errors and JSON."""

    NORMAL = "normal"
    QUIET = "quiet"
    JSON = "json"

    @classmethod
    def of(cls, quiet: bool, as_json: bool) -> Mode:
        return cls.JSON if as_json else cls.QUIET if quiet else cls.NORMAL


def say(message: str, silent: bool) -> None:
    if not silent:
        out.print(message, highlight=False)


class TerminalEvents(LaunchEvents):
    """A sweep on the terminal: how far planning is, what will run, then a progress bar
    of the families as they finish."""

    def __init__(self, mode: Mode, requested: str, backend: BackendName):
        self.mode, self.requested, self.backend = mode, requested, backend
        from theoryscope.sweeps.progress import PlanningProgress

        self.silent = mode is not Mode.NORMAL
        self.planning_bar = PlanningProgress(err, not self.silent)
        self.bar: SweepProgress | None = None
        self.plan: Plan | None = None  # known once families are about to run

    def planning(self, done: int, total: int) -> None:
        self.planning_bar.advance(done, total)

    def running(self, plan: Plan) -> None:
        from theoryscope.sweeps.display import counted
        from theoryscope.sweeps.progress import SweepProgress

        self.planning_bar.stop()
        self.plan = plan
        if plan.sweep != self.requested:
            say(f"the name {self.requested!r} is taken by a different spec: launching as {plan.sweep!r}",
                self.silent)
        total = sum(f.size for f in plan.families)
        if not plan.families:
            say(f"sweep {plan.sweep}: nothing to run; all {len(plan.runs)} planned runs are in the results", self.silent)
            return
        say(f"sweep {plan.sweep}: {counted(len(plan.runs), 'run')} planned, {len(plan.runs) - total} already done, "
            f"{total} to run in {counted(len(plan.families), 'family', 'families')} ({self.backend.value} backend)",
            self.silent)
        for note in plan.notes:
            if not self.silent:
                warn(note)
        self.bar = SweepProgress(plan, out, enabled=not self.silent).__enter__()

    def done(self, outcome: FamilyOutcome) -> None:
        self.bar.advance(outcome)

    def close(self) -> None:
        self.planning_bar.stop()
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def in_terminal(run: Callable[[], LaunchSummary], events: TerminalEvents, results: str, address: str | None,
                backend: BackendName) -> None:
    """Run a sweep with its progress on the terminal, then print the summary; Ctrl-C stops
    it resumably. Once the families are done, nothing can be interrupted any more: Ctrl-C
    is ignored while the summary prints."""
    from theoryscope.sweeps.dispatch import sigint_ignored

    with user_errors(), ctrl_c_stops_the_sweep():
        try:
            summary = run()
        except KeyboardInterrupt:
            events.close()
            interrupted(events.plan, results, address, backend)
        finally:
            events.close()
    with sigint_ignored():
        report_summary(summary, summary.sweep, results, address, backend, events.mode)


def interrupted(plan: Plan | None, results: str, address: str | None, backend: BackendName) -> NoReturn:
    """Say what an interrupt left and how to go on, then exit 130."""
    if plan is None:
        say_error("interrupted before anything ran; nothing was written")
        raise typer.Exit(EXIT_INTERRUPTED)
    say_error("interrupted: finished families are kept, running ones stop with this process")
    err.print(f"resume with: {resume_command(plan.sweep, results, address, backend)}", highlight=False,
              soft_wrap=True)
    if backend is BackendName.RAY:
        # Everything finished is on disk. Ray ends the tasks of a driver that is gone; its
        # own teardown can abort the process (seen with Ray 2.60), so leave without it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    raise typer.Exit(EXIT_INTERRUPTED)


def report_summary(summary: LaunchSummary, sweep: str, results: str, address: str | None,
                   backend: BackendName, mode: Mode) -> None:
    from theoryscope.sweeps.display import summary_view

    if summary.removed:
        warn(f"removed {len(summary.removed)} damaged or leftover files of earlier interruptions: "
             + ", ".join(map(str, summary.removed[:5])))
    if mode is Mode.JSON:
        sys.stdout.write(json.dumps(summary_json(summary), indent=2) + "\n")
    elif mode is Mode.NORMAL and summary.families:
        out.print(summary_view(summary), highlight=False)
    for outcome in summary.outcomes:
        if outcome.error:
            err.print(f"family {outcome.family_id} failed: {outcome.error}", highlight=False, markup=False)
    if summary.total("n_failed"):
        say_error(f"{summary.total('n_failed')} runs failed; see them with: theoryscope query "
                  f"\"SELECT run_id, error FROM runs WHERE status = 'failed'\"; run them again with: "
                  f"{resume_command(sweep, results, address, backend)} --retry-failed")
        raise typer.Exit(1)


def summary_json(summary: LaunchSummary) -> dict:
    from theoryscope.storage.location import root_text

    return {"sweep": summary.sweep, "results": root_text(summary.results), "planned": summary.planned,
            "already_done": summary.already_done, "families": summary.families,
            "ran": summary.total("n_runs"), "ok": summary.total("n_ok"), "diverged": summary.total("n_diverged"),
            "failed": summary.total("n_failed"), "wall_seconds": round(summary.wall_seconds, 3)}


def resume_command(sweep: str, results: str, address: str | None, backend: BackendName) -> str:
    from theoryscope.storage.location import results_root, root_text

    words = ["theoryscope", "resume", sweep, "--results", root_text(results_root(results))]
    if address:
        words += ["--address", address]
    if backend is not BackendName.RAY:
        words += ["--backend", backend.value]
    return shlex.join(words)


@app.command(cls=Command, epilog="Example: theoryscope submit examples/quickstart.toml --to http://HEAD:8265 "
                     "--results /shared/results --wait")
def submit(
    spec: SpecPath,
    to: Annotated[str, typer.Option("--to", help="The cluster's dashboard (Ray Jobs) address, "
                                                 "e.g. http://HEAD:8265.", show_default=False)],
    results: Annotated[str, typer.Option(
        "--results", envvar="THEORYSCOPE_RESULTS",
        help="Results as the cluster sees them: a shared path or a filesystem URI such as s3://bucket/dir "
             "(env THEORYSCOPE_RESULTS).")] = "results",
    name: Annotated[Optional[str], typer.Option("--name", help="Sweep name (default: the spec's name).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the job to end; exit 1 if it failed.")] = False,
) -> None:
    """Submit a sweep as a Ray Job: the driver runs on the cluster, the laptop may disconnect."""
    from theoryscope.sweeps.load import check_name, load_spec
    from theoryscope.sweeps.plan import plan_sweep
    from theoryscope.sweeps.submit import submit_sweep, wait_for

    with user_errors():
        sweep_spec = load_spec(spec)
        sweep = check_name(name, "--name") if name else sweep_spec.name
        plan_sweep(sweep_spec, sweep)  # every error the cluster would meet, here first
        where = results if "://" in results else str(Path(results).expanduser().resolve())
        submitted = submit_sweep(sweep_spec.source, sweep, where, to)
    out.print(f"submitted sweep {sweep} as Ray job {submitted.job_id} to {to}; results in {where}", highlight=False)
    out.print(f"follow it with: theoryscope status {shlex.quote(sweep)} --results {shlex.quote(where)}",
              highlight=False)
    if wait:
        with user_errors():
            status, logs = wait_for(submitted)
        out.print(f"job {submitted.job_id}: {status}", highlight=False)
        if status != "SUCCEEDED":
            err.print(logs[-3000:], highlight=False, markup=False)
            raise typer.Exit(1)


@app.command(cls=Command, epilog="Examples: theoryscope status  ·  theoryscope status quickstart --json")
def status(
    name: Annotated[Optional[str], typer.Argument(help="One sweep (default: all).", show_default=False)] = None,
    results: Results = "results",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Per sweep: planned, done, ok, diverged, failed and remaining runs.

    Also when each sweep last progressed, and the command that finishes it."""
    from theoryscope.sweeps.display import status_view
    from theoryscope.sweeps.status import sweep_status

    with user_errors():
        statuses = sweep_status(results, name)
    if as_json:
        sys.stdout.write(json.dumps([s.to_json() for s in statuses], indent=2) + "\n")
        return
    report_debris(results)
    if not statuses:
        out.print(f"no sweeps in {results}")
        return
    out.print(status_view(results, statuses), highlight=False)
    for s in statuses:
        if s.remaining or s.failed:
            hint = resume_command(s.sweep, results, None, BackendName.RAY)
            out.print(f"{s.sweep}: {s.remaining} runs left" + (f", {s.failed} failed" if s.failed else "")
                      + f"; finish with: {hint}" + (" --retry-failed" if s.failed else ""), highlight=False)


@app.command(cls=Command, epilog="Examples: theoryscope query \"SELECT depth, avg(test_loss) FROM runs GROUP BY depth\"  ·  "
                     "theoryscope query \"SELECT * FROM curves\" --format parquet --out curves.parquet")
def query(
    sql: Annotated[str, typer.Argument(help=f"SQL over the views {', '.join(VIEW_NAMES)} "
                                            "(theoryscope tables lists their columns).", show_default=False)],
    results: Results = "results",
    fmt: Annotated[Format, typer.Option("--format", help="Output format (parquet needs --out).")] = Format.TABLE,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write to this file instead of stdout.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Stop the query after this many seconds.")]
    = DEFAULT_TIMEOUT,
) -> None:
    """Run one read-only SQL statement (DuckDB) over the results.

    Files outside the results directory, extensions and settings are out of its reach."""
    from theoryscope.storage.export import to_csv, to_json, write_text_atomic
    from theoryscope.storage.parquet import write_atomic
    from theoryscope.sweeps.display import as_text, query_view
    from theoryscope.sweeps.tables import run_query

    with user_errors():
        if fmt is Format.PARQUET and out_file is None:
            raise TheoryscopeError("--format parquet needs --out FILE")
        if out_file is not None and not out_file.parent.is_dir():
            raise TheoryscopeError(f"cannot write {out_file}: the directory {out_file.parent} does not exist")
        table = run_query(results, sql, timeout)
        report_debris(results)
        if fmt is Format.PARQUET:
            write_atomic(table, out_file)
            return
        if fmt is Format.TABLE:
            if out_file is not None:
                write_text_atomic(as_text(query_view(table, TEXT_WIDTH), TEXT_WIDTH), out_file)
            else:
                out.print(query_view(table, out.width), highlight=False, soft_wrap=True)
            return
        text = to_csv(table) if fmt is Format.CSV else to_json(table)
        if out_file is not None:
            write_text_atomic(text, out_file)
        else:
            sys.stdout.write(text)


@app.command(cls=Command, epilog="Example: theoryscope report quickstart --out reports/quickstart")
def report(
    name: Annotated[str, typer.Argument(help="The sweep to draw.", show_default=False)],
    results: Results = "results",
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", help="Folder for index.html and the figures (default: reports/NAME).")] = None,
) -> None:
    """Draw the sweep's canonical figures into one HTML page with PNGs."""
    from theoryscope.sweeps.display import counted
    from theoryscope.sweeps.report import build_report  # matplotlib loads only for reports

    with user_errors():
        made = build_report(results, name, out_dir or Path("reports") / name)
    out.print(f"{counted(len(made.figures), 'figure')}: {made.page}", highlight=False, soft_wrap=True)


@app.command(cls=Command, epilog="Examples: theoryscope analyze generalization-measures  ·  theoryscope analyze NAME "
                     "--target test_error --measures log_prod_spec,compression_bound")
def analyze(
    name: Annotated[str, typer.Argument(help="The sweep to analyze.", show_default=False)],
    results: Results = "results",
    target: Annotated[str, typer.Option(
        "--target", help="What the measures are ranked against: gen_gap, test_error or test_loss.")] = "gen_gap",
    measures: Annotated[Optional[str], typer.Option(
        "--measures", help="Comma-separated measures to rank (default: every one the sweep has).")] = None,
    include_unfit: Annotated[bool, typer.Option(
        "--include-unfit", help="Also rank runs that did not reach train.stop_train_loss.")] = False,
) -> None:
    """Rank the sweep's complexity measures by how well they predict the target.

    Kendall's tau, the granulated Psi and the conditional mutual information of Jiang et
    al. (2020), and Dziugaite et al.'s (2020) sign errors, into the rankings tables."""
    from theoryscope.sweeps.analyze import analyze as rank_measures
    from theoryscope.sweeps.display import ranked_view

    with user_errors():
        chosen = [m.strip() for m in measures.split(",") if m.strip()] if measures is not None else None
        done = rank_measures(results, name, target, chosen, include_unfit)
    left_out = f" ({done.runs.unfit} that did not reach train.stop_train_loss left out)" if done.runs.unfit else ""
    out.print(f"sweep {name}: {len(done.runs.run_ids)} runs{left_out}, target {done.target.value}, swept axes "
              f"{', '.join(done.runs.axes)}; written to rankings, rankings_axes, rankings_environments",
              highlight=False)
    out.print(ranked_view(done), highlight=False)


@app.command(cls=Command, epilog="Example: theoryscope tables --results results")
def tables(results: Results = "results") -> None:
    """The views you can query and their columns."""
    from rich.table import Table

    from theoryscope.sweeps.tables import describe_views

    with user_errors():
        views = describe_views(results)
    for view, columns in views.items():
        table = Table(title=view, title_justify="left")
        table.add_column("column")
        table.add_column("type")
        for column, kind in columns:
            table.add_row(column, kind)
        out.print(table)


def main() -> None:
    """The ``theoryscope`` command. Once a command is over, Ctrl-C can no longer cut the
    process's own exit short (an interpreter shutting down dies of SIGINT, exit -2)."""
    try:
        app()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    main()

"""The command line: exit codes, output, and nothing written on bad input."""

from __future__ import annotations

import json

import pytest

from helpers import SMALL_SPEC, invoke, one_line_error


@pytest.fixture
def spec(write_spec):
    return write_spec(SMALL_SPEC)


@pytest.fixture
def launched(spec, results):
    result = invoke("launch", spec, "--results", results, "--backend", "local")
    assert result.exit_code == 0, result.output
    return results


def test_plan_prints_runs_and_families_and_writes_nothing(spec, results):
    result = invoke("plan", spec)
    assert result.exit_code == 0, result.output
    assert "8 runs in 2 families" in result.output
    assert "resources per family: 1 CPU, 0 GPU" in result.output
    assert not results.exists()


def test_launch_prints_a_summary(spec, results):
    result = invoke("launch", spec, "--results", results, "--backend", "local")
    assert result.exit_code == 0, result.output
    assert "8 runs planned, 0 already done, 8 to run in 2 families" in result.output
    assert "ran now" in result.output and "8/8 runs" in result.output
    again = invoke("launch", spec, "--results", results, "--backend", "local")
    assert again.exit_code == 0 and "nothing to run" in again.output


def test_query_formats(launched, tmp_path):
    sql = "SELECT depth, count(*) AS n FROM runs GROUP BY depth ORDER BY depth"
    table = invoke("query", sql, "--results", launched)
    assert table.exit_code == 0 and "depth" in table.output
    csv = invoke("query", sql, "--results", launched, "--format", "csv")
    assert csv.stdout == "depth,n\n1,4\n2,4\n"
    js = invoke("query", sql, "--results", launched, "--format", "json")
    assert json.loads(js.stdout) == [{"depth": 1, "n": 4}, {"depth": 2, "n": 4}]
    out = tmp_path / "answer.csv"
    to_file = invoke("query", sql, "--results", launched, "--format", "csv", "--out", out)
    assert to_file.exit_code == 0 and to_file.stdout == "" and out.read_text() == "depth,n\n1,4\n2,4\n"


def test_query_json_has_no_nan_and_iso_timestamps(launched):
    js = invoke("query", "SELECT finished_at, train_error FROM runs LIMIT 1", "--results", launched,
                "--format", "json")
    row = json.loads(js.stdout)[0]
    assert row["train_error"] is None and "T" in row["finished_at"]


def test_query_on_an_empty_results_directory(results):
    results.mkdir()  # a missing one is an error (tests/test_results_paths.py)
    result = invoke("query", "SELECT count(*) AS n FROM runs", "--results", results, "--format", "csv")
    assert result.exit_code == 0 and result.stdout == "n\n0\n"
    assert not any(results.iterdir())  # a query writes nothing


def test_tables_lists_views_and_columns(results):
    results.mkdir()
    result = invoke("tables", "--results", results)
    assert result.exit_code == 0
    for word in ("runs", "curves", "sweeps", "theory_test_loss", "finished_at", "planned_runs"):
        assert word in result.output


def test_status(launched):
    table = invoke("status", "--results", launched)
    assert table.exit_code == 0 and "small" in table.output
    js = json.loads(invoke("status", "small", "--results", launched, "--json").stdout)
    assert js[0]["planned"] == 8 and js[0]["done"] == 8 and js[0]["remaining"] == 0


@pytest.mark.parametrize("body,fragment", [
    ('name = "x"\n[model]\nwidth = -3', "model.width: expected an integer >= 1, got -3"),
    ('name = "x"\n[data]\nn_train = 0', "data.n_train"),
    ('name = "x"\n[data]\nkind = "imagenet"', "data.kind: expected one of"),
    ('name = "x"\n[train]\nlr = 0', "train.lr: expected a finite number > 0"),
    ('name = "x"\n[grid]\ndepth = []', "grid.depth: expected a non-empty list"),
    ('name = "x"\nwat = 1', "wat: unknown key"),
    ("not toml at all ===", "not valid TOML"),
])
@pytest.mark.parametrize("command", ["plan", "launch"])
def test_bad_specs_exit_1_with_one_line_and_write_nothing(write_spec, results, body, fragment, command):
    path = write_spec(body)
    args = [command, path] + (["--results", results, "--backend", "local"] if command == "launch" else [])
    line = one_line_error(invoke(*args))
    assert fragment in line and str(path) in line
    assert not results.exists()


def test_missing_spec_file(tmp_path, results):
    line = one_line_error(invoke("launch", tmp_path / "missing.toml", "--results", results))
    assert "spec file not found" in line
    assert not results.exists()


def test_bad_sql_exits_1_and_writes_no_output_file(launched, tmp_path):
    out = tmp_path / "x.csv"
    line = one_line_error(invoke("query", "SELEC oops", "--results", launched, "--format", "csv", "--out", out))
    assert "query failed" in line and not out.exists()


def test_bad_name_option(spec, results):
    line = one_line_error(invoke("launch", spec, "--results", results, "--name", "../up"))
    assert "--name" in line and not results.exists()


def test_unknown_sweep_status(launched):
    line = one_line_error(invoke("status", "nope", "--results", launched))
    assert "no sweep named 'nope'" in line and "small" in line


def test_launch_on_local_ray(spec, results, ray_session):
    result = invoke("launch", spec, "--results", results)
    assert result.exit_code == 0, result.output
    js = json.loads(invoke("status", "--results", results, "--json").stdout)
    assert js[0]["ok"] == 8


def test_a_gpu_family_on_a_machine_without_gpus_is_refused_before_anything_is_written(
        write_spec, results, ray_session):
    spec = write_spec(SMALL_SPEC + "\n[resources]\nnum_gpus = 0.5\n")
    line = one_line_error(invoke("launch", spec, "--results", results))
    assert "no Ray node can run a family" in line and "--backend local" in line
    assert not results.exists()


def test_results_that_is_a_file(spec, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    line = one_line_error(invoke("launch", spec, "--results", target, "--backend", "local"))
    assert "is a file" in line and target.read_text() == "x"


def test_messages_with_brackets_are_printed_verbatim(write_spec, results):
    line = one_line_error(invoke("plan", write_spec('name = "x"\n[data]\nfoo = 1')))
    assert "unknown key in [data]" in line
    results.mkdir()
    line = one_line_error(invoke("query", 'SELECT * FROM "[/x]"', "--results", results))
    assert "[/x]" in line


def test_plan_lists_the_runs_with_their_swept_values(spec):
    result = invoke("plan", spec)
    assert "run_id" in result.output and "label_noise" in result.output and "depth" in result.output


def test_json_sums_are_numbers(launched):
    js = invoke("query", "SELECT sum(depth) AS s FROM runs", "--results", launched, "--format", "json")
    assert json.loads(js.stdout) == [{"s": 12}]


def test_empty_sql(launched):
    assert "empty" in one_line_error(invoke("query", "  ", "--results", launched))


def test_ray_address_in_the_environment_does_not_block_the_local_backend(spec, results, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    result = invoke("launch", spec, "--results", results, "--backend", "local")
    assert result.exit_code == 0, result.output


def test_resume_finishes_from_the_stored_spec(launched, spec):
    from theoryscope.storage.parquet import scan

    first = scan(launched, "runs", "small").complete[0]
    first.unlink()  # as if that family had not finished
    spec.unlink()  # resume needs only the results
    result = invoke("resume", "small", "--results", launched, "--backend", "local")
    assert result.exit_code == 0, result.output
    assert "8 runs planned, 4 already done, 4 to run in 1 family" in result.output
    js = json.loads(invoke("status", "small", "--results", launched, "--json").stdout)
    assert js[0]["done"] == 8 and js[0]["remaining"] == 0


def test_resume_of_an_unknown_sweep(launched):
    line = one_line_error(invoke("resume", "nope", "--results", launched, "--backend", "local"))
    assert "no sweep named 'nope'" in line and "(sweeps there: small)" in line


def test_status_says_what_is_left_and_how_to_finish(launched):
    from theoryscope.storage.parquet import scan

    scan(launched, "runs", "small").complete[0].unlink()
    result = invoke("status", "--results", launched)
    assert "small: 4 runs left; finish with: theoryscope resume small --results" in result.output


def test_launch_force_new(launched, write_spec):
    other = write_spec(SMALL_SPEC.replace("steps = 30", "steps = 20"), name="other.toml")
    refused = one_line_error(invoke("launch", other, "--results", launched, "--backend", "local"))
    assert "--force-new" in refused
    result = invoke("launch", other, "--results", launched, "--backend", "local", "--force-new")
    assert result.exit_code == 0 and "launching as 'small-" in result.output


def test_the_first_ctrl_c_interrupts_and_the_second_exits_at_once(monkeypatch):
    import signal

    from theoryscope import cli

    exits = []
    monkeypatch.setattr(cli.os, "_exit", exits.append)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest itself runs in the background
    with cli.ctrl_c_stops_the_sweep():
        handler = signal.getsignal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            handler(signal.SIGINT, None)
        handler(signal.SIGINT, None)
    assert exits == [130]
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_every_command_shows_an_example_in_its_help():
    for command in ("plan", "launch", "resume", "status", "query", "report", "tables"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output, command
    top = invoke("--help")
    assert "Exit codes" in top.output and "Example" in top.output


def test_version_names_the_code():
    from theoryscope.sweeps.version import code_version

    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == code_version()


def test_launch_json_prints_one_summary_and_no_progress(spec, tmp_path):
    result = invoke("launch", spec, "--results", tmp_path / "r", "--backend", "local", "--json")
    assert result.exit_code == 0
    summary = json.loads(result.output)
    assert summary["sweep"] == "small" and summary["planned"] == 8 and summary["ok"] + summary["diverged"] == 8
    assert summary["ran"] == 8 and summary["failed"] == 0
    again = json.loads(invoke("resume", "small", "--results", tmp_path / "r", "--backend", "local",
                              "--json").output)
    assert again["already_done"] == 8 and again["ran"] == 0


def test_launch_quiet_prints_nothing(spec, tmp_path):
    result = invoke("launch", spec, "--results", tmp_path / "r", "--backend", "local", "--quiet")
    assert result.exit_code == 0 and result.output == ""


# --- what a new user reads (#15) -----------------------------------------------------


def test_a_directory_given_as_the_spec_is_named_as_such(tmp_path, results):
    line = one_line_error(invoke("plan", tmp_path))
    assert "is a directory; give the spec file (.toml) in it" in line and str(tmp_path) in line


def test_an_unreadable_spec_exits_1_with_one_line(spec, results, monkeypatch):
    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(spec), "read_text", denied)
    for args in (["plan", spec], ["launch", spec, "--results", results, "--backend", "local"]):
        line = one_line_error(invoke(*args))
        assert line == f"error: {spec}: cannot read the spec (Permission denied)"
    assert not results.exists()


def test_missing_data_files_are_named_with_the_spec(write_spec, tmp_path):
    spec = write_spec(f'name = "m"\n[data]\nkind = "mnist"\npath = "{tmp_path / "nowhere"}"\n')
    line = one_line_error(invoke("plan", spec))
    assert line.startswith(f"error: {spec}: data.path: ") and "train-images-idx3-ubyte" in line
    table = write_spec('name = "t"\nexperiment = "acceleration"\n[data]\nkind = "lp-regression"\n'
                       'path = "absent.csv"\ntarget_column = "y"\n[model]\nkind = "linear"\n', name="t.toml")
    line = one_line_error(invoke("plan", table))
    assert line.startswith(f"error: {table}: data.path: 'absent.csv'")


ZERO_INIT = """
name = "zero"
[data]
kind = "teacher-student"
n_train = 32
n_test = 32
input_dim = 4
[model]
kind = "mlp"
depth = 1
init_scale = 0.0
[train]
optimizer = "gd"
lr = 0.1
steps = 10
log_every = 5
[grid]
seed = [0, 1, 2]
label_noise = [0.0, 0.5]
"""


def test_a_swept_seed_that_cannot_change_the_nets_is_said_once(write_spec, results):
    """Zero init and full-batch GD: every seed trains the same net. plan and launch say
    so in one line; a minibatch order (or a drawn init) makes the seed matter again."""
    note = "grid.seed: 6 of the 6 runs train the same net for each of the 3 seeds"
    planned = invoke("plan", write_spec(ZERO_INIT))
    assert planned.exit_code == 0 and planned.output.count(note) == 1
    launched = invoke("launch", write_spec(ZERO_INIT), "--results", results, "--backend", "local")
    assert launched.exit_code == 0 and f"warning: {note}" in launched.stderr
    minibatch = invoke("plan", write_spec(ZERO_INIT.replace('optimizer = "gd"', 'optimizer = "sgd"\nbatch_size = 8')))
    assert minibatch.exit_code == 0 and "grid.seed" not in minibatch.output
    drawn = invoke("plan", write_spec(ZERO_INIT.replace("init_scale = 0.0", "init_scale = 1.0")))
    assert drawn.exit_code == 0 and "grid.seed" not in drawn.output


def test_launching_a_finished_sweep_says_nothing_to_run_and_stops(launched, spec):
    again = invoke("launch", spec, "--results", launched, "--backend", "local")
    assert again.exit_code == 0
    assert again.stdout.strip() == "sweep small: nothing to run; all 8 planned runs are in the results"


def test_a_report_of_one_figure_says_figure(launched, monkeypatch, tmp_path):
    from theoryscope.sweeps import report

    page = tmp_path / "index.html"
    monkeypatch.setattr(report, "build_report", lambda *args: report.Report(page, (tmp_path / "a.png",)))
    assert invoke("report", "small", "--results", launched).stdout.strip() == f"1 figure: {page}"


def test_help_shows_no_type_beside_flags_and_query_names_every_view():
    from theoryscope.cli import VIEW_NAMES
    from theoryscope.sweeps.tables import TABLES, VIEWS

    assert VIEW_NAMES == (*TABLES, *VIEWS.derived)  # --help names them without building the views
    launch = invoke("launch", "--help")
    assert launch.exit_code == 0 and "--force-new" in launch.output and "<bool>" not in launch.output
    text = " ".join(invoke("query", "--help").output.replace("│", " ").split())
    assert all(f" {view}," in text or f" {view} " in text for view in [*TABLES, *VIEWS.derived])


def test_install_is_refused_by_its_own_name(launched):
    for sql, keyword in (("INSTALL httpfs", "INSTALL"), ("LOAD httpfs", "LOAD"), ("FORCE INSTALL httpfs", "FORCE INSTALL"),
                         ("UPDATE EXTENSIONS", "UPDATE")):
        line = one_line_error(invoke("query", sql, "--results", launched))
        assert f"query refused: {keyword} statements are not allowed" in line


def test_a_wide_result_prints_one_record_per_block(launched, monkeypatch):
    """`SELECT *` over runs has dozens of columns: too wide for a table at 80 columns, so
    every row is a block of `column = value` lines (duckdb's `.mode line`)."""
    wide = invoke("query", "SELECT * FROM runs ORDER BY run_id LIMIT 2", "--results", launched)
    assert wide.exit_code == 0
    assert "2 rows of" in wide.stdout and "one record per block" in wide.stdout
    assert wide.stdout.count("run_id = ") == 2 and "experiment = train" in wide.stdout
    narrow = invoke("query", "SELECT depth, count(*) AS n FROM runs GROUP BY depth", "--results", launched)
    assert "one record per block" not in narrow.stdout and "depth" in narrow.stdout


STARTUP = """
import atexit, sys
atexit.register(lambda: sys.stderr.write("torch loaded: %s\\n" % ("torch" in sys.modules)))
sys.argv = ["theoryscope", *sys.argv[1:]]
from theoryscope.cli import main
main()
"""


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["query", "SELECT count(*) FROM runs"], ["status"],
                                  ["tables"], ["query", "--help"]])
def test_reading_commands_start_without_torch(launched, args):
    """Importing torch is most of a command's start-up: --help, --version, status, query
    and tables never load it (bench/startup.py measures the time)."""
    import subprocess
    import sys

    from helpers import REPO

    done = subprocess.run([sys.executable, "-c", STARTUP, *args, *(["--results", str(launched)] if args[0] in (
        "query", "status", "tables") and "--help" not in args else [])], cwd=REPO, capture_output=True, text=True,
        timeout=120)
    assert done.returncode == 0, done.stderr
    assert "torch loaded: False" in done.stderr

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
    assert "8 runs planned, 4 already done, 4 to run in 1 families" in result.output
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

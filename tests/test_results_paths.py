"""A mistyped ``--results`` and a sweep with no record: read-only commands name the
problem and the fix in one line, exit 1 and create nothing."""

from __future__ import annotations

import pytest

from helpers import SMALL_SPEC, invoke, one_line_error
from theoryscope.sweeps.dispatch import LocalBackend
from theoryscope.sweeps.launch import launch, prepare
from theoryscope.sweeps.load import parse_spec

READERS = {
    "status": ["status"],
    "status NAME": ["status", "small"],
    "status --json": ["status", "--json"],
    "query": ["query", "SELECT count(*) AS n FROM runs"],
    "tables": ["tables"],
    "report": ["report", "small"],
}


def tree(directory) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """Run in an empty folder, where ``report`` would put ``reports/``."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def launched(results):
    launch(prepare(parse_spec(SMALL_SPEC), results), results, LocalBackend())
    return results


@pytest.mark.parametrize("command", READERS.values(), ids=READERS)
def test_a_missing_results_directory_is_named_and_nothing_is_created(cwd, command):
    missing = cwd / "reslts"
    line = one_line_error(invoke(*command, "--results", missing))
    assert f"results directory {missing} does not exist" in line
    assert "launch a sweep first" in line and "--results DIR" in line and "THEORYSCOPE_RESULTS" in line
    assert tree(cwd) == []


@pytest.mark.parametrize("command", READERS.values(), ids=READERS)
def test_results_that_is_a_file_is_refused(cwd, command):
    target = cwd / "results.csv"
    target.write_text("x")
    line = one_line_error(invoke(*command, "--results", target))
    assert f"{target} is a file, not a results directory" in line
    assert tree(cwd) == ["results.csv"] and target.read_text() == "x"


def test_an_existing_empty_directory_has_no_sweeps(cwd, results, monkeypatch):
    monkeypatch.setenv("THEORYSCOPE_RESULTS", str(results))
    assert "does not exist" in one_line_error(invoke("status"))
    results.mkdir()
    empty = invoke("status")
    assert empty.exit_code == 0 and "no sweeps" in empty.output
    counted = invoke("query", "SELECT count(*) AS n FROM runs", "--format", "csv")
    assert counted.exit_code == 0 and counted.stdout == "n\n0\n"
    assert invoke("tables").exit_code == 0
    assert tree(cwd) == ["results"] and tree(results) == []


@pytest.mark.parametrize("command", ["resume", "status"])
def test_a_name_with_no_record_says_how_to_recover(launched, command):
    line = one_line_error(invoke(command, "smal", "--results", launched, "--backend", "local")
                          if command == "resume" else invoke(command, "smal", "--results", launched))
    assert "no sweep named 'smal'" in line and "(sweeps there: small)" in line and "did you mean 'small'?" in line
    assert ("if its launch was interrupted before it was recorded, launch the spec again: "
            f"theoryscope launch SPEC.toml --name smal --results {launched}") in line


def test_a_launch_stopped_before_its_record_is_recovered_by_launching_again(launched, write_spec):
    for path in (launched / "sweeps").rglob("*.parquet"):
        path.unlink()  # as if killed before the record was written
    line = one_line_error(invoke("resume", "small", "--results", launched, "--backend", "local"))
    assert "(sweeps there: none)" in line and "launch the spec again" in line
    again = invoke("launch", write_spec(SMALL_SPEC), "--name", "small", "--results", launched, "--backend", "local")
    assert again.exit_code == 0 and "nothing to run; all 8 planned runs are in the results" in again.output


def test_a_damaged_record_is_named(launched, write_spec):
    (record,) = (launched / "sweeps" / "sweep=small").glob("*.parquet")
    record.write_bytes(record.read_bytes()[:40])  # cut short, as by a full disk
    line = one_line_error(invoke("resume", "small", "--results", launched, "--backend", "local"))
    assert "no sweep named 'small'" in line and "damaged" in line and str(record) in line
    assert f"launch its spec again to record it anew (runs already done are kept): theoryscope launch SPEC.toml " \
           f"--name small --results {launched}" in line
    assert str(record) in one_line_error(invoke("status", "small", "--results", launched))
    again = invoke("launch", write_spec(SMALL_SPEC), "--name", "small", "--results", launched, "--backend", "local")
    assert again.exit_code == 0 and "nothing to run; all 8 planned runs are in the results" in again.output
    assert invoke("resume", "small", "--results", launched, "--backend", "local").exit_code == 0

"""One launch path: ``run_sweep`` / ``resume_sweep`` plan once, pack once, run, and return
the summary; the CLI, the benchmarks and notebooks go through it."""

from __future__ import annotations

import pytest

import theoryscope
from helpers import SMALL_SPEC, invoke
from theoryscope.core.errors import TheoryscopeError
from theoryscope.sweeps import plan as planning
from theoryscope.sweeps.launch import LaunchEvents


@pytest.fixture
def counted(monkeypatch):
    """How often the grid is expanded and runs are packed into families."""
    calls = {"expand": 0, "pack": 0}
    expand, pack = planning.expand_runs, planning.pack_families

    def counting_expand(*args, **kwargs):
        calls["expand"] += 1
        return expand(*args, **kwargs)

    def counting_pack(*args, **kwargs):
        calls["pack"] += 1
        return pack(*args, **kwargs)

    monkeypatch.setattr(planning, "expand_runs", counting_expand)
    monkeypatch.setattr(planning, "pack_families", counting_pack)
    return calls


def test_a_launch_and_a_relaunch_expand_the_grid_once_and_pack_once(write_spec, results, counted):
    spec = write_spec(SMALL_SPEC)
    for _ in range(2):  # the second launch finds everything done
        assert invoke("launch", str(spec), "--results", str(results), "--backend", "local").exit_code == 0
        assert counted == {"expand": 1, "pack": 1}
        counted.update(expand=0, pack=0)
    assert invoke("resume", "small", "--results", str(results), "--backend", "local").exit_code == 0
    assert counted == {"expand": 1, "pack": 1}


class Heard(LaunchEvents):
    def __init__(self):
        self.heard = []

    def running(self, plan):
        self.heard.append(("running", len(plan.families), plan.capacity is not None))

    def done(self, outcome):
        self.heard.append(("done", outcome.n_runs))


def test_a_notebook_launches_resumes_and_queries_through_the_public_api(write_spec, results):
    spec = theoryscope.load_spec(write_spec(SMALL_SPEC))
    events = Heard()
    summary = theoryscope.launch(spec, results, backend="local", events=events)
    assert (summary.sweep, summary.planned, summary.total("n_ok")) == ("small", 8, 8)
    families = events.heard[0][1]
    assert events.heard[0] == ("running", families, True)  # packed for the backend's capacity
    assert sorted(h for h in events.heard[1:]) == sorted(("done", o.n_runs) for o in summary.outcomes)
    again = theoryscope.resume("small", results, backend="local")
    assert (again.already_done, again.families) == (8, 0)
    counted = theoryscope.query(results, "SELECT count(*) AS n FROM runs WHERE sweep = 'small'").to_pylist()
    assert counted == [{"n": 8}]


def test_a_name_taken_by_another_spec_is_refused_before_anything_runs(write_spec, results):
    theoryscope.launch(write_spec(SMALL_SPEC), results, backend="local")
    other = write_spec(SMALL_SPEC.replace("steps = 30", "steps = 31"), "other.toml")
    with pytest.raises(TheoryscopeError, match="already exists"):
        theoryscope.launch(other, results, backend="local", events=Heard())
    fresh = theoryscope.launch(other, results, backend="local", force_new=True)
    assert fresh.sweep.startswith("small-") and fresh.total("n_ok") == 8

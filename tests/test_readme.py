"""README stays true: its commands, its spec reference and its SQL recipes."""

from __future__ import annotations

import dataclasses
import re

import pytest

from storage.query import run_query
from sweeps.dispatch import LocalBackend
from sweeps.launch import launch, prepare
from sweeps.load import SECTIONS, load_spec
from sweeps.plan import plan_sweep
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
EXAMPLES = sorted((REPO / "examples").glob("*.toml"))


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", README, re.S)


def sql_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)\n```", README, re.S)


def test_ci_runs_the_readme_test_command():
    test_command = bash_blocks()[1]
    assert "pytest" in test_command
    assert test_command in (REPO / ".ci" / "run").read_text().splitlines()


def test_the_readme_main_command_launches_an_example_and_asks_the_first_recipe():
    main = bash_blocks()[0]
    spec = re.search(r"theoryscope launch (\S+)", main).group(1)
    assert (REPO / spec).is_file()
    asked = re.search(r'theoryscope query "(.*)"$', main).group(1)
    assert " ".join(asked.split()) == " ".join(sql_blocks()[0].split())


def test_the_spec_reference_lists_every_field():
    documented = set(re.findall(r"`(\w+)\.(\w+)`", README))
    for section, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            assert (section, field.name) in documented, f"{section}.{field.name} is not in README"
    for section, name in documented:
        if section in SECTIONS:
            assert name in {f.name for f in dataclasses.fields(SECTIONS[section])}, f"{section}.{name}"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_plan(path):
    plan = plan_sweep(load_spec(path))
    assert len(plan.families) < len(plan.runs)


@pytest.fixture(scope="module")
def example_results(tmp_path_factory):
    results = tmp_path_factory.mktemp("examples") / "results"
    for name in ("quickstart", "label-noise-classification", "cushions", "linear-teacher", "digits-label-noise",
                 "valleys-vs-width", "acceleration", "linear-dynamics"):
        spec = load_spec(REPO / "examples" / f"{name}.toml")
        summary = launch(prepare(spec, results), results, LocalBackend())
        assert summary.total("n_ok") == summary.planned
    return results


@pytest.mark.parametrize("index", range(len(sql_blocks())))
def test_sql_recipes_answer(example_results, index):
    table = run_query(example_results, sql_blocks()[index])
    if "diverged" not in sql_blocks()[index]:
        assert table.num_rows > 0


def test_the_quickstart_answers_its_question(example_results):
    """Label noise raises the test loss of the trained nets at every depth."""
    rows = run_query(example_results, sql_blocks()[0]).to_pylist()
    by_depth: dict[int, list[float]] = {}
    for row in rows:
        by_depth.setdefault(row["depth"], []).append(row["test_loss"])
    assert set(by_depth) == {1, 2, 3}
    for losses in by_depth.values():
        assert losses == sorted(losses)


def test_the_valleys_example_shows_barriers_shrinking_with_width(example_results):
    """Freeman & Bruna: narrow students have barriers between seeds, wide ones are connected."""
    recipe = next(sql for sql in sql_blocks() if "valleys-vs-width" in sql)
    rows = run_query(example_results, recipe).to_pylist()
    barrier = {(r["depth"], r["width"]): r["barrier"] for r in rows}
    assert all(r["pairs"] == 3 for r in rows)
    narrow = sum(barrier[d, 4] for d in (2, 3)) / 2
    wide = sum(barrier[d, 64] for d in (2, 3)) / 2
    assert narrow > 3 * wide
    assert all(r["straight_line"] > 20 * r["barrier"] for r in rows if r["width"] == 64)


def test_the_acceleration_example_speeds_up_p_above_2_only(example_results):
    """Arora, Cohen & Hazan: on the ill-conditioned problem depth accelerates p = 4 and 6,
    not p = 2 (speed-ups as ratios, or lower bounds where depth 1 ran out of steps)."""
    recipe = next(sql for sql in sql_blocks() if "FROM acceleration" in sql)
    rows = run_query(example_results, recipe).to_pylist()
    speedup = {(r["condition"], r["p"], r["depth"]): r["speedup"] or r["speedup_at_least"] for r in rows}
    for depth in (2, 3, 4):
        assert speedup[30.0, 2, depth] < 1.5
        assert speedup[30.0, 6, depth] > speedup[30.0, 2, depth]
    for depth in (3, 4):
        assert min(speedup[30.0, 4, depth], speedup[30.0, 6, depth]) > 2 * speedup[30.0, 2, depth]

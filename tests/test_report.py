"""``theoryscope report``: an HTML page and PNG figures chosen by what a sweep measured."""

from __future__ import annotations

import re

import pytest
from matplotlib.image import imread

from helpers import ACCELERATION_SPEC, SMALL_SPEC, VALLEY_SPEC, invoke
from theoryscope.core.errors import SweepNotFound
from theoryscope.sweeps.dispatch import LocalBackend
from theoryscope.sweeps.launch import launch, prepare
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.report import build_report


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    results = tmp_path_factory.mktemp("report") / "results"
    specs = [
        parse_spec(SMALL_SPEC),
        parse_spec(VALLEY_SPEC.format(name="valleys", kind="teacher-student", size=512, extra="",
                                      options='pairs = "seed", beads = 3, steps = 10')),
        parse_spec(ACCELERATION_SPEC.format(name="acceleration", overparam="full", steps=300).replace(
            "target = 1e-5", "target = 1e-2")),
    ]
    for spec in specs:
        launch(prepare(spec, results), results, LocalBackend())
    return results


@pytest.mark.parametrize("sweep, expected", [
    ("small", {"test-by-depth-width", "curves"}),
    ("valleys", {"test-by-depth-width", "curves", "valleys"}),
    ("acceleration", {"test-by-depth-width", "curves", "acceleration"}),
])
def test_a_report_draws_what_the_sweep_measured(swept, tmp_path, sweep, expected):
    report = build_report(swept, sweep, tmp_path / "out")
    assert {p.stem for p in report.figures} == expected
    page = report.page.read_text()
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == sorted(p.name for p in report.figures)
    for png in report.figures:
        image = imread(png)  # decodes
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert f"WHERE sweep = &#x27;{sweep}&#x27;" in page or f"sweep = &#x27;{sweep}&#x27;" in page  # the SQL shown
    assert "http" not in page  # nothing loaded from elsewhere
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*(p.name for p in report.figures),
                                                                          "index.html"])


def test_the_curves_are_coloured_by_the_first_swept_field(swept, tmp_path):
    page = build_report(swept, "small", tmp_path / "out").page.read_text()
    assert "r.depth AS value" in page  # SMALL_SPEC's grid starts with depth


def test_a_missing_sweep_writes_nothing(swept, tmp_path):
    with pytest.raises(SweepNotFound, match="no sweep named 'nope'"):
        build_report(swept, "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_the_cli_prints_where_the_page_is(swept, tmp_path):
    result = invoke("report", "small", "--results", swept, "--out", tmp_path / "r")
    assert result.exit_code == 0 and "2 figures" in result.output and str(tmp_path / "r") in result.output
    assert (tmp_path / "r" / "index.html").is_file()

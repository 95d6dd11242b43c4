"""``theoryscope report``: an HTML page and PNG figures chosen by what a sweep measured.

The figures' contract: titles and labels say what is drawn (test error or test loss), and
every swept field a figure has no axis for colours its lines or gets panels, seeds aside
(averaged, and said so). Most tests draw hand-made rows, which is fast; a few build the
report of tiny sweeps end to end.
"""

from __future__ import annotations

import itertools
import re

import pytest
from matplotlib.image import imread

from helpers import ACCELERATION_SPEC, SMALL_SPEC, VALLEY_SPEC, invoke
from theoryscope.core.errors import SweepNotFound
from theoryscope.storage.query import sql_string
from theoryscope.sweeps.dispatch import LocalBackend
from theoryscope.sweeps.experiments.acceleration import draw_acceleration
from theoryscope.sweeps.figures import Figure, against_n_train, curves, gap_against_noise, heatmaps
from theoryscope.sweeps.launch import launch, prepare
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.panels import MAX_PANELS, layout, pyplot
from theoryscope.sweeps.report import build_report, swept_columns
from theoryscope.sweeps.tables import FIGURES, run_query

SAMPLES_SPEC = SMALL_SPEC.replace('name = "small"', 'name = "samples"').replace(
    "depth = [1, 2]\nlabel_noise = [0.0, 0.5]", '"data.n_train" = [16, 32, 64]')


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    results = tmp_path_factory.mktemp("report") / "results"
    specs = [
        parse_spec(SMALL_SPEC),
        parse_spec(SAMPLES_SPEC),
        parse_spec(VALLEY_SPEC.format(name="valleys", kind="teacher-student", size=512, extra="",
                                      options='pairs = "seed", beads = 3, steps = 10')),
        parse_spec(ACCELERATION_SPEC.format(name="acceleration", overparam="full", steps=300).replace(
            "target = 1e-5", "target = 1e-2")),
    ]
    for spec in specs:
        launch(prepare(spec, results), results, LocalBackend())
    return results


@pytest.fixture(scope="module")
def small_page(swept, tmp_path_factory) -> str:
    """The page of SMALL_SPEC's sweep (regression; depth, label noise and seed swept)."""
    return build_report(swept, "small", tmp_path_factory.mktemp("small") / "out").page.read_text()


@pytest.fixture
def drawn():
    """Close every figure a test draws."""
    figures = []
    yield figures.append
    for fig in figures:
        pyplot().close(fig)


# ---------------------------------------------------------------------------------------
# Hand-made rows, as the figures' queries return them
# ---------------------------------------------------------------------------------------

def grid_rows(axes: dict[str, list], **columns) -> list[dict]:
    """One row per point of the product of ``axes``; ``columns`` are constants, or
    functions of the row so far."""
    rows = []
    for values in itertools.product(*axes.values()):
        row = dict(zip(axes, values))
        for name, value in columns.items():
            row[name] = value(row) if callable(value) else value
        rows.append(row)
    return rows


def heatmap_rows(error: bool, **axes) -> list[dict]:
    return grid_rows({"depth": [1, 2], "width": [8, 32], **axes}, runs=2, is_error=error,
                     value=lambda r: 0.1 * r["depth"], low=lambda r: r["value"] - 0.01,
                     high=lambda r: r["value"] + 0.01)


def curve_rows(error: bool, **axes) -> list[dict]:
    def metric(base):
        return lambda r: base / (1 + r["step"]) + r.get("label_noise", 0)

    rows = grid_rows({"step": [0, 10, 20], **axes}, runs=2, train_loss=metric(1.0), test_loss=metric(2.0),
                     test_loss_low=metric(1.9), test_loss_high=metric(2.1), theory=None)
    for r in rows:
        for name in ("train_error", "test_error", "test_error_low", "test_error_high"):
            r[name] = 0.5 * r["test_loss"] if error else None
    return rows


def gap_rows(error: bool, **axes) -> list[dict]:
    return grid_rows(axes, runs=2, is_error=error, gap=lambda r: r.get("label_noise", 0) + 0.1,
                     low=lambda r: r["gap"] - 0.01, high=lambda r: r["gap"] + 0.02)


def sample_rows(**axes) -> list[dict]:
    return grid_rows({"n_train": [16, 32, 64], **axes}, runs=2, is_error=False, test=lambda r: 32 / r["n_train"],
                     low=lambda r: r["test"] * 0.9, high=lambda r: r["test"] * 1.1, train=0.01, theory=None)


def panel_titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]


def legend_labels(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def axis_labels(fig, axis: str) -> set[str]:
    return {getattr(ax, f"get_{axis}label")() for ax in fig.axes if ax.get_visible()}


# ---------------------------------------------------------------------------------------
# Titles and labels say what is drawn (item 8)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("error, metric", [(False, "test loss"), (True, "test error")])
def test_the_heatmap_names_the_metric_it_colours(drawn, error, metric):
    fig = heatmaps(heatmap_rows(error), ("depth", "width", "seed"))
    drawn(fig)
    assert fig.get_suptitle() == f"{metric.capitalize()} over depth × width"
    colour_bar = fig.axes[-1]
    assert colour_bar.get_ylabel().startswith(metric)
    assert "mean over 2 seeds" in fig.get_supxlabel()


def test_a_regression_report_says_test_loss_in_its_heading(small_page):
    assert "<h2>Test loss over depth × width</h2>" in small_page and "Test error over" not in small_page


# ---------------------------------------------------------------------------------------
# Every swept field off the axes is faceted (item 9), seeds averaged
# ---------------------------------------------------------------------------------------

def test_the_heatmap_has_a_panel_per_value_of_every_other_swept_field(drawn):
    rows = heatmap_rows(False, p=[2, 4, 6], condition=[1.0, 30.0])
    fig = heatmaps(rows, ("p", "depth", "condition"))
    drawn(fig)
    assert panel_titles(fig) == [f"p {p}, condition {c:g}" for p in (2, 4, 6) for c in (1.0, 30.0)]


def test_the_acceleration_sweeps_heatmap_is_faceted_by_p(swept, drawn):
    figure = next(f for f in FIGURES if f.name == "test-by-depth-width")
    swept_fields = swept_columns(parse_spec(ACCELERATION_SPEC.format(name="a", overparam="full", steps=1)))
    assert swept_fields == ("p", "depth")
    rows = run_query(swept, figure.query(sql_string("acceleration"), swept_fields)).to_pylist()
    fig = figure.draw(rows, swept_fields)
    drawn(fig)
    assert panel_titles(fig) == ["p 2", "p 4"]


def test_the_speed_up_has_a_line_per_p_and_a_panel_per_condition(drawn):
    rows = grid_rows({"p": [2, 4], "depth": [1, 2, 3], "condition": [1.0, 30.0]}, runs=1,
                     ratio=lambda r: float(r["depth"]) ** (r["p"] - 3), low=None, high=None,
                     lower_bound=lambda r: r["condition"] == 30.0 and r["depth"] > 1)
    fig = draw_acceleration(rows, ("p", "depth", "condition"))
    drawn(fig)
    assert panel_titles(fig) == ["condition 1", "condition 30"]
    assert legend_labels(fig) == ["p 2", "p 4"]
    assert "hollow: lower bound" in fig.get_supxlabel()


def test_the_queries_select_every_swept_field_but_seeds():
    figure = Figure("f", "t", "SELECT {fields}r.depth, avg(r.test_loss) AS v FROM runs r "
                              "WHERE r.sweep = {sweep} AND r.width > 0 GROUP BY ALL", heatmaps, "c")
    sql = figure.query("'s'", ("depth", "width", "label_noise", "seed", "data_seed"))
    assert sql.startswith("SELECT r.width, r.label_noise, r.depth, avg")  # depth named once, seeds averaged
    assert "WHERE r.sweep = 's'" in sql


def test_too_many_panels_hold_a_field_fixed_and_say_so(drawn):
    axes = {"depth": [2, 3], "lr": [0.1, 0.2], "batch_size": [8, 16], "weight_decay": [0.0, 0.1],
            "label_noise": [0.0, 0.5]}
    rows = curve_rows(False, **axes)
    shape = layout(rows, list(axes), shown=("step",), lines=("label_noise",))
    assert shape.panels == ("depth", "lr", "batch_size") and shape.held == (("weight_decay", 0.0, 2),)
    fig = curves(rows, list(axes))
    drawn(fig)
    assert len(panel_titles(fig)) == MAX_PANELS
    assert "weight decay held at 0 (of 2 values)" in fig.get_supxlabel()
    assert len({round(ax.get_position().x0, 3) for ax in fig.axes if ax.get_visible()}) <= 4  # 4 to a row


def test_the_question_fields_are_the_last_held_fixed():
    axes = {"lr": [0.1, 0.2], "batch_size": [8, 16], "weight_decay": [0.0, 0.1], "label_noise": [0.0, 0.5]}
    shape = layout(heatmap_rows(True, **axes), ["depth", "width", *axes], shown=("depth", "width"))
    assert "label_noise" in shape.panels and shape.held == (("weight_decay", 0.0, 2),)


# ---------------------------------------------------------------------------------------
# Curves: coloured by the field the sweep asks about, error rates too (item 10)
# ---------------------------------------------------------------------------------------

def test_the_curves_colour_by_label_noise_and_facet_by_depth_and_width(drawn):
    rows = curve_rows(False, depth=[1, 2], width=[16, 64], label_noise=[0.0, 0.5, 1.0])
    fig = curves(rows, ("depth", "width", "label_noise", "seed"))
    drawn(fig)
    assert panel_titles(fig) == ["depth 1, width 16", "depth 1, width 64", "depth 2, width 16", "depth 2, width 64"]
    assert legend_labels(fig)[:3] == ["label noise 0", "label noise 0.5", "label noise 1"]
    assert axis_labels(fig, "y") == {"loss"}
    assert "mean over 2 seeds" in fig.get_supxlabel()


def test_classification_curves_show_the_error_rate(drawn):
    rows = curve_rows(True, width=[16, 64], label_noise=[0.0, 0.5])
    fig = curves(rows, ("width", "label_noise"))
    drawn(fig)
    assert axis_labels(fig, "y") == {"loss", "error rate"}
    assert len(panel_titles(fig)) == 4  # loss and error rate, per width
    assert fig.get_suptitle() == "Training and test curves: loss and error rate"


def test_the_report_queries_the_curves_of_every_swept_field(small_page):
    assert "SELECT c.step, r.depth, r.label_noise, count(*) AS runs" in small_page  # seeds averaged


# ---------------------------------------------------------------------------------------
# Legends on every panel, captions that wrap (item 11)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("draw, rows, swept_fields", [
    (curves, curve_rows(True, depth=[1, 2], label_noise=[0.0, 0.5]), ("depth", "label_noise")),
    (gap_against_noise, gap_rows(False, depth=[1, 2], width=[8], label_noise=[0.0, 0.5], p=[2, 4]),
     ("depth", "label_noise", "p")),
    (against_n_train, sample_rows(label_noise=[0.0, 0.5], depth=[1, 2]), ("n_train", "label_noise", "depth")),
])
def test_one_legend_serves_every_panel(drawn, draw, rows, swept_fields):
    fig = draw(rows, swept_fields)
    drawn(fig)
    assert len(panel_titles(fig)) >= 2 and len(fig.legends) == 1
    assert not any(ax.get_legend() for ax in fig.axes)  # none on one panel only
    lines = {text for ax in fig.axes for text in ax.get_legend_handles_labels()[1]}
    assert lines <= set(legend_labels(fig))


def test_the_captions_queries_wrap(small_page):
    style = re.search(r"pre\{([^}]*)\}", small_page).group(1)
    assert "white-space:pre-wrap" in style and "word-break:break-word" in style and "overflow-x" not in style


# ---------------------------------------------------------------------------------------
# The figures the sweep's question asks for (item 12)
# ---------------------------------------------------------------------------------------

def test_the_gap_against_label_noise_has_a_line_per_depth_and_width(drawn):
    rows = gap_rows(True, depth=[2, 3], width=[16, 64], label_noise=[0.0, 0.2, 0.4])
    fig = gap_against_noise(rows, ("depth", "width", "label_noise", "seed"))
    drawn(fig)
    assert fig.get_suptitle() == "Generalization gap (test − train error) against label noise"
    assert legend_labels(fig) == ["depth 2, width 16", "depth 2, width 64", "depth 3, width 16", "depth 3, width 64"]
    assert axis_labels(fig, "x") == {"label noise"} and axis_labels(fig, "y") == {"test − train error"}


def test_the_test_error_against_n_train_has_a_line_per_label_noise(drawn):
    fig = against_n_train(sample_rows(label_noise=[0.0, 0.5]), ("n_train", "label_noise", "seed"))
    drawn(fig)
    assert fig.get_suptitle() == "Test loss against training set size"
    assert legend_labels(fig)[:2] == ["label noise 0", "label noise 0.5"]
    assert axis_labels(fig, "x") == {"n_train"}


def test_the_new_figures_need_their_field_swept():
    assert gap_against_noise(gap_rows(True, depth=[2, 3], label_noise=[0.1]), ("depth",)) is None
    assert against_n_train(sample_rows()[:1], ("depth",)) is None


# ---------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("sweep, expected", [
    ("small", {"test-by-depth-width", "curves", "gap-by-label-noise"}),
    ("samples", {"curves", "test-by-n-train"}),
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
    assert f"sweep = &#x27;{sweep}&#x27;" in page  # the SQL shown
    assert "http" not in page  # nothing loaded from elsewhere
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*(p.name for p in report.figures),
                                                                          "index.html"])


def test_a_missing_sweep_writes_nothing(swept, tmp_path):
    with pytest.raises(SweepNotFound, match="no sweep named 'nope'"):
        build_report(swept, "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_the_cli_prints_where_the_page_is(swept, tmp_path):
    result = invoke("report", "small", "--results", swept, "--out", tmp_path / "r")
    assert result.exit_code == 0 and "3 figures" in result.output and str(tmp_path / "r") in result.output
    assert (tmp_path / "r" / "index.html").is_file()

"""The ``complexity`` measure: the generalization measures of Jiang, Neyshabur, Mobahi,
Krishnan & Bengio, "Fantastic generalization measures and where to find them" (ICLR
2020, Appendix C), and the tables that rank them.

For every member of a family (MLPs, deep linear nets or CNNs; the CNN forms of the
measures: ``core.measures.complexity``), after training and at the ``at`` steps: norms and
distances from the initialization (the init rebuilt from the run's seed,
``sweeps.weights.init``), margin-based measures (classification), PAC-Bayes flatness,
sharpness and the Hessian's top eigenvalue, all computed stacked over the family by
``core.measures.complexity``, into the long table ``complexity`` (one row per run, step
and measure, with the options used as JSON in ``settings``). The view of the same name
adds, for the runs it measured, the compression bound of Arora, Ge, Neyshabur & Zhang
(2018) that ``[measure] cushions`` wrote into ``bounds``: ``compression_q``
(``effective_params``, Theorem 4.1's q) and ``compression_bound`` (``bound_formula``),
not recomputed.

``theoryscope analyze`` (``sweeps.analyze``) ranks the measures against what the nets
did and writes ``rankings``, ``rankings_axes`` and ``rankings_environments``: one file
per sweep and target, not per family (``PER_SWEEP``). Their figures are here: Jiang et
al.'s Table of tau per measure and swept axis, and the distribution of Dziugaite et
al.'s (2020) sign errors over environments.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from theoryscope.core.config import ModelKind, RunSpec, is_finite, require
from theoryscope.core.errors import SpecError
from theoryscope.core.measures import complexity_defaults as jiang_defaults
from theoryscope.sweeps.figures import Figure
from theoryscope.sweeps.panels import Rows, distinct, pyplot
from theoryscope.sweeps.measures.base import Grid, Measure

# torch and core's trainers and measures load in the functions that train or measure, so that
# reading results, planning and the CLI's --help, query and status do without them.
if TYPE_CHECKING:
    import torch

    from theoryscope.core import nets
    from theoryscope.core.measures.complexity import Net
    from theoryscope.core.train import FamilyResult, StackedData

# The measures, by what computes them (Jiang et al. 2020, Appendix C; README, "Which
# theory predicts generalization", cites each formula).
NORMS = ("log_prod_spec", "log_prod_fro", "sum_fro_over_spec", "param_norm", "path_norm", "spectral_complexity",
         "params", "dist_fro", "dist_spec")
MARGINS = ("margin", "inverse_margin", "log_spec_over_margin", "log_fro_over_margin", "path_norm_over_margin")
PACBAYES = ("pacbayes_sigma", "pacbayes_bound", "pacbayes_flatness", "pacbayes_mag_sigma", "pacbayes_mag_bound",
            "pacbayes_mag_flatness")
CURVATURE = ("sharpness", "hessian_top")
MEASURE_NAMES = (*NORMS, *MARGINS, *PACBAYES, *CURVATURE)
# Arora et al.'s (2018) compression bound, read from `bounds` by the `complexity` view.
COMPRESSION = ("compression_q", "compression_bound")


@dataclass(frozen=True)
class PerturbationSpec:
    """How the flatness measures perturb the weights (Jiang et al. 2020, Appendix C)."""

    # PAC-Bayes sigma: the largest noise whose mean training error (loss for regression)
    # deviates by at most `target` (Jiang: 0.1 of accuracy), over `draws` Monte Carlo draws,
    # by `bisection_steps` of bisection on log sigma within `sigma_range`, ending at a sigma
    # whose deviation is within `tolerance` of the target (0: every step is taken).
    target: float = jiang_defaults.PACBAYES_TARGET
    tolerance: float = jiang_defaults.PACBAYES_TOLERANCE
    draws: int = jiang_defaults.PACBAYES_DRAWS
    bisection_steps: int = jiang_defaults.PACBAYES_STEPS
    sigma_range: tuple[float, ...] = jiang_defaults.SIGMA_RANGE
    # The magnitude-aware floor eps (noise sqrt(sigma'^2 w^2 + eps^2), box alpha (|w| + eps)).
    magnitude_eps: float = jiang_defaults.MAGNITUDE_EPS
    # Sharpness: the box radius alpha (|w| + eps) and the projected ascent steps in it.
    sharpness_alpha: float = jiang_defaults.SHARPNESS_ALPHA
    sharpness_steps: int = jiang_defaults.SHARPNESS_STEPS
    # Lanczos steps (Hessian-vector products) of the Hessian's top eigenvalue.
    hessian_iterations: int = jiang_defaults.HESSIAN_ITERATIONS
    # Seed of every draw (shared by the members of a family: common random numbers).
    seed: int = 0

    def __post_init__(self) -> None:
        require(is_finite(self.target) and self.target > 0, "target", "a number > 0", self.target)
        require(is_finite(self.tolerance) and 0 <= self.tolerance < self.target, "tolerance",
                "a number >= 0 and below target", self.tolerance)
        for name in ("draws", "bisection_steps", "sharpness_steps", "hessian_iterations"):
            require(getattr(self, name) >= 1, name, "an integer >= 1", getattr(self, name))
        low_high = self.sigma_range
        require(len(low_high) == 2 and all(is_finite(v) for v in low_high) and 0 < low_high[0] < low_high[1],
                "sigma_range", "[low, high] with 0 < low < high", list(low_high))
        require(is_finite(self.magnitude_eps) and self.magnitude_eps > 0, "magnitude_eps", "a number > 0",
                self.magnitude_eps)
        require(is_finite(self.sharpness_alpha) and self.sharpness_alpha >= 0, "sharpness_alpha", "a number >= 0",
                self.sharpness_alpha)
        require(self.seed >= 0, "seed", "an integer >= 0", self.seed)


@dataclass(frozen=True)
class ComplexitySpec:
    """Generalization measures of Jiang et al. (2020), stacked over each family."""

    # Steps at which to measure as well as after training.
    at: tuple[int, ...] = ()
    # Which measures; [] = every one (the margin-based ones for classification only).
    measures: tuple[str, ...] = ()
    # The margin gamma is this percentile of the training margins (Jiang: the 10th).
    margin_percentile: float = 10.0
    # Options of the flatness measures; a table (true: the defaults).
    perturbation: PerturbationSpec | None = PerturbationSpec()

    def __post_init__(self) -> None:
        require(all(s >= 0 for s in self.at), "at", "a list of integers >= 0", list(self.at))
        for i, name in enumerate(self.measures):
            require(name in MEASURE_NAMES, f"measures[{i}]", f"one of {', '.join(MEASURE_NAMES)}", name)
        require(len(set(self.measures)) == len(self.measures), "measures", "a list of distinct names",
                list(self.measures))
        require(is_finite(self.margin_percentile) and 0 < self.margin_percentile < 100, "margin_percentile",
                "a number in (0, 100)", self.margin_percentile)
        require(self.perturbation is not None, "perturbation",
                "a table of options or true (the defaults); leave measures out with `measures = [...]`",
                self.perturbation)

    def selected(self, classification: bool) -> tuple[str, ...]:
        """The measures computed on a family: those asked for, or all of them; never the
        margin-based ones on regression, where they do not exist."""
        names = self.measures or MEASURE_NAMES
        return tuple(n for n in names if classification or n not in MARGINS)

    def settings(self, classification: bool) -> str:
        """The options used, as JSON (``measures`` spelled out)."""
        used = dataclasses.asdict(self) | {"measures": list(self.selected(classification))}
        return json.dumps(used, sort_keys=True)


def check_complexity(opts: ComplexitySpec, grid: Grid, base: RunSpec) -> None:
    """Margin measures asked for by name need class labels, and an ``at`` step must be
    within the runs (the longest, when ``train.steps`` is swept)."""
    swept = dict(grid)
    kinds = swept.get("data.kind") or (base.data.kind,)
    margins = [n for n in opts.measures if n in MARGINS]
    regression = [k.value for k in kinds if not k.is_classification]
    if margins and regression:
        raise SpecError(f"measure.complexity.measures: {', '.join(margins)} need class labels (Jiang et al.'s margin "
                        f"is on classification), but data.kind is {', '.join(map(repr, regression))}; leave them out")
    longest = max(swept.get("train.steps") or (base.train.steps,))
    late = [s for s in opts.at if s > longest]
    if late:
        raise SpecError(f"measure.complexity.at: step {late[0]} is past the end of training (train.steps = {longest}); "
                        "use steps up to it")


COMPLEXITY = pa.schema([
    ("sweep", pa.string()),
    ("run_id", pa.string()),
    ("step", pa.int64()),
    ("measure", pa.string()),      # MEASURE_NAMES
    ("value", pa.float64()),       # NULL where undefined (gamma <= 0) or not finite (a diverged net)
    ("settings", pa.string()),     # ComplexitySpec.settings: the options used (JSON)
])

# What `theoryscope analyze` writes, one file per sweep and target.
RANKINGS = pa.schema([
    ("sweep", pa.string()),
    ("target", pa.string()),          # gen_gap | test_error | test_loss
    ("measure", pa.string()),
    ("n_runs", pa.int64()),           # finished runs with a value of the measure
    ("kendall_tau", pa.float64()),    # Jiang et al.'s Eq. 3 over every pair of runs
    ("tau_low", pa.float64()),        # 95 % bootstrap interval over runs
    ("tau_high", pa.float64()),
    ("granulated_psi", pa.float64()),  # Psi: the mean over swept axes of rankings_axes.tau
    ("cmi", pa.float64()),            # K: normalized conditional mutual information, min over <= 2 axes
    ("environments", pa.int64()),     # pairs of grid points differing in one swept field
    ("sign_error_mean", pa.float64()),  # Dziugaite et al.'s sign error, mean over environments
    ("sign_error_max", pa.float64()),   # and the worst environment
])
RANKINGS_AXES = pa.schema([
    ("sweep", pa.string()),
    ("target", pa.string()),
    ("measure", pa.string()),
    ("axis", pa.string()),            # the runs column of the swept field
    ("tau", pa.float64()),            # psi_i: tau within groups equal on every other axis, averaged
    ("n_groups", pa.int64()),         # groups of two or more runs
])
RANKINGS_ENVIRONMENTS = pa.schema([
    ("sweep", pa.string()),
    ("target", pa.string()),
    ("measure", pa.string()),
    ("axis", pa.string()),            # the field the two grid points differ in
    ("point_a", pa.string()),         # the grid points as JSON objects {axis: value}
    ("point_b", pa.string()),
    ("sign_error", pa.float64()),     # over every pairing of their runs (their seeds)
])
# Tables written once per sweep (and target), not once per family.
PER_SWEEP = frozenset({"rankings", "rankings_axes", "rankings_environments"})

# The view of `complexity`: its rows, and for the runs it measured Arora et al.'s q and
# bound from `bounds` (``[measure] cushions``), as two more measures.
WITH_COMPRESSION = """
        WITH stored AS ({stored})
        SELECT sweep, run_id, step, measure, value, settings FROM stored
        UNION ALL
        SELECT b.sweep, b.run_id, b.step, m.measure,
               CASE m.measure WHEN 'compression_q' THEN b.effective_params ELSE b.bound_formula END AS value,
               CAST(NULL AS VARCHAR) AS settings
        FROM bounds b CROSS JOIN (VALUES ('compression_q'), ('compression_bound')) AS m(measure)
        WHERE EXISTS (SELECT 1 FROM stored s WHERE s.sweep = b.sweep AND s.run_id = b.run_id)"""


def snapshot_steps(opts: ComplexitySpec, run: RunSpec) -> set[int]:
    """The ``at`` steps within the run, and the last one."""
    return {s for s in opts.at if s <= run.train.steps} | {run.train.steps}


def stacked_init(runs: Sequence[RunSpec], like: nets.Params) -> nets.Params:
    """Every member's init (an MLP's or a CNN's), rebuilt from its seed, in ``like``'s
    dtype and device."""
    from theoryscope.sweeps.weights import family_init  # sweeps.weights reads the measure registry

    first = like.tensors()[0]
    return family_init(runs, first.dtype, first.device)


def net_of(run: RunSpec) -> Net:
    """What ``core.measures.complexity`` needs to know of a run's nets (``Net``): its
    ``cnn.ConvArch`` for a CNN, else whether it is nonlinear."""
    from theoryscope.core import models, nets

    if run.model.kind is ModelKind.CNN:
        return nets.conv_arch(run.model, run.data)
    return models.is_nonlinear(run.model.kind)


def measure_step(opts: ComplexitySpec, names: Sequence[str], params: nets.Params, init: nets.Params,
                 data: StackedData, net: Net, step: int) -> dict[str, torch.Tensor]:
    """The measures ``names`` of one family at one step, each ``[F]``: only the groups
    asked for are computed, each from its own seeded stream of shared draws.
    ``net``: the family's ``Net`` (``net_of``), a bool for MLPs and linear nets."""
    from theoryscope.core.measures import complexity as jiang
    from theoryscope.core.seeding import generator

    wanted, out = set(names), {}
    p = opts.perturbation
    if wanted & {*NORMS, *MARGINS}:
        out |= jiang.norm_measures(params, init, net)
    if wanted & set(MARGINS):
        out |= jiang.margin_measures(params, data.x_train, data.y_train, net, opts.margin_percentile, out)
    if wanted & set(PACBAYES):
        out |= jiang.pacbayes(params, init, data, net, generator=generator(p.seed, "pacbayes"),
                              target=p.target, tolerance=p.tolerance, draws=p.draws,
                              bisection_steps=p.bisection_steps, magnitude_eps=p.magnitude_eps,
                              sigma_range=tuple(p.sigma_range))
    if "sharpness" in wanted:
        out["sharpness"] = jiang.sharpness(params, data, net, generator=generator(p.seed, "sharpness"),
                                           alpha=p.sharpness_alpha, eps=p.magnitude_eps, steps=p.sharpness_steps)
    if "hessian_top" in wanted:
        out["hessian_top"] = jiang.hessian_top(params, data, net, generator=generator(p.seed, "hessian"),
                                               iterations=p.hessian_iterations)
    return {name: out[name] for name in names}


def complexity_table(opts: ComplexitySpec, sweep: str, runs: Sequence[RunSpec],
                     result: FamilyResult) -> dict[str, pa.Table]:
    """The ``complexity`` rows of every member, measure and measured step: run-major,
    then step, then measure in ``MEASURE_NAMES`` order."""
    data = result.data
    names = opts.selected(data.classification)
    net = net_of(runs[0])
    steps = sorted(snapshot_steps(opts, runs[0]) & set(result.snapshots))
    init = stacked_init(runs, result.snapshots[steps[-1]])
    values = np.empty((len(runs), len(steps), len(names)))
    for k, step in enumerate(steps):
        measured = measure_step(opts, names, result.snapshots[step], init, data, net, step)
        values[:, k, :] = np.stack([measured[n].detach().double().cpu().numpy() for n in names], axis=-1)
    n = values.size
    flat = values.reshape(-1)
    columns = {
        "sweep": pa.array([sweep] * n, pa.string()),
        "run_id": pa.array(np.repeat([r.run_id for r in runs], len(steps) * len(names)), pa.string()),
        "step": pa.array(np.tile(np.repeat(steps, len(names)), len(runs)), pa.int64()),
        "measure": pa.array(np.tile(names, len(runs) * len(steps)), pa.string()),
        "value": pa.array(flat, pa.float64(), mask=~np.isfinite(flat)),
        "settings": pa.array([opts.settings(data.classification)] * n, pa.string()),
    }
    return {"complexity": pa.table(columns, schema=COMPLEXITY)}


# ---------------------------------------------------------------------------------------
# Figures of the rankings
# ---------------------------------------------------------------------------------------

def draw_tau_table(rows: Rows, _: Sequence[str]):
    """Jiang et al.'s tables of rank correlation: per measure (rows, best overall tau
    first) the tau within each swept axis, their mean Psi and the tau over all pairs;
    one panel per target."""
    if not rows:
        return None
    plt = pyplot()
    targets = distinct(rows, "target")
    axes_names = distinct(rows, "axis")
    columns = [*axes_names, "Ψ", "τ"]
    fig, panels = plt.subplots(1, len(targets), squeeze=False, layout="constrained",
                               figsize=(0.7 * len(columns) * len(targets) + 3.5,
                                        0.3 * len(distinct(rows, "measure")) + 1.6))
    for ax, target in zip(panels[0], targets):
        mine = [r for r in rows if r["target"] == target]
        overall = {r["measure"]: r for r in mine}
        order = sorted(overall, key=lambda m: -_number(overall[m]["kendall_tau"], -2.0))
        cell = {(r["measure"], r["axis"]): r["tau"] for r in mine}
        grid = np.array([[_number(cell.get((m, a))) for a in axes_names]
                         + [_number(overall[m]["granulated_psi"]), _number(overall[m]["kendall_tau"])]
                         for m in order])
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if abs(v) > 0.6 else "k")
        ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
        ax.set_yticks(range(len(order)), order, fontsize=8)
        ax.set_title(f"target {target}")
    fig.colorbar(image, ax=panels[0].tolist(), label="Kendall τ")
    return fig


def draw_sign_errors(rows: Rows, _: Sequence[str]):
    """Dziugaite et al.'s robust view: the sign error of every environment, per measure
    (best mean on top), one panel per target, the mean marked."""
    rows = [r for r in rows if r["sign_error"] is not None]
    if not rows:
        return None
    plt = pyplot()
    targets = distinct(rows, "target")
    count = len(distinct(rows, "measure"))
    fig, panels = plt.subplots(1, len(targets), squeeze=False, layout="constrained", sharey=False,
                               figsize=(5 * len(targets) + 1, 0.3 * count + 1.6))
    for ax, target in zip(panels[0], targets):
        by_measure: dict[str, list[float]] = {}
        for r in rows:
            if r["target"] == target:
                by_measure.setdefault(r["measure"], []).append(r["sign_error"])
        order = sorted(by_measure, key=lambda m: np.mean(by_measure[m]), reverse=True)
        for k, measure in enumerate(order):
            errors = np.array(by_measure[measure])
            jitter = np.linspace(-0.25, 0.25, len(errors)) if len(errors) > 1 else np.zeros(1)
            ax.scatter(errors, k + jitter, s=9, alpha=0.5, color="tab:blue", lw=0)
            ax.scatter([errors.mean()], [k], marker="^", s=40, color="tab:red", zorder=3)
        ax.set_yticks(range(len(order)), order, fontsize=8)
        ax.axvline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("sign error per environment (0.5: a coin)")
        ax.set_title(f"target {target}")
    return fig


def _number(value, missing: float = math.nan) -> float:
    return missing if value is None else float(value)


MEASURE = Measure(
    name="complexity",
    options=ComplexitySpec,
    check=check_complexity,
    tables={"complexity": COMPLEXITY, "rankings": RANKINGS, "rankings_axes": RANKINGS_AXES,
            "rankings_environments": RANKINGS_ENVIRONMENTS},
    snapshot_steps=snapshot_steps,
    rows=complexity_table,
    # Views are made in registry order: cushions' `bounds` comes before this one.
    enriched={"complexity": WITH_COMPRESSION},
    per_sweep=PER_SWEEP,
    models=frozenset({ModelKind.MLP, ModelKind.LINEAR, ModelKind.CNN}),
    figures=(
        Figure("rankings-tau", "Which measure ranks the nets: Kendall τ per swept axis",
               "SELECT a.target, a.measure, a.axis, a.tau, r.granulated_psi, r.kendall_tau FROM rankings_axes a "
               "JOIN rankings r USING (sweep, target, measure) WHERE a.sweep = {sweep}", draw_tau_table,
               "Per measure and swept axis, τ between the measure and the target within groups of runs equal in "
               "every other swept field, averaged over groups; Ψ their mean, τ over all pairs of runs (Jiang et "
               "al. 2020, Section 4.1, Eq. 3). Written by `theoryscope analyze`."),
        Figure("rankings-sign-errors", "Robustness: sign errors over environments",
               "SELECT target, measure, sign_error FROM rankings_environments WHERE sweep = {sweep}",
               draw_sign_errors,
               "Per measure, the sign error of every environment (two grid points differing in one swept field, "
               "seeds averaged; Dziugaite et al. 2020): 0 the measure orders the pair as the target does, 1 it "
               "never does; red triangles are the means, the rightmost point the worst environment. Written by "
               "`theoryscope analyze`."),
    ),
)

"""The ``valleys`` measure: barriers between trained solutions of one family
(Freeman & Bruna 2017; Garipov et al. 2018).

Runs that differ only in ``measure.valleys.pairs`` (by default the seed) are minima of the
same training loss; every two of them form a pair, and the ends of every pair are packed
into one family (``pair_key``). All pairs of a family are relaxed together as one stacked
problem: each bead (or Bezier control point) is one more member of a stacked net, with
its pair's data and its runs' optimizer settings (``core.measures.landscape``). The loss
along the path is the training loss the nets were trained on (the mean loss, as in
``runs``), read with the test loss and error at the same points. A pair is connected
when its barrier is at most ``tolerance`` x the worse end's loss (floored), Freeman &
Bruna's level set at alpha L0; the barrier's fall over the last tenth of the relaxation
says whether the path had settled (``core.measures.valley.relative_barrier``,
``barrier_change``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from theoryscope.core.config import Choice, RunSpec, is_finite, require
from theoryscope.core.errors import SpecError
from theoryscope.sweeps.figures import Figure
from theoryscope.sweeps.panels import (
    Rows, column, key_line, layout, matching, mean_note, note, panel_grid, setting, shared_legend, with_spread,
)
from theoryscope.sweeps.measures.base import Grid, Measure
from theoryscope.sweeps.records import nullable
from theoryscope.sweeps.shorthands import grid_name

# torch and core's trainers and measures load in the functions that train or measure, so that
# reading results, planning and the CLI's --help, query and status do without them.
if TYPE_CHECKING:
    import torch

    from theoryscope.core.measures.landscape import PairLandscape
    from theoryscope.core.train import FamilyResult


class PathMethod(Choice):
    STRING = "string"
    BEZIER = "bezier"
    LINEAR = "linear"


# The barrier is recorded at HISTORY + 1 evenly spaced steps of the relaxation, so
# barrier_change is its fall over the last 1/HISTORY (a tenth) of the steps.
HISTORY = 10

# Fields two runs of a valley pair may differ in: they change neither the loss (the data)
# nor the shapes, so both ends are minima of one landscape trained in one family.
PAIRABLE = ("seed", "model.init_scale", "model.init", "train.lr", "train.momentum", "train.weight_decay",
            "train.beta1", "train.beta2", "train.eps")


@dataclass(frozen=True)
class ValleySpec:
    """Connectivity of solutions (Freeman & Bruna 2017; Garipov et al. 2018)."""

    # Runs that differ only in this swept field are paired: "seed", "init_scale", "model.init"
    # or an optimizer setting ("train.lr", "train.momentum", ...).
    pairs: str = "seed"
    # The path: "string" (beads relaxed toward the minimum-energy path), "bezier" (a
    # trained quadratic Bezier curve) or "linear" (the straight segment only).
    method: PathMethod = PathMethod.STRING
    # Interior beads of the string (string), or t samples per step (bezier).
    beads: int = 8
    # Relaxation steps of the string or training steps of the Bezier control point.
    steps: int = 500
    # Step size of the relaxation; 0 = each pair's own train.lr (with its optimizer).
    lr: float = 0.0
    # Initial bend, perpendicular to the segment, relative to the distance of the ends.
    perturbation: float = 0.05
    # Independently bent strings (or curves) per pair; the lowest barrier is kept.
    restarts: int = 1
    # Loss evaluations per segment between beads (the Bezier curve gets the same total).
    refine: int = 8
    # A pair is connected when relative_barrier = barrier / max(loss_a, loss_b, floor) is at
    # most this: the path stays below (1 + tolerance) x the worse end's loss (Freeman &
    # Bruna's level set at alpha L0, alpha = 1 + tolerance).
    tolerance: float = 0.05
    # The smallest end loss a barrier is compared with, as a fraction of the zero
    # predictor's loss: ends that fit their data to ~0 loss are judged against this.
    end_loss_floor: float = 1e-3
    # The string (or Bezier curve) counts as converged when its relative barrier fell by
    # at most this over the last tenth of the relaxation steps.
    change_tolerance: float = 0.01
    # Seed of the bends and of the Bezier t samples.
    seed: int = 0

    def __post_init__(self) -> None:
        target = {"init_scale": "model.init_scale"}.get(self.pairs, self.pairs)
        require(target in PAIRABLE, "pairs", " | ".join(f'"{p}"' for p in ("seed", "init_scale", *PAIRABLE[2:])),
                 self.pairs)
        object.__setattr__(self, "pairs", target)
        for name in ("beads", "steps", "restarts", "refine"):
            require(getattr(self, name) >= 1, name, "an integer >= 1", getattr(self, name))
        require(is_finite(self.lr) and self.lr >= 0, "lr", "a number >= 0 (0 = the runs' own lr)", self.lr)
        require(is_finite(self.perturbation) and self.perturbation >= 0, "perturbation", "a number >= 0",
                 self.perturbation)
        for name in ("tolerance", "end_loss_floor", "change_tolerance"):
            value = getattr(self, name)
            require(is_finite(value) and value >= 0, name, "a number >= 0", value)
        require(self.seed >= 0, "seed", "an integer >= 0", self.seed)


# One row per pair of runs that differ only in the paired field (Freeman & Bruna 2017):
# the loss along a path from run_a's weights to run_b's, both on run_a's training data.
VALLEYS = pa.schema([
    ("sweep", pa.string()),
    ("run_a", pa.string()),
    ("run_b", pa.string()),
    ("method", pa.string()),                  # string | bezier | linear
    ("barrier", pa.float64()),                # max training loss on the path - max(loss_a, loss_b)
    ("normalized_length", pa.float64()),      # path length / ||theta_b - theta_a||; 1 = straight
    ("beads", pa.int64()),                    # trained points: string beads, 1 (Bezier), 0 (linear)
    ("connected", pa.bool_()),                # relative_barrier <= tolerance
    ("status", pa.string()),                  # ok | relaxation-stopped | end-diverged
    ("pairs", pa.string()),                   # the field the two runs differ in
    ("value_a", pa.string()),                 # its values (JSON)
    ("value_b", pa.string()),
    ("loss_a", pa.float64()),                 # training loss at the ends
    ("loss_b", pa.float64()),
    ("max_loss", pa.float64()),               # highest training loss on the path
    ("linear_barrier", pa.float64()),         # the straight segment's barrier, for comparison
    ("loss_scale", pa.float64()),             # training loss of the zero predictor
    ("relative_barrier", pa.float64()),       # barrier / max(loss_a, loss_b, end_loss_floor x loss_scale)
    ("barrier_over_scale", pa.float64()),     # barrier / loss_scale
    ("barrier_change", pa.float64()),         # fall of relative_barrier over the last 10% of the steps
    ("converged", pa.bool_()),                # |barrier_change| <= change_tolerance; null: linear, stopped
    ("max_test_loss", pa.float64()),          # highest test loss on the path
    ("max_test_error", pa.float64()),         # highest test 0-1 error on the path (classification)
    ("steps", pa.int64()),                    # relaxation steps (0 for linear)
    ("lr", pa.float64()),                     # relaxation step size
    ("perturbation", pa.float64()),
    ("restarts", pa.int64()),
    ("refine", pa.int64()),                   # loss evaluations per segment between beads
    ("tolerance", pa.float64()),
    ("end_loss_floor", pa.float64()),
    ("change_tolerance", pa.float64()),
    ("stopped_step", pa.int64()),             # relaxation stopped on a non-finite loss; null if not
    ("wall_seconds", pa.float64()),           # the whole family's valley measurement
])


def check_pairs(opts: ValleySpec, grid: Grid, _: RunSpec) -> None:
    """Valley pairs need the paired field swept over at least two values."""
    swept = dict(grid).get(opts.pairs, ())
    if len(swept) < 2:
        raise SpecError(f"measure.valleys.pairs: {opts.pairs} must be swept in [grid] over at least two "
                        f"values to pair runs (e.g. {grid_name(opts.pairs)} = [0, 1])")


def pair_key(opts: ValleySpec, run: RunSpec) -> str:
    """The ends of every pair train in one family."""
    return pair_group(run, opts.pairs)


def paired_value(run: RunSpec, field: str) -> Any:
    """The run's value of ``field`` ("seed" or "section.name"), as plain JSON."""
    if field == "seed":
        return run.seed
    section, _, name = field.partition(".")
    value = getattr(getattr(run, section), name)
    return getattr(value, "value", value)


def pair_group(run: RunSpec, field: str) -> str:
    """The run's canonical config without ``field``: runs with the same group differ in
    that field alone."""
    config = run.to_config()
    if field == "seed":
        config.pop("seed")
    else:
        section, _, name = field.partition(".")
        config[section].pop(name, None)
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def pairs_of(runs: Sequence[RunSpec], field: str) -> list[tuple[int, int]]:
    """Index pairs (i, j) of runs in one group, every two once, the smaller value first."""
    groups: dict[str, list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(pair_group(run, field), []).append(i)
    pairs = []
    for members in groups.values():
        ordered = sorted(members, key=lambda i: _order(paired_value(runs[i], field)))
        pairs.extend(itertools.combinations(ordered, 2))
    return pairs


def _order(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def valley_tables(opts: ValleySpec, sweep: str, runs: Sequence[RunSpec], result: FamilyResult) -> dict[str, pa.Table]:
    """One ``valleys`` row per pair of the family's runs."""
    pairs = pairs_of(runs, opts.pairs)
    rows = []
    if pairs:
        started = time.perf_counter()
        rows = _pair_rows(opts, sweep, runs, result, pairs)
        seconds = time.perf_counter() - started
        for row in rows:
            row["wall_seconds"] = seconds
    return {"valleys": pa.Table.from_pylist(rows, schema=VALLEYS)}


def _pair_rows(opts: ValleySpec, sweep: str, runs: Sequence[RunSpec], result: FamilyResult,
               all_pairs: list[tuple[int, int]]) -> list[dict]:
    diverged = result.diverged_step >= 0
    pairs = [(i, j) for i, j in all_pairs if not (diverged[i] or diverged[j])]
    rows = [_row(opts, sweep, runs, i, j) | {"status": "end-diverged"}
            for i, j in all_pairs if diverged[i] or diverged[j]]
    if not pairs:
        return rows
    host, stopped = _measure_pairs(opts, runs, result, pairs)
    for k, (i, j) in enumerate(pairs):
        row = _row(opts, sweep, runs, i, j) | {name: nullable(v[k]) for name, v in host.items()}
        relative, change = host["relative_barrier"][k], host["barrier_change"][k]
        settled = math.isfinite(change) and stopped[k] < 0  # a stopped string froze: no verdict
        row |= {"connected": bool(relative <= opts.tolerance) if not math.isnan(relative) else None,
                "converged": bool(abs(change) <= opts.change_tolerance) if settled else None,
                "stopped_step": int(stopped[k]) if stopped[k] >= 0 else None,
                "status": "ok" if stopped[k] < 0 else "relaxation-stopped"}
        rows.append(row)
    return rows


def _measure_pairs(opts: ValleySpec, runs: Sequence[RunSpec], result: FamilyResult,
                   pairs: list[tuple[int, int]]) -> tuple[dict[str, Any], Any]:
    """Every pair's numbers as host arrays, and the steps at which relaxations stopped."""
    import torch

    from theoryscope.core import models
    from theoryscope.core.measures.landscape import PairLandscape
    from theoryscope.core.measures.valley import barrier_change, linear_barrier, polyline, relative_barrier
    from theoryscope.core.train import objective_scale

    first, device = runs[0], result.data.x_train.device
    ends_a = torch.tensor([i for i, _ in pairs], device=device)
    ends_b = torch.tensor([j for _, j in pairs], device=device)
    scale = 1.0 if result.data.classification else objective_scale(first.train.objective, result.data.y_train)
    land = PairLandscape(result, ends_a, models.is_nonlinear(first.model.kind), scale)
    theta = land.flatten(result.params)
    a, b = theta[ends_a], theta[ends_b]
    points = (opts.beads + 1) * opts.refine + 1
    path, refine, stopped, history = _path(opts, land, a, b, pairs, runs, points)
    along, _ = polyline(path, refine)
    train_loss, _ = land.evaluate(along, train=True)
    test_loss, test_error = land.evaluate(along, train=False)
    loss_a, loss_b = train_loss[:, 0], train_loss[:, -1]
    barrier = train_loss.amax(dim=1) - torch.maximum(loss_a, loss_b)
    scale_zero = land.zero_predictor_loss()
    floor = opts.end_loss_floor * scale_zero
    nothing = torch.full_like(barrier, math.nan)
    numbers = {
        "barrier": barrier, "normalized_length": path.diff(dim=1).norm(dim=-1).sum(dim=1) / (b - a).norm(dim=1),
        "loss_a": loss_a, "loss_b": loss_b, "max_loss": train_loss.amax(dim=1),
        "linear_barrier": linear_barrier(land.train_loss, a, b, points=points, batched=True),
        "loss_scale": scale_zero, "relative_barrier": relative_barrier(barrier, loss_a, loss_b, floor),
        "barrier_over_scale": barrier / scale_zero,
        # The relaxation's records are of the objective, land.objective_scale x the mean loss.
        "barrier_change": nothing if history is None else
        barrier_change(history / land.objective_scale, loss_a, loss_b, floor),
        "max_test_loss": test_loss.amax(dim=1),
        "max_test_error": nothing if test_error is None else test_error.amax(dim=1),
    }
    return {k: v.detach().double().cpu().numpy() for k, v in numbers.items()}, stopped.cpu().numpy()


def _path(opts: ValleySpec, land: PairLandscape, a: torch.Tensor, b: torch.Tensor, pairs: list[tuple[int, int]],
          runs: Sequence[RunSpec], points: int) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor | None]:
    """The relaxed path ``[P, K, D]`` of every pair, its refinement for evaluation, the
    steps at which pairs stopped (-1: never) and the barrier recorded over the relaxation
    (``[P, R]``, in the objective's units; None for the straight line)."""
    import torch

    from theoryscope.core.measures.valley import bezier_barrier, segment, string_barrier
    from theoryscope.core.seeding import derive_seed
    from theoryscope.core.train import member_hyper

    never = torch.full((a.shape[0],), -1, dtype=torch.long)
    if opts.method is PathMethod.LINEAR:
        return segment(a, b, points), 1, never, None
    hyper = member_hyper([runs[i] for i, _ in pairs], a.dtype, a.device)
    if opts.lr > 0:
        hyper = dataclasses.replace(hyper, lr=torch.full_like(hyper.lr, opts.lr))
    common = dict(steps=opts.steps, hyper=hyper, optimizer=runs[0].train.optimizer, perturbation=opts.perturbation,
                  seed=[derive_seed(opts.seed, runs[i].run_id, runs[j].run_id) for i, j in pairs],
                  restarts=opts.restarts, history=HISTORY, batched=True)
    if opts.method is PathMethod.STRING:
        found = string_barrier(land.objective, a, b, beads=opts.beads, refine=opts.refine, **common)
        return found["path"], opts.refine, found["stopped_step"], found["history"]
    found = bezier_barrier(land.objective, a, b, samples=opts.beads, points=points, **common)
    return found["path"], 1, found["stopped_step"], found["history"]


def _row(opts: ValleySpec, sweep: str, runs: Sequence[RunSpec], i: int, j: int) -> dict:
    lr = opts.lr if opts.lr > 0 else runs[i].train.lr
    return {"sweep": sweep, "run_a": runs[i].run_id, "run_b": runs[j].run_id, "method": opts.method.value,
            "beads": {PathMethod.STRING: opts.beads, PathMethod.BEZIER: 1, PathMethod.LINEAR: 0}[opts.method],
            "pairs": opts.pairs, "value_a": json.dumps(paired_value(runs[i], opts.pairs)),
            "value_b": json.dumps(paired_value(runs[j], opts.pairs)),
            "steps": 0 if opts.method is PathMethod.LINEAR else opts.steps,
            "lr": None if opts.method is PathMethod.LINEAR else lr, "perturbation": opts.perturbation,
            "restarts": opts.restarts, "refine": opts.refine, "tolerance": opts.tolerance,
            "end_loss_floor": opts.end_loss_floor, "change_tolerance": opts.change_tolerance}


def draw_valleys(rows: Rows, swept: Sequence[str]):
    """Relative barrier (found path solid, straight line dashed) and normalized length
    against width, mean over pairs with min–max bars, one line per depth (else the first
    other swept field), one panel per value of the others."""
    rows = [r for r in rows if r["barrier"] is not None]
    if not rows:
        return None
    shape = layout(rows, swept, shown=("width",), lines=("depth",))
    rows = shape.keep(rows)
    keys = shape.panel_keys(rows)
    fig, (barriers, lengths) = panel_grid(len(keys), metrics=2)
    styles = shape.styles(rows)
    for top, bottom, key in zip(barriers, lengths, keys):
        mine = matching(rows, shape.panels, key)
        for line in shape.line_keys(mine):
            points = sorted(matching(mine, shape.lines, line), key=lambda r: r["width"] or 0)
            widths = [r["width"] or 1 for r in points]
            style = {**styles[line], "ls": "-"}
            name = shape.line_label(line) if shape.lines else setting(("depth",), (points[0]["depth"],))
            with_spread(top, [{**r, "width": w} for r, w in zip(points, widths)], "width", "barrier", name, style)
            top.plot(widths, column(points, "straight"), ls="--", color=style["color"], lw=1)
            bottom.plot(widths, column(points, "length"), marker="o", color=style["color"])
        top.set_yscale("symlog", linthresh=1e-3)
        top.set_ylabel("barrier / worse end loss")
        bottom.set_ylabel("normalized path length")
        ticks = sorted({r["width"] or 1 for r in mine})
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, [str(w) for w in ticks])
            ax.minorticks_off()
            ax.set_xlabel("width")
            ax.set_title(shape.panel_title(key), fontsize=9)
    shared_legend(fig, [key_line("-", "relaxed path", "o"), key_line("--", "straight line")])
    note(fig, mean_note(rows, "bars: min–max", count="pairs", of="pairs"), shape.held_note())
    return fig


MEASURE = Measure(
    name="valleys",
    options=ValleySpec,
    check=check_pairs,
    tables={"valleys": VALLEYS},
    together=pair_key,
    rows=valley_tables,
    figures=(
        Figure("valleys", "Barriers and path lengths against width",
               "SELECT {fields}r.depth, r.width, count(*) AS pairs, avg(v.relative_barrier) AS barrier, "
               "min(v.relative_barrier) AS low, max(v.relative_barrier) AS high, "
               "avg(v.linear_barrier / greatest(v.loss_a, v.loss_b, v.end_loss_floor * v.loss_scale)) AS straight, "
               "avg(v.normalized_length) AS length FROM valleys v JOIN runs r ON r.sweep = v.sweep AND "
               "r.run_id = v.run_a WHERE v.sweep = {sweep} GROUP BY ALL", draw_valleys,
               "Barrier over the worse end's loss (relative_barrier) along the relaxed path (solid, min–max bars "
               "over pairs) and the straight line (dashed) between pairs of solutions, and the found path's "
               "normalized length, mean over pairs, per width, one line per depth, one panel per value of every "
               "other swept field (the first run's of each pair)."),
    ),
)

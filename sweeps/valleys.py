"""The ``valleys`` measure: barriers between trained solutions of one family.

Runs that differ only in ``measure.valleys.pairs`` (by default the seed) are minima of the
same training loss; every two of them form a pair. All pairs of a family are relaxed
together as one stacked problem: each bead (or Bezier control point) is one more member
of a stacked net, with its pair's data and its runs' optimizer settings. The loss along
the path is the training loss the nets were trained on (the mean loss, as in ``runs``),
read with the test loss and error at the same points.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence

import pyarrow as pa
import torch

from core import models
from core.measures.valley import bezier_barrier, linear_barrier, polyline, segment, string_barrier
from core.seeding import derive_seed
from core.train import FamilyResult, StackedData, member_hyper, member_losses
from storage import schemas
from sweeps.pairs import paired_value, pairs_of
from sweeps.records import nullable
from sweeps.spec import Objective, PathMethod, RunSpec, ValleySpec

# Largest number of activations (members x samples x widest layer) one evaluation holds.
EVALUATION_BUDGET = 2**26


class PairLandscape:
    """The training and test losses of a family's nets as functions of flat parameter
    vectors, for pairs whose ends are members ``ends``: points ``[P, M, D]`` -> ``[P, M]``."""

    def __init__(self, result: FamilyResult, ends: torch.Tensor, nonlinear: bool, objective_scale: float):
        data: StackedData = result.data
        self.data, self.nonlinear, self.objective_scale = data, nonlinear, objective_scale
        self.x_train, self.y_train = data.x_train[ends], data.y_train[ends]
        self.x_test, self.y_test = data.x_test[ends], data.y_test[ends]
        tensors = result.params.tensors()
        self.shapes = [t.shape[1:] for t in tensors]
        self.n_weights = len(result.params.weights)
        self.widest = max(max(s) for s in self.shapes)

    def flatten(self, params: models.Params) -> torch.Tensor:
        """``[F, D]``: every member's weights then biases, layer 1 first."""
        return torch.cat([t.flatten(1) for t in params.tensors()], dim=1).to(self.x_train)

    def _params(self, flat: torch.Tensor) -> models.Params:
        sizes = [math.prod(s) for s in self.shapes]
        tensors = [t.reshape(flat.shape[0], *s) for t, s in zip(flat.split(sizes, dim=1), self.shapes)]
        return models.Params(tensors[:self.n_weights], tensors[self.n_weights:] or None)

    def _losses(self, points: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
        p, m, d = points.shape
        xs = x.unsqueeze(1).expand(p, m, *x.shape[1:]).reshape(p * m, *x.shape[1:])
        ys = y.unsqueeze(1).expand(p, m, *y.shape[1:]).reshape(p * m, *y.shape[1:])
        out = models.forward(self._params(points.reshape(p * m, d)), xs, self.nonlinear)
        loss, error = member_losses(out, ys, self.data.classification)
        return loss.view(p, m), None if error is None else error.view(p, m)

    def objective(self, points: torch.Tensor) -> torch.Tensor:
        """What the runs minimized (``train.objective``), for the relaxation."""
        return self._losses(points, self.x_train, self.y_train)[0] * self.objective_scale

    def train_loss(self, points: torch.Tensor) -> torch.Tensor:
        return self.evaluate(points, train=True)[0]

    @torch.no_grad()
    def evaluate(self, points: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean loss and (classification) error ``[P, M]``, in chunks of points that keep
        the activations within ``EVALUATION_BUDGET``."""
        x, y = (self.x_train, self.y_train) if train else (self.x_test, self.y_test)
        p, m, _ = points.shape
        chunk = max(1, EVALUATION_BUDGET // (p * x.shape[1] * self.widest))
        parts = [self._losses(points[:, i:i + chunk], x, y) for i in range(0, m, chunk)]
        loss = torch.cat([l for l, _ in parts], dim=1)
        error = None if parts[0][1] is None else torch.cat([e for _, e in parts], dim=1)
        return loss, error

    def zero_predictor_loss(self) -> torch.Tensor:
        """``[P]`` loss of a net that outputs 0: mean y^2 (regression), ln C (classification)."""
        if self.data.classification:
            classes = self.shapes[self.n_weights - 1][0]
            return torch.full((self.x_train.shape[0],), math.log(classes), dtype=self.x_train.dtype,
                              device=self.x_train.device)
        return (self.y_train ** 2).mean(dim=(1, 2))


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
    return {"valleys": pa.Table.from_pylist(rows, schema=schemas.VALLEYS)}


def _pair_rows(opts: ValleySpec, sweep: str, runs: Sequence[RunSpec], result: FamilyResult,
               all_pairs: list[tuple[int, int]]) -> list[dict]:
    diverged = result.diverged_step >= 0
    pairs = [(i, j) for i, j in all_pairs if not (diverged[i] or diverged[j])]
    rows = [_row(opts, sweep, runs, i, j) | {"status": "end-diverged"}
            for i, j in all_pairs if diverged[i] or diverged[j]]
    if not pairs:
        return rows
    first = runs[0]
    device = result.data.x_train.device
    ends_a = torch.tensor([i for i, _ in pairs], device=device)
    ends_b = torch.tensor([j for _, j in pairs], device=device)
    scale = 1.0
    if first.train.objective is Objective.HALF_SUM and not result.data.classification:
        scale = result.data.y_train.shape[1] * result.data.y_train.shape[2] / 2
    land = PairLandscape(result, ends_a, models.is_nonlinear(first.model.kind), scale)
    theta = land.flatten(result.params)
    a, b = theta[ends_a], theta[ends_b]
    points = (opts.beads + 1) * opts.refine + 1
    path, refine, stopped = _path(opts, land, a, b, pairs, runs, points)
    along, _ = polyline(path, refine)
    train_loss, _ = land.evaluate(along, train=True)
    test_loss, test_error = land.evaluate(along, train=False)
    straight = linear_barrier(land.train_loss, a, b, points=points, batched=True)
    end_loss = torch.maximum(train_loss[:, 0], train_loss[:, -1])
    barrier = train_loss.amax(dim=1) - end_loss
    scale_zero = land.zero_predictor_loss()
    relative = barrier / scale_zero
    length = (path[:, 1:] - path[:, :-1]).norm(dim=-1).sum(dim=1) / (b - a).norm(dim=1)
    host = {k: v.detach().double().cpu().numpy() for k, v in {
        "barrier": barrier, "normalized_length": length, "loss_a": train_loss[:, 0], "loss_b": train_loss[:, -1],
        "max_loss": train_loss.amax(dim=1), "linear_barrier": straight, "loss_scale": scale_zero,
        "barrier_relative": relative, "max_test_loss": test_loss.amax(dim=1),
        "max_test_error": test_error.amax(dim=1) if test_error is not None else torch.full_like(barrier, math.nan),
    }.items()}
    stopped = stopped.cpu().numpy()
    for k, (i, j) in enumerate(pairs):
        row = _row(opts, sweep, runs, i, j) | {name: nullable(v[k]) for name, v in host.items()}
        rel = host["barrier_relative"][k]
        row |= {"connected": bool(rel <= opts.tolerance) if math.isfinite(rel) else None,
                "stopped_step": int(stopped[k]) if stopped[k] >= 0 else None,
                "status": "ok" if stopped[k] < 0 else "relaxation-stopped"}
        rows.append(row)
    return rows


def _path(opts: ValleySpec, land: PairLandscape, a: torch.Tensor, b: torch.Tensor, pairs: list[tuple[int, int]],
          runs: Sequence[RunSpec], points: int) -> tuple[torch.Tensor, int, torch.Tensor]:
    """The relaxed path ``[P, K, D]`` of every pair, its refinement for evaluation and the
    steps at which pairs stopped (-1: never)."""
    never = torch.full((a.shape[0],), -1, dtype=torch.long)
    if opts.method is PathMethod.LINEAR:
        return segment(a, b, points), 1, never
    hyper = member_hyper([runs[i] for i, _ in pairs], a.dtype, a.device)
    if opts.lr > 0:
        hyper = dataclasses.replace(hyper, lr=torch.full_like(hyper.lr, opts.lr))
    common = dict(steps=opts.steps, hyper=hyper, optimizer=runs[0].train.optimizer, perturbation=opts.perturbation,
                  seed=[derive_seed(opts.seed, runs[i].run_id, runs[j].run_id) for i, j in pairs],
                  restarts=opts.restarts, batched=True)
    if opts.method is PathMethod.STRING:
        found = string_barrier(land.objective, a, b, beads=opts.beads, refine=opts.refine, **common)
        return found["path"], opts.refine, found["stopped_step"]
    found = bezier_barrier(land.objective, a, b, samples=opts.beads, points=points, **common)
    return found["path"], 1, found["stopped_step"]


def _row(opts: ValleySpec, sweep: str, runs: Sequence[RunSpec], i: int, j: int) -> dict:
    lr = opts.lr if opts.lr > 0 else runs[i].train.lr
    return {"sweep": sweep, "run_a": runs[i].run_id, "run_b": runs[j].run_id, "method": opts.method.value,
            "beads": {PathMethod.STRING: opts.beads, PathMethod.BEZIER: 1, PathMethod.LINEAR: 0}[opts.method],
            "pairs": opts.pairs, "value_a": json.dumps(paired_value(runs[i], opts.pairs)),
            "value_b": json.dumps(paired_value(runs[j], opts.pairs)),
            "steps": 0 if opts.method is PathMethod.LINEAR else opts.steps,
            "lr": None if opts.method is PathMethod.LINEAR else lr, "perturbation": opts.perturbation,
            "restarts": opts.restarts, "refine": opts.refine, "tolerance": opts.tolerance}

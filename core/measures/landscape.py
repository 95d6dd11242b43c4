"""The losses of a family's nets as functions of flat parameter vectors.

Valleys (``core.measures.valley``) walk paths between two trained solutions of one
training loss; a family relaxes all its pairs at once, each path point one more member of
a stacked net with its pair's data. ``PairLandscape`` evaluates the training objective,
the mean training and test losses and the 0-1 error at points ``[P, M, D]`` (M points of
each of P pairs), the loss of the zero predictor (the scale barriers are compared with)
and flattens a family's weights into those vectors (Freeman & Bruna 2017).
"""

from __future__ import annotations

import math

import torch

from theoryscope.core import models
from theoryscope.core.train import FamilyResult, StackedData, member_losses

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

"""Optimizers over stacked families, each member with its own hyperparameters.

The update rules are PyTorch's (``torch.optim.SGD`` with dampening 0 and no Nesterov,
``torch.optim.Adam`` without amsgrad), written over ``[F, ...]`` tensors so a per-member
learning rate, momentum or beta is a broadcast, not a loop. Weight decay is added to the
gradient as PyTorch does. Members that are not ``active`` (diverged) are left unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from theoryscope.core.config import Optimizer


@dataclass(frozen=True)
class Hyper:
    """Per-member hyperparameters, each a ``[F]`` tensor on the family's device."""

    lr: torch.Tensor
    momentum: torch.Tensor
    weight_decay: torch.Tensor
    beta1: torch.Tensor
    beta2: torch.Tensor
    eps: torch.Tensor

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Hyper:
        """The same settings with ``fn`` applied to each (e.g. repeated per member)."""
        return Hyper(*(fn(getattr(self, f.name)) for f in dataclasses.fields(self)))


def _per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[F] -> [F, 1, ..., 1] broadcasting against ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


# Tensors of optimizer state per parameter tensor: SGD's momentum buffer, Adam's two moments.
STATE_TENSORS = {Optimizer.GD: 0, Optimizer.SGD: 1, Optimizer.ADAM: 2}


class StackedOptimizer:
    """Applies one kind of update to a list of stacked parameter tensors."""

    def __init__(self, kind: Optimizer, hyper: Hyper, params: list[torch.Tensor]):
        self.kind = kind
        self.t = 0
        self.state = [[torch.zeros_like(p) for _ in range(STATE_TENSORS[kind])] for p in params]
        # Per-member hyperparameters broadcast against each parameter, built once.
        names = ("lr", "momentum", "weight_decay", "beta1", "beta2", "eps")
        self.hyper = [{n: _per_member(getattr(hyper, n), p) for n in names} for p in params]
        self.decay = bool((hyper.weight_decay != 0).any())  # one host read, at construction

    @torch.no_grad()
    def step(self, params: list[torch.Tensor], grads: list[torch.Tensor], active: torch.Tensor) -> None:
        self.t += 1
        for p, g, state, h in zip(params, grads, self.state, self.hyper):
            if self.decay:
                g = g + h["weight_decay"] * p
            if self.kind is Optimizer.GD:
                update = h["lr"] * g
            elif self.kind is Optimizer.SGD:
                buf, = state
                buf.mul_(h["momentum"]).add_(g)
                update = h["lr"] * buf
            else:
                m, v = state
                m.mul_(h["beta1"]).add_((1 - h["beta1"]) * g)
                v.mul_(h["beta2"]).add_((1 - h["beta2"]) * g * g)
                bias1 = 1 - h["beta1"] ** self.t
                bias2 = 1 - h["beta2"] ** self.t
                update = (h["lr"] / bias1) * m / (v.sqrt() / bias2.sqrt() + h["eps"])
            p.sub_(torch.where(_per_member(active, p), update, 0.0))

    def state_tensors(self) -> list[torch.Tensor]:
        return [s for state in self.state for s in state]

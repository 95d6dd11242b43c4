"""Optimizers over stacked families, each member with its own hyperparameters.

The update rules are PyTorch's, written over ``[F, ...]`` tensors so a per-member
learning rate, momentum, beta or rho is a broadcast, not a loop:

* "gd": p -= lr g;
* "sgd": ``torch.optim.SGD`` with dampening 0 and no Nesterov, buf = m buf + g, p -= lr buf;
* "adam": ``torch.optim.Adam`` without amsgrad (Kingma & Ba 2015);
* "adagrad": ``torch.optim.Adagrad`` with lr_decay 0 and initial accumulator 0, the
  diagonal AdaGrad of Duchi, Hazan & Singer (JMLR 2011, Section 1.1): G += g^2,
  p -= lr g / (sqrt(G) + adagrad_eps);
* "adadelta": ``torch.optim.Adadelta``, Zeiler's ("ADADELTA: an adaptive learning rate
  method", 2012) Algorithm 1 with PyTorch's extra factor lr: E[g^2] = rho E[g^2] +
  (1 - rho) g^2, dx = sqrt(E[dx^2] + eps) / sqrt(E[g^2] + eps) g,
  E[dx^2] = rho E[dx^2] + (1 - rho) dx^2, p -= lr dx.

Weight decay is added to the gradient as PyTorch does. Members that are not ``active``
(diverged) keep their parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from theoryscope.core.config import Optimizer, TrainSpec


@dataclass(frozen=True)
class Hyper:
    """Per-member hyperparameters, each a ``[F]`` tensor on the family's device; the
    names are ``TrainSpec``'s. AdaGrad's and AdaDelta's, when not given, take
    ``TrainSpec``'s defaults (PyTorch's)."""

    lr: torch.Tensor
    momentum: torch.Tensor
    weight_decay: torch.Tensor
    beta1: torch.Tensor
    beta2: torch.Tensor
    eps: torch.Tensor
    adagrad_eps: torch.Tensor | None = None
    rho: torch.Tensor | None = None
    adadelta_eps: torch.Tensor | None = None

    def __post_init__(self) -> None:
        defaults = {f.name: f.default for f in dataclasses.fields(TrainSpec)}
        for f in dataclasses.fields(self):
            if getattr(self, f.name) is None:
                object.__setattr__(self, f.name, torch.full_like(self.lr, defaults[f.name]))

    @classmethod
    def of(cls, trains: Sequence[TrainSpec], dtype: torch.dtype, device: torch.device) -> Hyper:
        """The settings of each member's ``TrainSpec``, stacked."""
        return cls(*(torch.tensor([getattr(t, f.name) for t in trains], dtype=dtype, device=device)
                     for f in dataclasses.fields(cls)))

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Hyper:
        """The same settings with ``fn`` applied to each (e.g. repeated per member)."""
        return Hyper(*(fn(getattr(self, f.name)) for f in dataclasses.fields(self)))


def _per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[F] -> [F, 1, ..., 1] broadcasting against ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


# The update of one parameter tensor: (gradient, its state tensors, its hyperparameters
# broadcast against it, the step count from 1) -> what is subtracted from it.
Rule = Callable[[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor], int], torch.Tensor]


def _gd(g, _state, h, _t):
    return h["lr"] * g


def _sgd(g, state, h, _t):
    buf, = state
    buf.mul_(h["momentum"]).add_(g)
    return h["lr"] * buf


def _adam(g, state, h, t):
    m, v = state
    m.mul_(h["beta1"]).add_((1 - h["beta1"]) * g)
    v.mul_(h["beta2"]).add_((1 - h["beta2"]) * g * g)
    bias1 = 1 - h["beta1"] ** t
    bias2 = 1 - h["beta2"] ** t
    return (h["lr"] / bias1) * m / (v.sqrt() / bias2.sqrt() + h["eps"])


def _adagrad(g, state, h, _t):
    total, = state
    total.add_(g * g)
    return h["lr"] * g / (total.sqrt() + h["adagrad_eps"])


def _adadelta(g, state, h, _t):
    square_avg, delta_avg = state
    rho, eps = h["rho"], h["adadelta_eps"]
    square_avg.mul_(rho).add_((1 - rho) * g * g)
    delta = (delta_avg + eps).sqrt() / (square_avg + eps).sqrt() * g
    delta_avg.mul_(rho).add_((1 - rho) * delta * delta)
    return h["lr"] * delta


RULES: dict[Optimizer, Rule] = {Optimizer.GD: _gd, Optimizer.SGD: _sgd, Optimizer.ADAM: _adam,
                                Optimizer.ADAGRAD: _adagrad, Optimizer.ADADELTA: _adadelta}

# Tensors of optimizer state per parameter tensor (``Optimizer.state_tensors``).
STATE_TENSORS = {kind: kind.state_tensors for kind in Optimizer}


class StackedOptimizer:
    """Applies one kind of update to a list of stacked parameter tensors."""

    def __init__(self, kind: Optimizer, hyper: Hyper, params: list[torch.Tensor]):
        self.kind = kind
        self.rule = RULES[kind]
        self.t = 0
        self.state = [[torch.zeros_like(p) for _ in range(STATE_TENSORS[kind])] for p in params]
        # Per-member hyperparameters broadcast against each parameter, built once.
        names = [f.name for f in dataclasses.fields(Hyper)]
        self.hyper = [{n: _per_member(getattr(hyper, n), p) for n in names} for p in params]
        self.decay = bool((hyper.weight_decay != 0).any())  # one host read, at construction

    @torch.no_grad()
    def step(self, params: list[torch.Tensor], grads: list[torch.Tensor], active: torch.Tensor) -> None:
        self.t += 1
        for p, g, state, h in zip(params, grads, self.state, self.hyper):
            if self.decay:
                g = g + h["weight_decay"] * p
            update = self.rule(g, state, h, self.t)
            p.sub_(torch.where(_per_member(active, p), update, 0.0))

    def state_tensors(self) -> list[torch.Tensor]:
        return [s for state in self.state for s in state]

"""Stacked families of MLPs and deep linear nets.

A family of F nets with layer widths d_0, ..., d_L is held as plain tensors:
``weights[i]`` of shape ``[F, d_{i+1}, d_i]`` and, with biases, ``biases[i]`` of shape
``[F, d_{i+1}]``. One ``torch.baddbmm`` per layer runs every member at once; members never
mix, so each one computes exactly what it would compute alone.

Layers follow the papers' numbering: x^0 is the input, x^i = A^i phi(x^{i-1}) (+ b^i),
phi = ReLU for an MLP and the identity for a deep linear net, phi(x^0) := x^0, and no
nonlinearity after the last layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from theoryscope.core.config import Init, ModelKind, ModelSpec
from theoryscope.core.seeding import generator

F64 = torch.float64


@dataclass
class Params:
    """A family's (or one net's) trainable tensors, layer 1 first."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor] | None

    def tensors(self) -> list[torch.Tensor]:
        return self.weights + (self.biases or [])


def init_member(model: ModelSpec, dims: Sequence[int], seed: int) -> Params:
    """One net's initial weights (float64, CPU), from its own stream.

    "default" is PyTorch's ``nn.Linear`` init: kaiming_uniform(a=sqrt(5)) reduces to
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases; "gaussian" is
    N(0, 1/fan_in) weights and zero biases. Both are multiplied by ``init_scale``.
    """
    g = generator(seed, "init")
    weights, biases = [], []
    for fan_in, fan_out in zip(dims[:-1], dims[1:]):
        bound = model.init_scale / math.sqrt(fan_in)
        if model.init is Init.GAUSSIAN:
            weights.append(torch.randn(fan_out, fan_in, generator=g, dtype=F64) * bound)
            biases.append(torch.zeros(fan_out, dtype=F64))
        else:
            weights.append((torch.rand(fan_out, fan_in, generator=g, dtype=F64) * 2 - 1) * bound)
            biases.append((torch.rand(fan_out, generator=g, dtype=F64) * 2 - 1) * bound)
    return Params(weights, biases if model.bias else None)


def init_family(models: Sequence[ModelSpec], seeds: Sequence[int], dims: Sequence[int],
                dtype: torch.dtype, device: torch.device) -> Params:
    """Stack each member's own init into ``[F, ...]`` tensors on ``device``."""
    members = [init_member(m, dims, s) for m, s in zip(models, seeds)]

    def stack(layers: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        return [torch.stack(per_member).to(device=device, dtype=dtype) for per_member in zip(*layers)]

    weights = stack([p.weights for p in members])
    biases = stack([p.biases for p in members]) if members[0].biases is not None else None
    return Params(weights, biases)


def is_nonlinear(kind: ModelKind) -> bool:
    return kind is ModelKind.MLP


def forward(params: Params, x: torch.Tensor, nonlinear: bool) -> torch.Tensor:
    """Outputs ``[F, n, d_L]`` of a family on inputs ``x`` of shape ``[F, n, d_0]``."""
    h = x
    last = len(params.weights) - 1
    for i, w in enumerate(params.weights):
        wt = w.transpose(1, 2)
        h = torch.bmm(h, wt) if params.biases is None else torch.baddbmm(params.biases[i].unsqueeze(1), h, wt)
        if nonlinear and i < last:
            # In place: the product is fresh and autograd keeps only the ReLU's output,
            # so this saves a pass over memory and an allocation per layer.
            h = h.relu_()
    return h

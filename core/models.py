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

import numpy as np
import torch

from theoryscope.core import counters
from theoryscope.core.config import Init, ModelKind, ModelSpec

F64 = torch.float64


@dataclass
class Params:
    """A family's (or one net's) trainable tensors, layer 1 first."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor] | None

    def tensors(self) -> list[torch.Tensor]:
        return self.weights + (self.biases or [])


def init_member(model: ModelSpec, dims: Sequence[int], seed: int) -> Params:
    """One net's initial weights (float64, CPU): exactly its slice of any family's."""
    family = init_family([model], [seed], dims, F64, torch.device("cpu"))
    return Params([w[0] for w in family.weights], None if family.biases is None else [b[0] for b in family.biases])


def init_family(models: Sequence[ModelSpec], seeds: Sequence[int], dims: Sequence[int],
                dtype: torch.dtype, device: torch.device) -> Params:
    """Every member's initial weights, ``[F, ...]`` tensors on ``device``, drawn for the
    whole family at once from each member's own key (``core.counters``): a member gets
    the same numbers alone as in any family.

    "default" is PyTorch's ``nn.Linear`` init: kaiming_uniform(a=sqrt(5)) reduces to
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases; "gaussian" is
    N(0, 1/fan_in) weights and zero biases. Both are multiplied by ``init_scale``.
    """
    scales = torch.tensor([m.init_scale for m in models], dtype=F64)
    gaussian = np.array([m.init is Init.GAUSSIAN for m in models])
    weights, biases = [], []
    for layer, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
        bound = scales / math.sqrt(fan_in)
        weights.append(_draw(seeds, gaussian, bound, (fan_out, fan_in), dtype, device, "init", layer, "weight"))
        biases.append(_draw(seeds, gaussian, bound, (fan_out,), dtype, device, "init", layer, "bias", zero=True))
    return Params(weights, biases if models[0].bias else None)


def _draw(seeds: Sequence[int], gaussian: np.ndarray, bound: torch.Tensor, shape: tuple[int, ...],
          dtype: torch.dtype, device: torch.device, *purpose: object, zero: bool = False) -> torch.Tensor:
    """``bound`` x (N(0, 1) for the ``gaussian`` members, U(-1, 1) for the others) of
    ``shape`` per member; ``zero``: the gaussian members get zeros instead. Drawn in
    float64 a block of members at a time, then cast."""
    count = math.prod(shape)
    out = torch.empty(len(seeds), *shape, dtype=dtype, device=device)
    keys = counters.keys(seeds, *purpose)
    rows = max(1, counters.CHUNK // max(1, count))
    for lo in range(0, len(seeds), rows):
        k, g = keys[lo:lo + rows], gaussian[lo:lo + rows]
        block = np.zeros((len(k), count))
        if not g.all():
            block[~g] = counters.uniform(k[~g], count) * 2 - 1
        if g.any() and not zero:
            block[g] = counters.normal(k[g], count)
        values = torch.from_numpy(block).view(len(k), *shape) * bound[lo:lo + rows].view(-1, *[1] * len(shape))
        out[lo:lo + rows] = values.to(device=device, dtype=dtype)
    return out


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

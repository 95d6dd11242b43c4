"""What a family's nets are, behind one set of functions for the trainer: MLPs and deep
linear nets (``core.models``) or CNNs (``core.cnn``), chosen by ``model.kind``.

Both hold a family as plain stacked tensors whose ``tensors()`` list is what the
optimizer updates and a checkpoint saves; ``like`` rebuilds a family's parameters from
such a list (a snapshot, a checkpoint), ``members`` takes a block of members.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from theoryscope.core import cnn, models
from theoryscope.core.config import REAL_DATA, DataSpec, ModelKind, ModelSpec, RunSpec
from theoryscope.core.datasets.table import input_width

Params = models.Params | cnn.ConvParams


def conv_arch(model: ModelSpec, data: DataSpec) -> cnn.ConvArch:
    """The shapes a CNN family shares (``model.kind = "cnn"`` on image data)."""
    return cnn.ConvArch(REAL_DATA[data.kind].image, model.depth, model.width, model.kernel_size, model.pool,
                        data.n_outputs, model.bias)


def init_family(runs: Sequence[RunSpec], dtype: torch.dtype, device: torch.device) -> Params:
    """Every member's initial parameters, each from its own seed (see ``models.init_family``
    and ``cnn.init_family``): a member gets the same numbers alone as in any family."""
    first = runs[0]
    seeds = [r.seed for r in runs]
    if first.model.kind is ModelKind.CNN:
        return cnn.init_family(conv_arch(first.model, first.data), seeds, [r.model.init_scale for r in runs],
                               [r.model.init for r in runs], dtype, device)
    dims = first.model.layer_dims(input_width(first.data), first.data.n_outputs)
    return models.init_family([r.model for r in runs], seeds, dims, dtype, device)


def forward(model: ModelSpec, data: DataSpec, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Outputs ``[F, n, outputs]`` on flat inputs ``x [F, n, d]``."""
    if isinstance(params, cnn.ConvParams):
        return cnn.forward(params, images(data, x), model.pool)
    return models.forward(params, x, models.is_nonlinear(model.kind))


def images(data: DataSpec, x: torch.Tensor) -> torch.Tensor:
    """Flat inputs ``[F, n, d]`` as the images they are, ``[F, n, C, H, W]`` (a view: the
    data flattens them channel, row, column)."""
    return x.view(*x.shape[:-1], *REAL_DATA[data.kind].image)


def activation_units(model: ModelSpec, data: DataSpec) -> int:
    """Numbers per sample in a member's widest layer output (what evaluating a block of
    members holds at once)."""
    if model.kind is ModelKind.CNN:
        channels, height, wide = REAL_DATA[data.kind].image
        return max(channels, model.width) * height * wide
    return max(model.layer_dims(input_width(data), data.n_outputs))


def members(params: Params, part: slice) -> Params:
    """The parameters of members ``part`` of a family."""
    return like(params, [t[part] for t in params.tensors()])


def like(params: Params, tensors: Sequence[torch.Tensor]) -> Params:
    """Parameters of ``params``'s kind and layout from a list in ``params.tensors()`` order."""
    tensors = list(tensors)
    if isinstance(params, cnn.ConvParams):
        depth = len(params.convs)
        if params.conv_biases is None:
            return cnn.ConvParams(tensors[:depth], tensors[depth], None, None)
        return cnn.ConvParams(tensors[:depth], tensors[depth], tensors[depth + 1:2 * depth + 1], tensors[-1])
    depth = len(params.weights)
    return models.Params(tensors[:depth], tensors[depth:] or None)

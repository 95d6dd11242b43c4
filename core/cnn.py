"""Stacked families of small CNNs.

The architecture is fixed: ``depth`` blocks, each a k x k convolution (k odd, stride 1,
zero "same" padding k // 2) to ``width`` channels, a ReLU and a non-overlapping p x p
max-pool (p = 1: none), then the map is flattened (channel, row, column order, as
``torch.nn.Flatten``) and one linear head gives ``n_outputs``.

A family of F such nets is held as plain tensors: block l's kernel ``[F, C_out, C_in, k, k]``
and the head ``[F, n_outputs, features]`` (with biases ``[F, C_out]`` and ``[F, n_outputs]``).
The members run as the F groups of one grouped convolution over ``[n, F * C, H, W]``
maps; a shared input enters the first block as one ordinary convolution with F * C_out
output channels (no copy per member); pooling is one ``max_pool2d`` over every channel and
the head one ``torch.baddbmm`` over ``[F, n, features]``. Members never mix, so each one
computes what it would compute alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as nnf

from theoryscope.core.config import Init
from theoryscope.core.config.shapes import ConvShapes, conv_shapes
from theoryscope.core.models import _draw

F64 = torch.float64
Tensor = torch.Tensor


@dataclass(frozen=True)
class ConvArch:
    """What every member of a CNN family shares: the tensor shapes. Checked when built."""

    # (C, H, W) of the input images.
    in_shape: tuple[int, int, int]
    # Number of conv blocks (conv -> ReLU -> pool); the head comes on top.
    depth: int
    # Output channels of every conv.
    width: int
    # k of the k x k kernels: odd, so that "same" padding k // 2 keeps the map's size.
    kernel: int
    # p of the non-overlapping p x p max-pool after each ReLU; 1 = no pooling.
    pool: int
    n_outputs: int
    # Biases on every conv and on the head; off by default, as for the MLPs.
    bias: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "in_shape", tuple(self.in_shape))
        if self.n_outputs < 1:
            raise ValueError(f"n_outputs must be an integer >= 1, got {self.n_outputs}")
        self.shapes  # raises FieldError (a ValueError) on impossible sizes

    @property
    def shapes(self) -> ConvShapes:
        return conv_shapes(self.in_shape, self.depth, self.kernel, self.pool, self.width)


@dataclass
class ConvParams:
    """A CNN family's (or one net's) trainable tensors, block 1 first."""

    convs: list[Tensor]  # [F, C_out, C_in, k, k] per block
    head: Tensor  # [F, n_outputs, features]
    conv_biases: list[Tensor] | None  # [F, C_out] per block
    head_bias: Tensor | None  # [F, n_outputs]

    def tensors(self) -> list[Tensor]:
        biases = [] if self.conv_biases is None else [*self.conv_biases, self.head_bias]
        return [*self.convs, self.head, *biases]


def init_family(arch: ConvArch, seeds: Sequence[int], init_scales: Sequence[float], inits: Sequence[Init],
                dtype: torch.dtype, device: torch.device) -> ConvParams:
    """Every member's initial weights, drawn from its own key as ``models.init_family``
    draws an MLP's, so a member gets the same numbers alone as in any family.

    "default" is PyTorch's ``nn.Conv2d`` / ``nn.Linear`` init, U(-1/sqrt(fan_in),
    1/sqrt(fan_in)) for weights and biases, fan_in = C_in k^2 for a conv and ``features``
    for the head; "gaussian" is N(0, 1/fan_in) weights and zero biases. Both times
    ``init_scale``. The draws are named ("init", "conv", block, "weight" | "bias") and
    ("init", "conv-head", "weight" | "bias"): no MLP draw ("init", layer, ...) shares a name.
    """
    scales = torch.tensor(list(init_scales), dtype=F64)
    gaussian = np.array([i is Init.GAUSSIAN for i in inits])
    if not len(seeds) == len(scales) == len(gaussian):
        raise ValueError(f"one seed, init_scale and init per member, got {len(seeds)}, {len(scales)}, {len(gaussian)}")
    shapes, k = arch.shapes, arch.kernel
    convs, conv_biases = [], []
    for block, b in enumerate(shapes.blocks):
        bound = scales / math.sqrt(b.in_channels * k * k)
        convs.append(_draw(seeds, gaussian, bound, (b.out_channels, b.in_channels, k, k), dtype, device,
                           "init", "conv", block, "weight"))
        conv_biases.append(_draw(seeds, gaussian, bound, (b.out_channels,), dtype, device,
                                 "init", "conv", block, "bias", zero=True))
    bound = scales / math.sqrt(shapes.features)
    head = _draw(seeds, gaussian, bound, (arch.n_outputs, shapes.features), dtype, device, "init", "conv-head", "weight")
    head_bias = _draw(seeds, gaussian, bound, (arch.n_outputs,), dtype, device, "init", "conv-head", "bias", zero=True)
    if not arch.bias:
        return ConvParams(convs, head, None, None)
    return ConvParams(convs, head, conv_biases, head_bias)


def init_member(arch: ConvArch, seed: int, init_scale: float = 1.0, init: Init = Init.DEFAULT) -> ConvParams:
    """One net's initial weights (float64, CPU, no family dimension): its slice of any family's."""
    family = init_family(arch, [seed], [init_scale], [init], F64, torch.device("cpu"))
    return ConvParams([w[0] for w in family.convs], family.head[0],
                      None if family.conv_biases is None else [b[0] for b in family.conv_biases],
                      None if family.head_bias is None else family.head_bias[0])


@dataclass(frozen=True)
class BlockOutput:
    """One block's maps per member, ``[F, n, C, H, W]`` (views of the stacked maps): the
    ReLU's output, the pooled map, and the pooling switches (the flat index ``row * W +
    column`` in the ReLU's map of each pooled value, as ``nn.MaxPool2d(return_indices=True)``)."""

    relu: Tensor
    pooled: Tensor
    switches: Tensor


@dataclass(frozen=True)
class Trace:
    """A family's forward pass, for measures: every block's maps and the outputs ``[F, n, o]``."""

    blocks: list[BlockOutput]
    outputs: Tensor


def forward(params: ConvParams, x: Tensor, pool: int) -> Tensor:
    """Outputs ``[F, n, n_outputs]`` of a family on images ``x``: ``[n, C, H, W]`` shared by
    every member (a stride-0 expansion ``[F, n, C, H, W]`` counts as shared) or
    ``[F, n, C, H, W]`` per member."""
    h = _first_input(params, x)
    for block in range(len(params.convs)):
        # In place: the conv's output is fresh and its backward does not need it.
        h = _conv(params, h, block, shared=block == 0 and _is_shared(x)).relu_()
        if pool > 1:
            h = nnf.max_pool2d(h, pool)
    return _head(params, h)


def trace(params: ConvParams, x: Tensor, pool: int) -> Trace:
    """``forward``, keeping every block's post-ReLU map, pooled map and pooling switches
    (p = 1: the pooled map is the ReLU's and each switch points at its own position)."""
    h = _first_input(params, x)
    f, blocks = params.head.shape[0], []
    for block in range(len(params.convs)):
        relu = _conv(params, h, block, shared=block == 0 and _is_shared(x)).relu()
        h, switches = nnf.max_pool2d(relu, pool, return_indices=True)
        blocks.append(BlockOutput(*(per_member(t, f) for t in (relu, h, switches))))
    return Trace(blocks, _head(params, h))


def _is_shared(x: Tensor) -> bool:
    return x.dim() == 4 or x.stride(0) == 0


def _first_input(params: ConvParams, x: Tensor) -> Tensor:
    """The first block's input as maps ``[n, C, H, W]`` (shared) or ``[n, F * C, H, W]``."""
    f, c_in = params.convs[0].shape[0], params.convs[0].shape[2]
    if x.dim() == 4 and x.shape[1] == c_in:
        return x
    if x.dim() == 5 and x.shape[0] == f and x.shape[2] == c_in:
        if x.stride(0) == 0:
            return x[0]
        # The one copy of a per-member input: members become channel groups.
        return as_groups(x)
    raise ValueError(f"images must be [n, {c_in}, H, W] (shared) or [{f}, n, {c_in}, H, W] (per member), "
                     f"got {list(x.shape)}")


def _conv(params: ConvParams, h: Tensor, block: int, shared: bool) -> Tensor:
    """Block ``block``'s convolution of every member: one conv with F * C_out outputs over a
    shared ``[n, C, H, W]`` input, else F groups over ``[n, F * C, H, W]``."""
    w = params.convs[block]
    f, c_out, c_in, k, _ = w.shape
    bias = None if params.conv_biases is None else params.conv_biases[block].reshape(f * c_out)
    return nnf.conv2d(h, w.reshape(f * c_out, c_in, k, k), bias, padding=k // 2, groups=1 if shared else f)


def as_groups(t: Tensor) -> Tensor:
    """Per-member maps ``[F, n, C, H, W]`` -> ``[n, F * C, H, W]``: the members as the
    channel groups of one grouped convolution (a copy)."""
    f, n, c, height, wide = t.shape
    return t.transpose(0, 1).reshape(n, f * c, height, wide)


def per_member(t: Tensor, f: int) -> Tensor:
    """``[n, F * C, H, W]`` -> ``[F, n, C, H, W]``, the inverse of ``as_groups`` (a view)."""
    n, fc, height, wide = t.shape
    return t.view(n, f, fc // f, height, wide).transpose(0, 1)


def _head(params: ConvParams, h: Tensor) -> Tensor:
    """The linear head on flattened maps ``[n, F * C, H, W]`` -> ``[F, n, n_outputs]``."""
    f = params.head.shape[0]
    features = h.reshape(h.shape[0], f, -1).transpose(0, 1)
    wt = params.head.transpose(1, 2)
    if params.head_bias is None:
        return torch.bmm(features, wt)
    return torch.baddbmm(params.head_bias.unsqueeze(1), features, wt)

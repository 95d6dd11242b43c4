"""The sizes of a CNN's maps, block by block (``model.kind = "cnn"``): what a spec's
kernel, pooling and depth make of an image, checked where the spec is read."""

from __future__ import annotations

from dataclasses import dataclass

from theoryscope.core.config.fields import FieldError


def _require(condition: bool, field_name: str, expected: str, got: object) -> None:
    if not condition:
        raise FieldError(field_name, expected, got)


@dataclass(frozen=True)
class BlockShape:
    """One block's sizes: its input channels, output channels, the map it convolves
    (its input's, by "same" padding) and the map after pooling."""

    in_channels: int
    out_channels: int
    map: tuple[int, int]
    pooled: tuple[int, int]


@dataclass(frozen=True)
class ConvShapes:
    """Every block's sizes and the head's input width (``width`` x the last pooled map)."""

    blocks: tuple[BlockShape, ...]
    features: int


def conv_shapes(in_shape: tuple[int, int, int], depth: int, kernel: int, pool: int, width: int) -> ConvShapes:
    """The map sizes of ``depth`` blocks over images of ``in_shape`` = (C, H, W).

    Raises ``FieldError`` naming ``kernel_size``, ``pool``, ``depth`` or ``width`` (the
    ``[model]`` fields) when a kernel is larger than the map it convolves or the pool
    does not divide the map, saying which block.
    """
    channels, height, wide = in_shape
    if min(in_shape) < 1:
        raise ValueError(f"image shape must be positive (C, H, W), got {in_shape}")
    _require(depth >= 1, "depth", "an integer >= 1", depth)
    _require(width >= 1, "width", "an integer >= 1", width)
    _require(kernel >= 1 and kernel % 2 == 1, "kernel_size", "an odd integer >= 1", kernel)
    _require(pool >= 1, "pool", "an integer >= 1", pool)
    blocks = []
    for block in range(depth):
        _require(kernel <= min(height, wide), "kernel_size",
                 f"at most the {height}x{wide} map block {block + 1} convolves", kernel)
        _require(height % pool == 0 and wide % pool == 0, "pool",
                 f"a divisor of the {height}x{wide} map block {block + 1} pools", pool)
        pooled = (height // pool, wide // pool)
        blocks.append(BlockShape(channels, width, (height, wide), pooled))
        channels, (height, wide) = width, pooled
    return ConvShapes(tuple(blocks), width * height * wide)

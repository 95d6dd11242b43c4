"""Reduced-precision matmuls for a family's forward passes (``train.matmul_precision``).

"tf32" lets CUDA matmuls use TensorFloat-32 tensor cores (inputs rounded to a 10-bit
mantissa, float32 accumulation); PyTorch's CPU matmuls ignore the switch, so on a CPU
the numbers are exact float32. "bf16" autocasts matmuls to bfloat16 (8-bit mantissa) on
either device; weights, optimizer state and losses stay float32. The switch is set for
the forward pass only and restored afterwards, so it never leaks into other families or
the measures.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from theoryscope.core.config import MatmulPrecision


@contextlib.contextmanager
def matmuls_at(precision: MatmulPrecision, device: torch.device) -> Iterator[None]:
    if precision is MatmulPrecision.BF16:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    if precision is MatmulPrecision.TF32:
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
        return
    yield

"""Checkpoints of a family in training: when to save, and what a save is made of.

The trainer (``core.train``) decides what goes into a checkpoint (its ``state_dict``, a
flat dict of tensors and plain values) and asks a ``Checkpoint`` when to save and where
to. Where the bytes go is the business of the layer above (``sweeps.checkpoints`` keeps
them in the results directory or its object store); this module turns a state into bytes
and back with ``torch.load(weights_only=True)``, which unpickles no arbitrary objects.
"""

from __future__ import annotations

import io
import time
from typing import Any, Protocol

import torch

# Without an explicit step interval, save after this much training time.
DEFAULT_SECONDS = 120.0
# 2: batch orders are counter-based (``core.counters``); a format-1 state is not resumed.
FORMAT = 2


class Checkpoint(Protocol):
    """Where a family's training state is kept while it trains."""

    def due(self, step: int) -> bool:
        """Whether to save before running ``step``."""

    def save(self, state: dict[str, Any]) -> None: ...

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none that can be used."""


class Cadence:
    """Due every ``every_steps`` steps, or every ``every_seconds`` of training time when
    ``every_steps`` is 0; never before step 0."""

    def __init__(self, every_steps: int = 0, every_seconds: float = DEFAULT_SECONDS):
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self._last_save = time.monotonic()

    def due(self, step: int) -> bool:
        if step == 0:
            return False
        if self.every_steps > 0:
            return step % self.every_steps == 0
        return time.monotonic() - self._last_save >= self.every_seconds

    def saved(self) -> None:
        self._last_save = time.monotonic()


def to_bytes(state: dict[str, Any]) -> bytes:
    """The state serialised in memory, so it can be written in one piece."""
    data = io.BytesIO()
    torch.save({"format": FORMAT, **state}, data)
    return data.getvalue()


def from_bytes(data: bytes) -> dict[str, Any]:
    """A state saved by ``to_bytes``; ``ValueError`` (or torch's error) if it is not one."""
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"unknown checkpoint format {state.get('format') if isinstance(state, dict) else None!r}")
    return state

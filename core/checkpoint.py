"""Checkpoints of a family in training: when to save, and safe saving and loading.

A checkpoint is a flat dict of tensors and plain values (ints, floats, strings, lists),
written with ``torch.save`` to a temporary name and moved into place (locally or in the
results' object store; ``storage.location``), and read back with
``torch.load(weights_only=True)``, which unpickles no arbitrary objects. What goes
into it is the trainer's business (``core.train``); this module only decides *when* and
moves bytes safely.
"""

from __future__ import annotations

import io
import time
import warnings
from typing import Any

import torch

from storage.location import FilePath, is_file, read_bytes, remove, write_file_atomic

# Without an explicit step interval, save after this much training time.
DEFAULT_SECONDS = 120.0
FORMAT = 1


class Checkpointer:
    """Saves every ``every_steps`` steps, or every ``every_seconds`` of training time when
    ``every_steps`` is 0. ``path`` is the family's checkpoint file."""

    def __init__(self, path: FilePath, every_steps: int = 0, every_seconds: float = DEFAULT_SECONDS):
        self.path = path
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self._last_save = time.monotonic()

    def due(self, step: int) -> bool:
        """Whether to save before running ``step`` (never before step 0)."""
        if step == 0:
            return False
        if self.every_steps > 0:
            return step % self.every_steps == 0
        return time.monotonic() - self._last_save >= self.every_seconds

    def save(self, payload: dict[str, Any]) -> None:
        data = io.BytesIO()  # serialised in memory, then written in one piece (also to object stores)
        torch.save({"format": FORMAT, **payload}, data)
        write_file_atomic(self.path, lambda stream: stream.write(data.getbuffer()))
        self._last_save = time.monotonic()

    def load(self) -> dict[str, Any] | None:
        """The saved payload, or None if there is none or it cannot be used (then it is
        removed, with a warning, and training starts over)."""
        if not is_file(self.path):
            return None
        try:
            payload = torch.load(io.BytesIO(read_bytes(self.path)), map_location="cpu", weights_only=True)
            if not isinstance(payload, dict) or payload.get("format") != FORMAT:
                raise ValueError(f"unknown checkpoint format {payload.get('format')!r}")
        except Exception as exc:  # a damaged or foreign file must not stop the family
            warnings.warn(f"ignoring unreadable checkpoint {self.path}: {exc}", RuntimeWarning, stacklevel=2)
            self.remove()
            return None
        return payload

    def remove(self) -> None:
        remove(self.path)

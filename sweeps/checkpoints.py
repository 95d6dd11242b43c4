"""A family's checkpoint as a file of the results: ``<results>/checkpoints/sweep=<name>/<family_id>.pt``.

Written to a temporary name and moved into place (locally or in the results' object
store; ``storage.location``), so a kill never leaves half a checkpoint; read back with
``core.checkpoint.from_bytes``. A damaged or foreign file is removed with a warning and
the family starts over.
"""

from __future__ import annotations

import warnings
from typing import Any

from theoryscope.core.checkpoint import DEFAULT_SECONDS, Cadence, from_bytes, to_bytes
from theoryscope.storage.location import FilePath, is_file, read_bytes, remove, write_file_atomic


class Checkpointer:
    """A ``core.checkpoint.Checkpoint`` kept at ``path``: saves every ``every_steps``
    steps, or every ``every_seconds`` of training time when ``every_steps`` is 0."""

    def __init__(self, path: FilePath, every_steps: int = 0, every_seconds: float = DEFAULT_SECONDS):
        self.path = path
        self.cadence = Cadence(every_steps, every_seconds)

    def __str__(self) -> str:
        return str(self.path)

    def due(self, step: int) -> bool:
        return self.cadence.due(step)

    def save(self, state: dict[str, Any]) -> None:
        data = to_bytes(state)
        write_file_atomic(self.path, lambda stream: stream.write(data))
        self.cadence.saved()

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None if there is none or it cannot be used (then it is
        removed, with a warning, and training starts over)."""
        if not is_file(self.path):
            return None
        try:
            return from_bytes(read_bytes(self.path))
        except Exception as exc:  # a damaged or foreign file must not stop the family
            warnings.warn(f"ignoring unreadable checkpoint {self.path}: {exc}", RuntimeWarning, stacklevel=2)
            self.remove()
            return None

    def remove(self) -> None:
        remove(self.path)

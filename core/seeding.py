"""Named random streams derived from integer seeds.

Every random draw in theoryscope is named by ``derive_seed(seed, purpose...)``: the
teacher, the training inputs, the label noise and the measures' noise come from a
``torch.Generator`` seeded by it; each member's init and batch order from counter-based
draws keyed by it (``core.counters``), so a whole family draws in one call. Changing one
quantity (n_train, label noise, the members of a family) therefore never shifts
another's draws, and nothing touches torch's global RNG.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the parts' text, e.g. ``derive_seed(7, "teacher")``."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator(*parts: object) -> torch.Generator:
    """A fresh CPU generator for the stream named by ``parts``."""
    g = torch.Generator(device="cpu")
    g.manual_seed(derive_seed(*parts))
    return g

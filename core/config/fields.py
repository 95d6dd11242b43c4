"""The bricks of every spec section: field errors, string choices, the rules that decide
which fields make up a run's id.

A section is a frozen dataclass whose ``__post_init__`` checks each value with
``require`` and raises ``FieldError`` (the field relative to its section); the loader
(``sweeps.load``) turns that into one line naming the file and the key path.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from typing import Any


class FieldError(ValueError):
    """A field value out of range; ``field`` is relative to its section."""

    def __init__(self, field_name: str, expected: str, got: Any):
        super().__init__(f"{field_name}: expected {expected}, got {got!r}")
        self.field_name = field_name
        self.expected = expected
        self.got = got


class Choice(str, enum.Enum):
    """A string enum whose values are what users write in the spec."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def allowed(cls) -> str:
        return " | ".join(f'"{m.value}"' for m in cls)



def require(ok: bool, name: str, expected: str, got: Any) -> None:
    if not ok:
        raise FieldError(name, expected, got)



def is_finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def is_hashed(f: dataclasses.Field) -> bool:
    """Whether a spec field can change a run's results (and so is part of its id)."""
    return f.metadata.get("hashed", True)


def omitted(section: Any, name: str) -> bool:
    """Fields added after run ids were first published carry ``omit_default``: at their
    default they are left out of the canonical config, so earlier runs keep their ids."""
    defaults = _omitted_defaults(type(section))
    return name in defaults and getattr(section, name) == defaults[name]


@functools.cache
def _omitted_defaults(section_type: type) -> dict[str, Any]:
    """The ``omit_default`` fields of a section class, with their defaults."""
    return {f.name: f.default for f in dataclasses.fields(section_type) if f.metadata.get("omit_default", False)}


def section_to_dict(section: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(section):
        if not is_hashed(f):
            continue
        value = getattr(section, f.name)
        out[f.name] = value.value if isinstance(value, enum.Enum) else value
    return out


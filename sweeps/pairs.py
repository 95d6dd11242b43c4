"""Which runs of a sweep are compared with each other: runs equal in everything but one
swept field (``measure.valleys.pairs``)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

from sweeps.spec import RunSpec


def paired_value(run: RunSpec, field: str) -> Any:
    """The run's value of ``field`` ("seed" or "section.name"), as plain JSON."""
    if field == "seed":
        return run.seed
    section, _, name = field.partition(".")
    value = getattr(getattr(run, section), name)
    return getattr(value, "value", value)


def pair_group(run: RunSpec, field: str) -> str:
    """The run's canonical config without ``field``: runs with the same group differ in
    that field alone."""
    config = run.to_config()
    if field == "seed":
        config.pop("seed")
    else:
        section, _, name = field.partition(".")
        config[section].pop(name, None)
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def pairs_of(runs: Sequence[RunSpec], field: str) -> list[tuple[int, int]]:
    """Index pairs (i, j) of runs in one group, every two once, the smaller value first."""
    groups: dict[str, list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(pair_group(run, field), []).append(i)
    pairs = []
    for members in groups.values():
        ordered = sorted(members, key=lambda i: _order(paired_value(runs[i], field)))
        pairs.extend(itertools.combinations(ordered, 2))
    return pairs


def _order(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))

"""Grid names a user may write without a section (README, "Spec reference"), and the name
to suggest for a target."""

from __future__ import annotations

SHORTHANDS = {
    "depth": "model.depth",
    "width": "model.width",
    "init_scale": "model.init_scale",
    "label_noise": "data.label_noise",
    "seed": "seed",
}


def grid_name(target: str) -> str:
    """How to write the dotted ``target`` as a key of ``[grid]``: its shorthand, else quoted."""
    short = {v: k for k, v in SHORTHANDS.items()}.get(target)
    return short or f'"{target}"'

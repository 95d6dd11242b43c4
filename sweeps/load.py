"""TOML text -> a validated ``SweepSpec``, with one-line errors that name the key path.

Checks, in order: the file exists and is TOML; no unknown keys at any level; every value
has its field's type (ints stay ints, an int is accepted where a float is expected, a
bool is never a number); every value is in range (``__post_init__`` of the section);
every grid axis is a non-empty list of distinct, individually valid values. What a
measure needs of the grid is checked by the measure (``sweeps.measures``); combinations
of grid values are checked when the grid is expanded (``sweeps.plan``).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from theoryscope.core.config import (
    RUN_SECTIONS, Choice, DataSpec, Experiment, FieldError, ModelSpec, TrainSpec, is_hashed,
)
from theoryscope.core.errors import SpecError
from theoryscope.sweeps.experiments import EXPERIMENTS
from theoryscope.sweeps.measures import MeasureSpec, check_measures
from theoryscope.sweeps.shorthands import SHORTHANDS
from theoryscope.sweeps.spec import ResourceSpec, StoreSpec, SweepSpec

SECTIONS: dict[str, type] = {
    "data": DataSpec,
    "model": ModelSpec,
    "train": TrainSpec,
    "measure": MeasureSpec,
    "resources": ResourceSpec,
    "store": StoreSpec,
}
TOP_LEVEL_KEYS = ("name", "experiment", "seed", *SECTIONS, "grid")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a spec file; raises ``SpecError`` naming the file."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"{path}: is a directory; give the spec file (.toml) in it")
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark some editors write is no TOML
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start}); save the spec as UTF-8") from None
    return parse_spec(text, origin=str(path))


def parse_spec(text: str, origin: str = "<spec>") -> SweepSpec:
    """Validate spec text; ``origin`` prefixes every error message."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{origin}: not valid TOML: {exc}") from None
    try:
        return _build_sweep(raw, text, origin)
    except SpecError as exc:
        raise SpecError(f"{origin}: {exc}") from None


def _build_sweep(raw: dict[str, Any], text: str, origin: str) -> SweepSpec:
    _reject_unknown(raw, TOP_LEVEL_KEYS, prefix="", where="the top level")
    if "name" not in raw:
        raise SpecError('name: missing; every sweep needs a name, e.g. name = "my-sweep"')
    name = check_name(_coerce(raw["name"], str, "name"), "name")
    top = {
        "name": name,
        "experiment": _coerce(raw.get("experiment", "train"), Experiment, "experiment"),
        "seed": _coerce(raw.get("seed", 0), int, "seed"),
    }
    if top["seed"] < 0:
        raise SpecError(f"seed: expected an integer >= 0, got {top['seed']!r}")
    raw = _with_experiment_defaults(raw, top["experiment"])
    sections = {key: _build_section(cls, raw.get(key, {}), key) for key, cls in SECTIONS.items()}
    spec_wo_grid = SweepSpec(**top, **sections, source=text, origin=origin)
    try:
        spec_wo_grid.base_run()  # sections that do not fit together (e.g. an experiment's needs)
    except FieldError as exc:
        raise SpecError(str(exc)) from None
    grid = _build_grid(raw.get("grid", {}), spec_wo_grid)
    check_measures(spec_wo_grid.measure, grid, spec_wo_grid.base_run())
    if not EXPERIMENTS[spec_wo_grid.experiment].takes_measures:
        for measure in dataclasses.fields(MeasureSpec):
            if getattr(spec_wo_grid.measure, measure.name) is not None:
                raise SpecError(f"measure.{measure.name}: measures apply to experiment = \"train\"; "
                                f"{spec_wo_grid.experiment.value!r} writes its own tables")
    return dataclasses.replace(spec_wo_grid, grid=grid)


def _with_experiment_defaults(raw: dict[str, Any], experiment: Experiment) -> dict[str, Any]:
    """``raw`` with the experiment's own defaults (``ExperimentKind.defaults``) for the
    fields its sections leave out (a grid sweeping one still sets every run's value): a
    default must be valid where it is used."""
    raw = dict(raw)
    for target, value in EXPERIMENTS[experiment].defaults.items():
        section, _, name = target.partition(".")
        table = raw.get(section, {})
        if isinstance(table, dict) and name not in table:
            raw[section] = {**table, name: value}
    return raw


def check_name(name: str, where: str) -> str:
    """A sweep name is a directory name in the results tree: keep it plain."""
    if not _NAME.match(name):
        raise SpecError(f"{where}: expected letters, digits, '.', '_' or '-' (at most 128, "
                        f"starting with a letter or digit), got {name!r}")
    return name


def _build_section(cls: type, table: Any, path: str) -> Any:
    if not isinstance(table, dict):
        raise SpecError(f"{path}: expected a table ([{path}]), got {table!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    _reject_unknown(table, names, prefix=f"{path}.", where=f"[{path}]")
    types = typing.get_type_hints(cls)
    values = {k: _coerce(v, types[k], f"{path}.{k}") for k, v in table.items()}
    try:
        return cls(**values)
    except FieldError as exc:
        raise SpecError(f"{path}.{exc}") from None


def resolve_grid_key(key: str) -> str:
    """A grid key -> its dotted target (``"seed"`` or ``"section.field"``)."""
    target = SHORTHANDS.get(key, key)
    if target == "seed":
        return target
    section, _, name = target.partition(".")
    cls = RUN_SECTIONS.get(section)
    if cls is None or name not in {f.name for f in dataclasses.fields(cls) if is_hashed(f)}:
        raise SpecError(
            f"grid.{key}: not a sweepable field; use one of "
            f"{', '.join(SHORTHANDS)} or a dotted name of a field of "
            f"{', '.join(RUN_SECTIONS)} (e.g. \"data.n_train\", \"train.lr\")"
        )
    return target


def _build_grid(table: Any, spec: SweepSpec) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if not isinstance(table, dict):
        raise SpecError(f"grid: expected a table ([grid]), got {table!r}")
    axes: list[tuple[str, tuple[Any, ...]]] = []
    seen: dict[str, str] = {}
    for key, values in table.items():
        target = resolve_grid_key(key)
        if target in seen:
            raise SpecError(f"grid.{key}: sweeps {target} again (already swept as grid.{seen[target]})")
        seen[target] = key
        if not isinstance(values, list) or not values:
            raise SpecError(f"grid.{key}: expected a non-empty list of values, got {values!r}")
        checked = tuple(_check_grid_value(spec, target, v, f"grid.{key}[{i}]")
                        for i, v in enumerate(values))
        first: dict[Any, int] = {}  # a value's first index: linear in the axis's length
        for i, v in enumerate(checked):
            if first.setdefault(v, i) != i:
                shown = v.value if isinstance(v, Choice) else v
                raise SpecError(f"grid.{key}[{i}]: {shown!r} appears twice; each value runs once")
        axes.append((target, checked))
    return tuple(axes)


def _check_grid_value(spec: SweepSpec, target: str, value: Any, path: str) -> Any:
    """Coerce one grid value and validate it against the spec's other values."""
    if target == "seed":
        seed = _coerce(value, int, path)
        if seed < 0:
            raise SpecError(f"{path}: expected an integer >= 0, got {seed!r}")
        return seed
    section, _, name = target.partition(".")
    cls = RUN_SECTIONS[section]
    coerced = _coerce(value, typing.get_type_hints(cls)[name], path)
    try:
        dataclasses.replace(getattr(spec, section), **{name: coerced})
    except FieldError as exc:
        if exc.field_name == name:
            raise SpecError(f"{path}: expected {exc.expected}, got {exc.got!r}") from None
        shown = coerced.value if isinstance(coerced, Choice) else coerced
        raise SpecError(f"{path}: {shown!r} does not fit {section}.{exc.field_name}: "
                        f"expected {exc.expected}, got {exc.got!r}") from None
    return coerced


def _coerce(value: Any, kind: Any, path: str) -> Any:
    options = typing.get_args(kind)
    if isinstance(kind, types.UnionType) and type(None) not in options:  # e.g. a count or a list
        for option in options:
            try:
                return _coerce(value, option, path)
            except SpecError:
                continue
        raise SpecError(f"{path}: expected {' or '.join(_describe(o) for o in options)}, got {value!r}")
    if type(None) in options:  # an optional measure: true, false, or a table of options
        cls = next(o for o in options if o is not type(None))
        if isinstance(value, bool):
            return cls() if value else None
        if isinstance(value, dict):
            return _build_section(cls, value, path)
        raise SpecError(f"{path}: expected true, false or a table of options, got {value!r}")
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, list):
            raise SpecError(f"{path}: expected a list, got {value!r}")
        item = typing.get_args(kind)[0]
        return tuple(_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if isinstance(kind, type) and issubclass(kind, Choice):
        try:
            return kind(value)
        except ValueError:
            raise SpecError(f"{path}: expected one of {kind.allowed()}, got {value!r}") from None
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise SpecError(f"{path}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not INT64_MIN <= value <= INT64_MAX:  # every integer is an int64 column of `runs`
                raise SpecError(f"{path}: expected an integer of at most 64 bits "
                                f"(|value| < 2**63 = {INT64_MAX + 1:,}), got {value!r}")
            return value
        raise SpecError(f"{path}: expected an integer, got {value!r}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise SpecError(f"{path}: expected a number, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise SpecError(f"{path}: expected a string, got {value!r}")
    raise TypeError(f"no coercion for {kind!r} at {path}")  # a spec field of a new type


def _reject_unknown(table: dict[str, Any], allowed: typing.Iterable[str], prefix: str,
                    where: str) -> None:
    allowed = list(allowed)
    for key in table:
        if key not in allowed:
            choices = ", ".join(allowed) if allowed else "none (this section takes no keys yet)"
            raise SpecError(f"{prefix}{key}: unknown key in {where}; allowed: {choices}")


def _describe(kind: Any) -> str:
    if typing.get_origin(kind) is tuple:
        return "a list"
    if isinstance(kind, type) and issubclass(kind, Choice):
        return f"one of {kind.allowed()}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(kind, str(kind))

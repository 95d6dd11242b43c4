"""Regression data from a table file (CSV or Parquet): one target column, the other
numeric columns as features. For ``lp-regression`` with ``data.path`` (Arora, Cohen &
Hazan 2018 used the UCI gas sensor array drift data this way).

Rows with a missing value are dropped; non-numeric columns are ignored. Features and
target are standardised (zero mean, unit variance over all kept rows) so that
learning-rate grids mean the same on any file.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from theoryscope.core.config import DataSpec
from theoryscope.core.errors import SpecError, first_line


class RegressionTable(NamedTuple):
    x: np.ndarray           # float64 [rows, features], standardised
    y: np.ndarray           # float64 [rows], standardised
    features: tuple[str, ...]


def input_width(data: DataSpec) -> int:
    """Width of the student's input for any data: a table file's feature columns (the
    file is read, and cached), else ``data.n_inputs``."""
    if data.from_table:
        return len(read_table(data.path, data.target_column).features)
    return data.n_inputs


def read_table(path: str, target: str) -> RegressionTable:
    """The file's rows as standardised features and target; ``SpecError`` (one line
    naming ``data.path`` or ``data.target_column``) if it cannot be used."""
    file = Path(path)
    if not file.is_file():
        raise SpecError(f"data.path: {path!r} is not a file (lp-regression reads a .csv or .parquet table)")
    return _read(str(file.resolve()), file.stat().st_mtime_ns, target)


@functools.lru_cache(maxsize=8)
def _read(path: str, mtime: int, target: str) -> RegressionTable:
    table = _load(path)
    numeric = [n for n, t in zip(table.column_names, table.schema.types)
               if pa.types.is_integer(t) or pa.types.is_floating(t)]
    if target not in table.column_names:
        raise SpecError(f"data.target_column: {target!r} is not a column of {path}; its columns: "
                        f"{', '.join(table.column_names)}")
    if target not in numeric:
        raise SpecError(f"data.target_column: {target!r} in {path} is not numeric")
    features = tuple(n for n in numeric if n != target)
    if not features:
        raise SpecError(f"data.path: {path} has no numeric column besides {target!r} to use as features")
    columns = [target, *features]
    kept = table.select(columns).filter(_all_valid(table.select(columns)))
    values = np.column_stack([kept.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in columns])
    values = values[np.isfinite(values).all(axis=1)]
    if len(values) < 2:
        raise SpecError(f"data.path: {path} has fewer than 2 complete rows")
    std = values.std(axis=0)
    std[std == 0] = 1.0
    values = (values - values.mean(axis=0)) / std
    return RegressionTable(values[:, 1:], values[:, 0], features)


def _all_valid(table: pa.Table) -> pa.ChunkedArray:
    mask = pc.is_valid(table.column(0))
    for name in table.column_names[1:]:
        mask = pc.and_(mask, pc.is_valid(table.column(name)))
    return mask


def _load(path: str) -> pa.Table:
    try:
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq
            return pq.read_table(path)
        import pyarrow.csv as pcsv
        return pcsv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SpecError(f"data.path: cannot read {path} as a {'Parquet' if path.endswith('.parquet') else 'CSV'} "
                        f"table ({first_line(exc)})") from None


def check_table_rows(s: DataSpec, table: RegressionTable | None = None) -> None:
    """``SpecError`` unless the table at ``data.path`` (``table``, once read) has rows
    enough for ``n_train + n_test``."""
    rows = len((table or read_table(s.path, s.target_column)).y)
    if s.n_train + s.n_test > rows:
        raise SpecError(f"data.n_train: n_train + n_test = {s.n_train + s.n_test} is more than the {rows} "
                        f"complete rows of {s.path}")

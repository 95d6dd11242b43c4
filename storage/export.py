"""Query results as CSV or JSON text, and written to a file atomically."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import math
from pathlib import Path

import pyarrow as pa

from theoryscope.core.errors import StorageError
from theoryscope.storage.location import write_file_atomic


def _plain(value: object) -> object:
    if isinstance(value, decimal.Decimal):  # DuckDB's sum() of integers, say
        value = int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or infinity
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return value


def to_json(table: pa.Table) -> str:
    """A JSON array with one object per row."""
    rows = [{k: _plain(v) for k, v in row.items()} for row in table.to_pylist()]
    return json.dumps(rows, indent=2, default=str) + "\n"


def to_csv(table: pa.Table) -> str:
    """CSV with a header; timestamps in ISO 8601, nulls empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow(["" if v is None else (v.isoformat() if isinstance(v, dt.datetime) else v)
                         for v in row.values()])
    return out.getvalue()


def write_text_atomic(text: str, path: Path) -> None:
    """Write ``text`` to ``path`` (UTF-8) all at once, into an existing directory."""
    path = Path(path)
    if not path.parent.is_dir():
        raise StorageError(f"cannot write {path}: the directory {path.parent} does not exist")
    write_file_atomic(path, lambda stream: stream.write(text.encode("utf-8")))

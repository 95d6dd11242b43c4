"""Tensors in safetensors files, written atomically, read a member at a time.

A file holds named tensors stacked over a family's members (the first dimension). It is
written whole by the ``safetensors`` library and published like a Parquet file
(``storage.location.write_file_atomic``: absent or complete at every moment, in a
directory or an object store). Reading follows the format's documented layout (an 8-byte
little-endian header length, a JSON header of ``dtype``, ``shape`` and ``data_offsets``
per tensor, then the bytes in C order), so one member of one tensor is a single
contiguous range: loading a net out of a family of 10^5 reads that net's bytes only,
from a local file or an object store alike.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from safetensors.torch import save

from theoryscope.core.errors import StorageError
from theoryscope.storage.location import FilePath, open_binary, write_file_atomic

# The format's names of the dtypes theoryscope trains in.
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
# A header longer than this is not one theoryscope wrote.
MAX_HEADER = 1 << 30


def write_tensors(path: FilePath, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> int:
    """Write ``tensors`` (CPU, contiguous) with string ``metadata`` to ``path``
    atomically; returns the file's size in bytes."""
    blob = save({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, metadata=dict(metadata))
    write_file_atomic(path, lambda stream: stream.write(blob))
    return len(blob)


@dataclass(frozen=True)
class Entry:
    """Where one tensor's bytes are: its dtype, shape and byte range in the file."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    stop: int


def read_header(path: FilePath) -> tuple[dict[str, Entry], dict[str, str]]:
    """The tensors of a safetensors file by name, and its metadata."""
    with open_binary(path) as handle:
        (length,) = struct.unpack("<Q", _read(handle, 8, path))
        if length > MAX_HEADER:
            raise StorageError(f"{path}: not a safetensors file (header of {length:,} bytes)")
        header = json.loads(_read(handle, length, path))
    metadata = header.pop("__metadata__", None) or {}
    entries = {}
    for name, info in header.items():
        if info["dtype"] not in DTYPES:
            raise StorageError(f"{path}: tensor {name!r} has dtype {info['dtype']}, not one of {', '.join(DTYPES)}")
        begin, end = info["data_offsets"]
        entries[name] = Entry(DTYPES[info["dtype"]], tuple(info["shape"]), 8 + length + begin, 8 + length + end)
    return entries, metadata


def read_member(path: FilePath, entry: Entry, member: int) -> torch.Tensor:
    """``tensor[member]`` of a tensor stacked over members, reading only its bytes."""
    if not 0 <= member < entry.shape[0]:
        raise IndexError(f"member {member} of a tensor stacked over {entry.shape[0]}")
    shape = entry.shape[1:]
    size = math.prod(shape) * torch.empty((), dtype=entry.dtype).element_size()
    with open_binary(path) as handle:
        handle.seek(entry.start + member * size)
        raw = bytearray(_read(handle, size, path))
    return torch.frombuffer(raw, dtype=entry.dtype).reshape(shape) if size else torch.empty(shape, dtype=entry.dtype)


def _read(handle, count: int, path: FilePath) -> bytes:
    data = handle.read(count)
    if len(data) != count:
        raise StorageError(f"{path}: truncated safetensors file")
    return data

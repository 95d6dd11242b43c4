"""Keep freed memory in the training process instead of handing it back to the OS.

A training step allocates and frees the same large activation tensors over and over.
With glibc's defaults, blocks above the (adaptive) mmap threshold are mapped and unmapped
each time, and freed heap memory is trimmed, so every step pays fresh page faults on
tens of megabytes: about 10% of a CPU family's step time in ``bench/`` (a 12-member
depth-5 width-256 family: 187 -> 168 ms per step). Raising both thresholds lets the heap
reuse those blocks. The cost is that a worker's resident memory stays at its high-water
mark, which Ray's worker processes reach anyway with their largest family.

Only glibc has ``mallopt``; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Allocations below this come from the heap (a glibc that refuses a value this high keeps
# its default, and mallopt returns 0).
MMAP_THRESHOLD = 512 * 1024**2
TRIM_THRESHOLD = 1024**3


@functools.cache
def keep_freed_memory() -> bool:
    """Tune the allocator once per process; whether it took effect."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))

"""Counter-based random draws for a whole family at once.

A ``torch.Generator`` is a sequential stream: drawing for F members means F streams and
a Python loop over them. Here a draw is a pure function of (member key, counter)
instead, so one vectorised call draws for every member, on the CPU or the GPU, and a
member draws exactly the same numbers alone as in any family.

The function is SplitMix64's finaliser (Steele, Lea & Flood, "Fast splittable
pseudorandom number generators", OOPSLA 2014; the constants of Stafford's "variant 13")
applied to ``key XOR mix(counter)``:

    mix(z)        = z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27;
                    z *= 0x94D049BB133111EB; z ^= z >> 31          (mod 2^64)
    counter(j)    = mix((j + 1) * 0x9E3779B97F4A7C15)
    draw(k, j)    = mix(k ^ counter(j))
    key(seed, p)  = mix(mix(seed) ^ derive_seed(*p))               (p names the purpose)

Draws are nested: ``draw(key, e)`` is the key of epoch e's batch order, and the order
draws from that key. It is a statistical generator for shuffles and inits, not a
cryptographic one. All arithmetic is on integers, so the bits are the same on every
device; numpy holds them as uint64, torch as int64 (the same bits, two's complement).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from theoryscope.core.seeding import derive_seed

_GOLDEN = 0x9E3779B97F4A7C15
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_MASK = 2**64 - 1
# Work on at most this many draws at a time (uint64 temporaries of 128 MiB).
CHUNK = 2**24


def mix(z: int) -> int:
    """The finaliser on one Python integer: the reference the vectorised forms follow."""
    z &= _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def mix_numpy(z: np.ndarray) -> np.ndarray:
    """``mix`` of every element of a uint64 array, in place."""
    z ^= z >> np.uint64(30)
    z *= np.uint64(_M1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_M2)
    z ^= z >> np.uint64(31)
    return z


def _signed(value: int) -> int:
    return value - 2**64 if value >= 2**63 else value


def mix_torch(z: torch.Tensor) -> torch.Tensor:
    """``mix`` of every element of an int64 tensor (any device), in place. Products wrap
    mod 2^64; the shifts are logical, so their sign-extended bits are masked off."""
    z ^= (z >> 30) & ((1 << 34) - 1)
    z *= _signed(_M1)
    z ^= (z >> 27) & ((1 << 37) - 1)
    z *= _signed(_M2)
    z ^= (z >> 31) & ((1 << 33) - 1)
    return z


@functools.lru_cache(maxsize=64)
def _counters(start: int, count: int) -> np.ndarray:
    j = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    out = mix_numpy(j * np.uint64(_GOLDEN))
    out.flags.writeable = False
    return out


def counters(start: int, count: int) -> np.ndarray:
    """``counter(j)`` for j in [start, start + count), uint64 (read-only, cached)."""
    return _counters(start, count)


def keys(seeds: Sequence[int] | np.ndarray, *purpose: object) -> np.ndarray:
    """Each member's key ``[F]`` (uint64) for the draws named by ``purpose``."""
    z = mix_numpy(np.array(seeds, dtype=np.uint64))
    z ^= np.uint64(derive_seed(*purpose))
    return mix_numpy(z)


def draws(keys: np.ndarray, start: int, count: int) -> np.ndarray:
    """``draw(key, j)`` for every key and j in [start, start + count): uint64 ``[F, count]``."""
    z = keys[:, None] ^ counters(start, count)[None, :]
    return mix_numpy(z)


def subkeys(keys: np.ndarray, j: int) -> np.ndarray:
    """``draw(key, j)`` of every key: the keys of the draws nested under counter j."""
    return draws(keys, j, 1)[:, 0]


def uniform(keys: np.ndarray, count: int) -> np.ndarray:
    """``[F, count]`` float64 uniform on [0, 1): the top 53 bits of draws 0..count-1."""
    out = np.empty((len(keys), count))
    for lo, hi in _spans(count, len(keys)):
        out[:, lo:hi] = (draws(keys, lo, hi - lo) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return out


def normal(keys: np.ndarray, count: int) -> np.ndarray:
    """``[F, count]`` float64 standard normal by Box-Muller: element j from the uniforms
    of draws j and count + j, sqrt(-2 log(1 - u)) cos(2 pi v)."""
    both = uniform(keys, 2 * count)
    u, v = both[:, :count], both[:, count:]
    return np.sqrt(-2.0 * np.log1p(-u)) * np.cos(2.0 * np.pi * v)


def _spans(count: int, rows: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK // max(1, rows))
    return [(lo, min(count, lo + step)) for lo in range(0, count, step)]


def permutations(keys: np.ndarray, n: int, device: torch.device) -> torch.Tensor:
    """One random permutation of range(n) per key, ``[F, n]`` long on ``device``: the
    order that sorts draws 0..n-1 as signed integers, their low bits replaced by the
    position so that no two tie. On a GPU the draws are made and sorted there (numpy's
    sort is the faster one on a CPU); the result is the same."""
    if device.type == "cpu":
        return permutations_numpy(keys, n)
    return permutations_torch(keys, n, device)


def _low_bits(n: int) -> int:
    return max(1, (n - 1).bit_length())


def permutations_numpy(keys: np.ndarray, n: int) -> torch.Tensor:
    low, rows, parts = _low_bits(n), max(1, CHUNK // n), []
    for lo in range(0, len(keys), rows):
        z = draws(keys[lo:lo + rows], 0, n)
        z &= np.uint64(_MASK ^ ((1 << low) - 1))
        z |= np.arange(n, dtype=np.uint64)[None, :]
        parts.append(np.argsort(z.view(np.int64), axis=1))
    return torch.from_numpy(np.concatenate(parts)).to(torch.long)


def permutations_torch(keys: np.ndarray, n: int, device: torch.device) -> torch.Tensor:
    k = torch.from_numpy(np.ascontiguousarray(keys).view(np.int64)).to(device)
    c = torch.from_numpy(counters(0, n).view(np.int64).copy()).to(device)
    z = mix_torch(k[:, None] ^ c[None, :])
    z &= ~((1 << _low_bits(n)) - 1)
    z |= torch.arange(n, device=device)[None, :]
    return torch.argsort(z, dim=1)

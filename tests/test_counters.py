"""Counter-based draws (core.counters) against SplitMix64's published output and a
reference that computes one Python integer at a time; and the distributions they give."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import reference_draw, reference_key, reference_normal, reference_permutation, reference_uniform
from theoryscope.core import counters

CPU = torch.device("cpu")


def test_mix_is_splitmix64():
    # SplitMix64 seeded with 0: its state steps by the golden gamma and each output is
    # mix(state); the first three outputs of the reference implementation.
    expected = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    assert [counters.mix(k * 0x9E3779B97F4A7C15) for k in (1, 2, 3)] == expected


def test_numpy_and_torch_forms_equal_the_integer_reference():
    values = [0, 1, 2**63 - 1, 2**63, 2**64 - 1, 0x0123456789ABCDEF, 0xFEDCBA9876543210]
    values += [int(v) for v in np.random.default_rng(0).integers(0, 2**64, 200, dtype=np.uint64)]
    expected = [counters.mix(v) for v in values]
    as_numpy = counters.mix_numpy(np.array(values, dtype=np.uint64))
    assert [int(v) for v in as_numpy] == expected
    as_torch = counters.mix_torch(torch.from_numpy(np.array(values, dtype=np.uint64).view(np.int64)))
    assert [int(v) for v in as_torch.numpy().view(np.uint64)] == expected


def test_keys_and_draws_equal_the_reference():
    seeds = [0, 7, 12345, 2**62 + 3]
    keys = counters.keys(seeds, "init", 2, "weight")
    assert [int(k) for k in keys] == [reference_key(s, "init", 2, "weight") for s in seeds]
    got = counters.draws(keys, 5, 4)
    assert [[int(v) for v in row] for row in got] == [[reference_draw(int(k), j) for j in range(5, 9)] for k in keys]
    assert [int(v) for v in counters.subkeys(keys, 3)] == [reference_draw(int(k), 3) for k in keys]


def test_uniform_and_normal_equal_the_reference():
    seeds = [3, 4]
    u = counters.uniform(counters.keys(seeds, "x"), 9)
    z = counters.normal(counters.keys(seeds, "y"), 9)
    for f, seed in enumerate(seeds):
        assert u[f].tolist() == reference_uniform(seed, ("x",), 9)
        np.testing.assert_allclose(z[f], reference_normal(seed, ("y",), 9), rtol=1e-14, atol=1e-15)


def test_uniform_in_chunks_is_the_same(monkeypatch):
    keys = counters.keys(range(5), "chunks")
    whole = counters.uniform(keys, 1000)
    monkeypatch.setattr(counters, "CHUNK", 64)
    assert np.array_equal(counters.uniform(keys, 1000), whole)


def test_a_member_draws_the_same_alone_as_in_a_family():
    family = counters.uniform(counters.keys([11, 5, 11, 99], "z"), 50)
    alone = counters.uniform(counters.keys([5], "z"), 50)
    assert np.array_equal(family[1], alone[0])
    assert np.array_equal(family[0], family[2])
    assert not np.array_equal(family[0], family[1])


def test_distributions():
    u = counters.uniform(counters.keys(range(100), "u"), 10_000)
    assert u.min() >= 0 and u.max() < 1
    assert u.mean() == pytest.approx(0.5, abs=2e-3)  # sd of the mean: 0.29 / 1000
    assert u.var() == pytest.approx(1 / 12, abs=1e-3)
    z = counters.normal(counters.keys(range(100), "z"), 10_000)
    assert z.mean() == pytest.approx(0.0, abs=5e-3)
    assert z.var() == pytest.approx(1.0, abs=5e-3)  # sd of the variance: sqrt(2 / 10^6)
    assert np.mean(np.abs(z) > 1.96) == pytest.approx(0.05, abs=2e-3)
    # Neighbouring members and neighbouring counters are uncorrelated.
    assert abs(np.corrcoef(z[0], z[1])[0, 1]) < 0.04
    assert abs(np.corrcoef(z[0, :-1], z[0, 1:])[0, 1]) < 0.04


@pytest.mark.parametrize("n", [1, 2, 7, 64, 100])
def test_permutations_equal_the_reference(n):
    seeds = [0, 1, 42]
    keys = counters.subkeys(counters.keys(seeds, "batches"), 4)
    expected = torch.tensor([reference_permutation(s, 4, n) for s in seeds])
    assert torch.equal(counters.permutations(keys, n, CPU), expected)
    assert torch.equal(counters.permutations_torch(keys, n, CPU), expected)


def test_permutations_are_uniform():
    # 20,000 permutations of 5: every value at every position 1/5 of the time (sd 0.0028).
    perms = counters.permutations(counters.keys(range(20_000), "p"), 5, CPU)
    assert torch.equal(perms.sort(1).values, torch.arange(5).expand(20_000, 5))
    share = torch.stack([(perms == v).double().mean(0) for v in range(5)])
    assert torch.allclose(share, torch.full((5, 5), 0.2, dtype=torch.float64), atol=0.015)
    # Every one of the 120 orders appears, about equally (expected count 167, sd 13).
    _, counts = torch.unique(perms, dim=0, return_counts=True)
    assert len(counts) == 120 and counts.min() > 100 and counts.max() < 240


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_permutations_on_a_gpu_are_the_cpus():
    keys = counters.keys(range(300), "gpu")
    assert torch.equal(counters.permutations(keys, 257, torch.device("cuda")).cpu(),
                       counters.permutations(keys, 257, CPU))

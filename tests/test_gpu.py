"""The CUDA path of the family trainer (skipped where no GPU is visible, as in CI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.train import pick_device, train_family
from tests.test_train import FAMILIES

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_no_gpu_requested_means_cpu():
    assert pick_device(0).type == "cpu"


@needs_cuda
@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_family_on_cuda_matches_the_cpu(name):
    runs = FAMILIES[name]  # float64
    cpu = train_family(runs, torch.device("cpu"))
    gpu = train_family(runs, pick_device(1))
    assert gpu.device.startswith("cuda")
    for key in ("train_loss", "test_loss"):
        np.testing.assert_allclose(getattr(gpu, key), getattr(cpu, key), rtol=1e-6, err_msg=key)
    np.testing.assert_array_equal(gpu.diverged_step, cpu.diverged_step)


@needs_cuda
def test_cushion_measures_on_cuda_match_the_cpu():
    from core.measures import cushion
    from core.measures.compression import matrix_project
    from core.seeding import generator

    g = torch.Generator().manual_seed(0)
    dims = [6, 16, 12, 3]
    weights = [torch.randn(3, o, i, generator=g, dtype=torch.float64) / i**0.5 for i, o in zip(dims[:-1], dims[1:])]
    biases = [0.1 * torch.randn(3, o, generator=g, dtype=torch.float64) for o in dims[1:]]
    x = torch.randn(3, 20, 6, generator=g, dtype=torch.float64)
    cuda = torch.device("cuda")
    on = lambda ts: [t.to(cuda) for t in ts]  # noqa: E731
    for name in ("layer_cushion", "min_interlayer_cushion", "activation_contraction"):
        cpu = getattr(cushion, name)(weights, biases, x)
        gpu = getattr(cushion, name)(on(weights), on(biases), x.to(cuda))
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-12)
    cpu = cushion.interlayer_smoothness(weights, biases, x, generator=generator(1))
    gpu = cushion.interlayer_smoothness(on(weights), on(biases), x.to(cuda), generator=generator(1))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-7, atol=1e-9)
    a = weights[1]
    torch.testing.assert_close(matrix_project(a.to(cuda), 64, generator(2)).cpu(), matrix_project(a, 64, generator(2)),
                               rtol=1e-9, atol=1e-12)

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

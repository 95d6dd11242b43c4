"""Where a deep linear net W_N ... W_1 starts, for experiments "acceleration" and
"linear-dynamics": an end-to-end map W0 from the run's seed, split into factors.

W0 = init_scale G / sqrt(d), G ~ N(0, I) of shape [outputs, d] from the run's "init" stream,
so every depth (and overparameterization) of one seed starts from the same end-to-end map;
``model.init = "decoupled"`` (linear-modes data) starts instead from W0 = init_scale U V^T
on the target's singular vectors (Saxe et al. 2014). "balanced" and "decoupled" split W0
into balanced factors, "identity" puts it in W_1 with identities after it.
``model.imbalance`` then scales W_1 by 1 + imbalance and W_N by its inverse.
"""

from __future__ import annotations

import math

import torch

from theoryscope.core.config import Init, RunSpec
from theoryscope.core.data import linear_modes_target
from theoryscope.core.datasets.table import input_width
from theoryscope.core.measures.acceleration import balanced_factors, identity_factors
from theoryscope.core.seeding import generator


def initial_end_to_end(run: RunSpec) -> torch.Tensor:
    """W0 ``[outputs, d]``, float64 on the CPU."""
    d, o = input_width(run.data), run.data.n_outputs
    if run.model.init is Init.DECOUPLED:
        u, _, v = linear_modes_target(run.data)
        return run.model.init_scale * u @ v.T
    g = torch.randn(o, d, generator=generator(run.seed, "init"), dtype=torch.float64)
    return run.model.init_scale * g / math.sqrt(d)


def initial_factors(run: RunSpec) -> list[torch.Tensor]:
    """The run's factors W_1 ... W_N (float64, CPU), imbalance applied."""
    model = run.model
    factor = identity_factors if model.init is Init.IDENTITY else balanced_factors
    factors = factor(initial_end_to_end(run), model.depth, model.hidden_width)
    if model.depth > 1 and model.imbalance:
        factors[0] = factors[0] * (1 + model.imbalance)
        factors[-1] = factors[-1] / (1 + model.imbalance)
    return factors

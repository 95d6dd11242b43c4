"""A sweep's trained nets, in the researcher's hands (``[store] weights``).

    from theoryscope import weights

    params = weights.load("results", "quickstart", run_id)           # final weights
    start = weights.init("results", "quickstart", run_id)            # the init, from the seed
    weights.index("results", "quickstart").to_pylist()               # what is kept where
    y = weights.outputs(params, x)                                    # the net on a batch x [n, in]

``load`` returns ``core.models.Params``: ``weights`` a list of ``[out, in]`` tensors
(layer 1 first), ``biases`` a matching list or None, on the CPU in the dtype the run
trained in (a CNN's: ``core.cnn.ConvParams``, kernels ``[C_out, C_in, k, k]`` per block
and the head ``[out, features]``); ``outputs`` evaluates it. The files are plain
safetensors (``sweeps.weights`` says how they are laid out).
"""

from __future__ import annotations

import torch

from theoryscope.core import cnn
from theoryscope.core.cnn import ConvParams
from theoryscope.core.models import Params, forward
from theoryscope.core.nets import like
from theoryscope.storage.location import ResultsLike
from theoryscope.sweeps.weights import index, load, run_spec
from theoryscope.sweeps.weights import init as init_of_run

__all__ = ["index", "init", "load", "outputs", "run_spec"]


def init(results: ResultsLike, sweep: str, run_id: str) -> Params:
    """The net run ``run_id`` of ``sweep`` started from, rebuilt from its seed (float64)."""
    return init_of_run(run_spec(results, sweep, run_id))


def outputs(params: Params | ConvParams, x: torch.Tensor, nonlinear: bool = True, pool: int | None = None
            ) -> torch.Tensor:
    """One net's outputs ``[n, out]`` on ``x [n, in]`` (ReLU between layers unless
    ``nonlinear`` is False, as for the deep linear nets), in ``x``'s dtype. A CNN's
    (``ConvParams``) on images ``x [n, C, H, W]``, with its run's ``model.pool``."""
    if isinstance(params, ConvParams):
        if pool is None:
            raise ValueError("a CNN's outputs need pool= (its run's model.pool)")
        one = like(params, [t[None].to(x.dtype) for t in params.tensors()])
        return cnn.forward(one, x, pool)[0]
    one = Params([w[None].to(x.dtype) for w in params.weights],
                 None if params.biases is None else [b[None].to(x.dtype) for b in params.biases])
    return forward(one, x[None], nonlinear)[0]

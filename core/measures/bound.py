"""Theorem 4.1 of Arora, Ge, Neyshabur & Zhang (ICML 2018) on a stacked family.

For every member of a family, at one measured step: the quantities of the compression
bound, with c the largest activation contraction over layers, d the depth, mu_i and
mu_{i->} the minimum layer and interlayer cushions over the samples and gamma a
percentile of the training margins,

    q = c^2 d^2 max_{x in S} ||f(x)||^2 sum_i 1 / (mu_i^2 mu_{i->}^2) / gamma^2,
    bound = L_gamma(f) + sqrt(q / m)   (log factors dropped),

and how the net compressed by Matrix-Project (``core.measures.compression``) does. The
bound exists for classification with a positive margin only; elsewhere it is NaN.
Every value is an array ``[F]`` (or a plain number shared by the family), on the host.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from theoryscope.core import models
from theoryscope.core.measures.compression import compress, margin_loss, margins
from theoryscope.core.train import StackedData, member_losses


def host(t: torch.Tensor) -> np.ndarray:
    """A tensor as a float64 array on the host."""
    return t.detach().double().cpu().numpy()


def bound_quantities(params: models.Params, per_sample: dict[str, torch.Tensor], contraction: torch.Tensor,
                     data: StackedData, nonlinear: bool, n_train: int, x: torch.Tensor, compression_k: int,
                     margin_percentile: float, seed: int) -> dict:
    """The quantities of Theorem 4.1 and of the Matrix-Project-compressed net, ``[F]`` each.

    ``per_sample`` holds the per-sample ``layer_cushion`` and ``interlayer_cushion``
    ``[F, L, n]`` on the samples ``x``; ``contraction`` is ``[F, L-1]``; ``compression_k``
    helpers per layer (0: no compressed net) drawn from ``seed``.
    """
    depth = len(params.weights)
    out_train = models.forward(params, data.x_train, nonlinear)
    out_test = models.forward(params, data.x_test, nonlinear)
    train_loss, train_error = member_losses(out_train, data.y_train, data.classification)
    test_loss, test_error = member_losses(out_test, data.y_test, data.classification)
    f = out_train.shape[0]
    c = contraction.amax(dim=-1) if depth > 1 else torch.ones(f, dtype=x.dtype, device=x.device)
    max_norm = out_train.norm(dim=-1).amax(dim=-1)
    mu = per_sample["layer_cushion"].amin(dim=-1)
    mu_to = per_sample["interlayer_cushion"].amin(dim=-1)
    nothing = np.full(f, math.nan)
    row = {
        "activation_contraction": host(c), "max_output_norm": host(max_norm),
        "params": sum(int(w.shape[-1] * w.shape[-2]) for w in params.weights),
        "margin": nothing, "margin_loss": nothing, "effective_params": nothing, "bound": nothing,
        "train_error": nothing, "test_error": nothing, "gen_gap": host(test_loss - train_loss),
        "compression_k": compression_k or None, "compressed_params": compression_k * depth or None,
        "compression_error": nothing, "compressed_train_error": nothing, "compressed_test_error": nothing,
        "compressed_test_loss": nothing, "compressed_margin_loss": nothing,
    }
    gamma = None
    if data.classification:
        margin = margins(out_train, data.y_train)
        gamma = torch.quantile(margin, margin_percentile / 100, dim=-1)
        gamma = torch.where(gamma > 0, gamma, math.nan)  # no positive margin: no bound
        q = c**2 * depth**2 * max_norm**2 * (1 / (mu**2 * mu_to**2)).sum(dim=-1) / gamma**2
        loss_at_gamma = torch.where(torch.isnan(gamma), math.nan, margin_loss(margin, gamma))
        row |= {"margin": host(gamma), "margin_loss": host(loss_at_gamma), "effective_params": host(q),
                "bound": host(loss_at_gamma + torch.sqrt(q / n_train)), "train_error": host(train_error),
                "test_error": host(test_error), "gen_gap": host(test_error - train_error)}
    if compression_k:
        row |= _compressed(params, data, nonlinear, x, compression_k, seed, gamma)
    return row


def _compressed(params: models.Params, data: StackedData, nonlinear: bool, x: torch.Tensor, k: int, seed: int,
                gamma: torch.Tensor | None) -> dict:
    """How the net with every weight matrix compressed by Matrix-Project does: its median
    relative output change on ``x``, its test loss and (classification) its errors and
    its training margin loss at the uncompressed net's gamma."""
    small = models.Params(compress(params.weights, k, seed), params.biases)
    reference = models.forward(params, x, nonlinear)
    moved = (models.forward(small, x, nonlinear) - reference).norm(dim=-1) / reference.norm(dim=-1)
    c_train = models.forward(small, data.x_train, nonlinear)
    c_test_loss, c_test_error = member_losses(models.forward(small, data.x_test, nonlinear), data.y_test,
                                              data.classification)
    row = {"compression_error": host(moved.median(dim=-1).values), "compressed_test_loss": host(c_test_loss)}
    if data.classification:
        _, c_train_error = member_losses(c_train, data.y_train, True)
        row |= {"compressed_train_error": host(c_train_error), "compressed_test_error": host(c_test_error),
                "compressed_margin_loss": host(torch.where(
                    torch.isnan(gamma), math.nan, margin_loss(margins(c_train, data.y_train), gamma)))}
    return row

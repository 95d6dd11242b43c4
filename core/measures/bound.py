"""Theorem 4.1 of Arora, Ge, Neyshabur & Zhang (ICML 2018) on a stacked family.

For every member of a family, at one measured step: the quantities of the compression
bound, with c the largest activation contraction over layers, d the depth, mu_i and
mu_{i->} the minimum layer and interlayer cushions over the samples S and gamma a
percentile of the training margins,

    q = c^2 d^2 max_{x in S} ||f(x)||^2 sum_i 1 / (mu_i^2 mu_{i->}^2) / gamma^2,
    bound = L_gamma(f) + sqrt(q / m)   (log factors dropped),

whether the theorem's premises hold (interlayer smoothness rho_delta >= 3d, a margin
gamma > 0 of a classifier, every cushion positive and finite), and how the net compressed
by Matrix-Project (``core.measures.compression``) does. ``bound`` is the formula where
every premise holds and NaN elsewhere; ``bound_formula`` is the formula regardless.
Every value is an array ``[F]`` (or a plain number shared by the family), on the host.

A CNN (``Layered.conv``) takes Theorem 5.1's form: each layer's term 1 / (mu_i^2 mu_{i->}^2)
is multiplied by beta^2 ceil(kappa_i / s_i)^2, beta the well-distributed Jacobian
(``core.measures.conv_cushion``), kappa_i the kernel size and s_i the stride of layer i
(the head: 1), and its conv layers are compressed by Matrix-Project-Conv
(``core.measures.conv_compression``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from theoryscope.core import cnn, models
from theoryscope.core.measures import conv_cushion
from theoryscope.core.measures.compression import (
    DENSE, LayerCompression, choose_helpers, compress, given_helpers, layer_output_error, margin_loss, margins,
)
from theoryscope.core.measures.conv_compression import ConvLayer
from theoryscope.core.train import StackedData, member_losses

Weights = list[torch.Tensor]
OUTPUT_BLOCK = 256  # samples a CNN's (compressed) outputs are computed for at once


@dataclass(frozen=True)
class Layered:
    """A family as the bound sees it: its layers' weights A^1..A^L (what the compression
    replaces), how each is compressed (``kinds``), the outputs ``outputs(weights, x)`` on
    flat inputs ``x [F, n, d]`` with those weights (or their compressed forms) in place of
    A^1..A^L, biases kept, and ``factors`` ``[F, L]``: what multiplies each layer's term of
    q (None: 1, Theorem 4.1)."""

    weights: Weights
    kinds: list[LayerCompression]
    outputs: Callable[[Weights, torch.Tensor], torch.Tensor]
    factors: torch.Tensor | None = None

    @staticmethod
    def dense(params: models.Params, nonlinear: bool) -> Layered:
        """An MLP (``nonlinear``) or a deep linear net."""
        return Layered(list(params.weights), [DENSE] * len(params.weights),
                       lambda w, x: models.forward(models.Params(w, params.biases), x, nonlinear))

    @staticmethod
    def conv(params: cnn.ConvParams, arch: cnn.ConvArch, beta: torch.Tensor, independence: int) -> Layered:
        """A CNN family of architecture ``arch``, with ``beta`` ``[F]`` its well-distributed
        Jacobian: Theorem 5.1's factor beta^2 k^2 per conv layer (stride 1), beta^2 for the
        head; conv layers compressed by Matrix-Project-Conv with ``independence``-wise
        independent filters."""
        sizes = torch.tensor([arch.kernel**2] * arch.depth + [1], dtype=beta.dtype, device=beta.device)

        def outputs(w: Weights, x: torch.Tensor) -> torch.Tensor:
            """In blocks of samples: a compressed layer's per-position filters unfold every
            patch of its input."""
            net = cnn.ConvParams(w[:-1], w[-1], params.conv_biases, params.head_bias)
            images = x.view(*x.shape[:-1], *arch.in_shape)
            return torch.cat([conv_cushion.forward_pass(net, images[:, start:start + OUTPUT_BLOCK], arch.pool).xs[-1]
                              for start in range(0, images.shape[1], OUTPUT_BLOCK)], dim=1)

        kinds = [ConvLayer(independence, b.map[0] * b.map[1]) for b in arch.shapes.blocks]
        return Layered([*params.convs, params.head], [*kinds, DENSE], outputs, beta.square().unsqueeze(-1) * sizes)

    def params(self) -> int:
        """Weights of one uncompressed member."""
        return sum(kind.entries(w) for w, kind in zip(self.weights, self.kinds))


def host(t: torch.Tensor) -> np.ndarray:
    """A tensor as a float64 array on the host."""
    return t.detach().double().cpu().numpy()


def flags(t: torch.Tensor) -> np.ndarray:
    """A boolean tensor as a bool array on the host."""
    return t.detach().cpu().numpy().astype(bool)


def premises(rho: torch.Tensor, depth: int, gamma: torch.Tensor | None, mu: torch.Tensor,
             mu_to: torch.Tensor) -> dict[str, torch.Tensor]:
    """Theorem 4.1's premises per member: ``premise_smoothness`` rho_delta >= 3d,
    ``premise_margin`` gamma > 0 (false for regression: the theorem bounds a
    classification error), ``premise_cushions`` every mu_i and mu_{i->} (``[F, L]``)
    positive and finite, and their conjunction ``premise``."""
    smooth = rho >= 3 * depth
    margin = torch.zeros_like(smooth) if gamma is None else gamma > 0
    cushions = ((mu > 0) & torch.isfinite(mu) & (mu_to > 0) & torch.isfinite(mu_to)).all(dim=-1)
    return {"premise_smoothness": smooth, "premise_margin": margin, "premise_cushions": cushions,
            "premise": smooth & margin & cushions}


def bound_quantities(net: Layered, per_sample: dict[str, torch.Tensor], contraction: torch.Tensor,
                     rho: torch.Tensor, data: StackedData, n_train: int, margin_percentile: float) -> dict:
    """The quantities and premises of Theorem 4.1 (5.1 for a CNN), ``[F]`` each.

    ``per_sample`` holds the per-sample ``layer_cushion`` and ``interlayer_cushion``
    ``[F, L, n]`` on the samples S; ``contraction`` is ``[F, L-1]``; ``rho`` is the
    paper's rho_delta per member (``cushion.net_smoothness``). max ||f(x)|| and gamma are
    taken over the whole training set.
    """
    depth = len(net.weights)
    out_train = net.outputs(net.weights, data.x_train)
    out_test = net.outputs(net.weights, data.x_test)
    train_loss, train_error = member_losses(out_train, data.y_train, data.classification)
    test_loss, test_error = member_losses(out_test, data.y_test, data.classification)
    f = out_train.shape[0]
    c = contraction.amax(dim=-1) if depth > 1 else out_train.new_ones(f)
    max_norm = out_train.norm(dim=-1).amax(dim=-1)
    mu = per_sample["layer_cushion"].amin(dim=-1)
    mu_to = per_sample["interlayer_cushion"].amin(dim=-1)
    nothing = np.full(f, math.nan)
    row = {
        "activation_contraction": host(c), "max_output_norm": host(max_norm),
        "params": net.params(),
        "margin": nothing, "margin_loss": nothing, "effective_params": nothing, "bound_formula": nothing,
        "bound": nothing, "train_error": nothing, "test_error": nothing, "gen_gap": host(test_loss - train_loss),
        "interlayer_smoothness": host(rho),
    }
    gamma = None
    if data.classification:
        margin = margins(out_train, data.y_train)
        gamma = torch.quantile(margin, margin_percentile / 100, dim=-1)
        terms = 1 / (mu**2 * mu_to**2) if net.factors is None else net.factors / (mu**2 * mu_to**2)
        q = c**2 * depth**2 * max_norm**2 * terms.sum(dim=-1) / gamma**2
        loss_at_gamma = margin_loss(margin, gamma)
        formula = loss_at_gamma + torch.sqrt(q / n_train)
        row |= {"margin": host(gamma), "margin_loss": host(loss_at_gamma), "effective_params": host(q),
                "bound_formula": host(formula), "train_error": host(train_error), "test_error": host(test_error),
                "gen_gap": host(test_error - train_error)}
    row |= {name: flags(held) for name, held in premises(rho, depth, gamma, mu, mu_to).items()}
    row["bound"] = np.where(row["premise"], row["bound_formula"], math.nan)
    return row


@dataclass(frozen=True)
class CompressionPlan:
    """How many Matrix-Project helpers each layer gets: ``k`` one integer per layer (from
    the spec), or None to choose k per member and layer from the target error ``eps``
    (``compression.choose_helpers``, at most ``max_k``); ``seed`` of the helpers."""

    k: tuple[int, ...] | None
    eps: float
    max_k: int
    seed: int


Counts = list[torch.Tensor]  # one [F] tensor per layer


def helper_counts(net: Layered, inputs: list[torch.Tensor], plan: CompressionPlan) -> tuple[Counts, Counts]:
    """Per layer ``[F]``: the helpers used (0: the layer is kept as it is) and those the
    target error needs (NaN when k is given)."""
    if plan.k is None:
        return choose_helpers(net.weights, inputs, plan.eps, plan.max_k, net.kinds)
    used = given_helpers(net.weights, plan.k, net.kinds)
    return used, [torch.full(u.shape, math.nan, dtype=inputs[0].dtype, device=u.device) for u in used]


def compressed_quantities(net: Layered, data: StackedData, x: torch.Tensor, inputs: list[torch.Tensor],
                          plan: CompressionPlan, gamma: np.ndarray) -> tuple[dict, dict]:
    """The net with its layers compressed by Matrix-Project as ``plan`` says: ``(bounds
    columns [F], layers columns [F, L])``. ``x`` are the samples (flat), ``inputs`` every
    layer's input phi(x^{i-1}) on them.

    Per layer: the helpers used (``compression_k``, NaN where the layer is kept as it is),
    those the target needs (``compression_k_needed``), whether it is compressed, the
    closed-form expected RMS relative error of its output over the samples ``x`` and the
    measured one with only that layer compressed (both 0 for a layer kept). Per net: the
    most helpers of a layer, the numbers stored (sum of k_i, fan_in * fan_out for a layer
    kept), the layers compressed, the target, and how the compressed net does
    (``_compressed_net``).
    """
    w, kinds = net.weights, net.kinds
    used, needed = helper_counts(net, inputs, plan)
    small = compress(w, used, plan.seed, kinds)
    counts = torch.stack(used, dim=-1).to(x.dtype)  # [F, L]
    on = counts > 0
    expected = torch.stack([kind.relative_error2(a, z, u.clamp_min(1)).sqrt().to(x.dtype)
                            for a, z, u, kind in zip(w, inputs, used, kinds)], -1)
    measured = torch.stack([layer_output_error(a, s, z, kind) for a, s, z, kind in zip(w, small, inputs, kinds)], -1)
    sizes = torch.tensor([kind.entries(a) for a, kind in zip(w, kinds)], dtype=x.dtype, device=x.device)
    stored = torch.stack([kind.stored(c) for kind, c in zip(kinds, counts.unbind(dim=-1))], dim=-1)
    stored = torch.where(on, stored, sizes)  # [F, L]: the numbers each layer keeps
    most = counts.amax(dim=-1)
    layers = {
        "compression_k": host(torch.where(on, counts, math.nan)),
        "compression_k_needed": host(torch.stack(needed, dim=-1)),
        "compressed": flags(on),
        "compression_params": host(stored),
        "compression_expected_error": host(torch.where(on, expected, 0.0)),
        "compression_layer_error": host(measured),
    }
    summary = {
        "compression_k": host(torch.where(most > 0, most, math.nan)),
        "compressed_params": host(stored.sum(dim=-1)),
        "compressed_layers": host(on.sum(dim=-1).to(x.dtype)),
        "compression_target": plan.eps if plan.k is None else None,
    }
    return summary | _compressed_net(net, small, data, x, gamma), layers


def _compressed_net(net: Layered, small: Weights, data: StackedData, x: torch.Tensor, gamma: np.ndarray) -> dict:
    """How the compressed net does: its median relative output change on ``x``, its test
    loss and (classification) its errors and its training margin loss at gamma."""
    reference = net.outputs(net.weights, x)
    moved = (net.outputs(small, x) - reference).norm(dim=-1) / reference.norm(dim=-1)
    c_test_loss, c_test_error = member_losses(net.outputs(small, data.x_test), data.y_test, data.classification)
    nothing = np.full(reference.shape[0], math.nan)
    row = {"compression_error": host(moved.median(dim=-1).values), "compressed_test_loss": host(c_test_loss),
           "compressed_train_error": nothing, "compressed_test_error": nothing, "compressed_margin_loss": nothing}
    if data.classification:
        c_train = net.outputs(small, data.x_train)
        _, c_train_error = member_losses(c_train, data.y_train, True)
        at = torch.as_tensor(gamma, dtype=x.dtype, device=x.device)
        row |= {"compressed_train_error": host(c_train_error), "compressed_test_error": host(c_test_error),
                "compressed_margin_loss": host(margin_loss(margins(c_train, data.y_train), at))}
    return row

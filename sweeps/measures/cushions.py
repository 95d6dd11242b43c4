"""The ``cushions`` measure: noise stability and the compression bound of Arora, Ge,
Neyshabur & Zhang, "Stronger generalization bounds for deep nets via a compression
approach" (ICML 2018).

For every member of a family, at the steps asked for and after training: the per-layer
cushions, contraction, smoothness, noise attenuation and norms (``layers``, one row per
layer) and the bound of Theorem 4.1 with the Matrix-Project-compressed net beside it
(``bounds``, one row per member). All of it is computed stacked over the family by
``core.measures.cushion`` and ``core.measures.bound``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from theoryscope.core import models
from theoryscope.core.config import Choice, RunSpec, is_finite, require
from theoryscope.core.measures.bound import bound_quantities, host
from theoryscope.core.measures.cushion import (
    activation_contraction, interlayer_smoothness, layer_cushion, min_interlayer_cushion, noise_attenuation,
    smoothness_quantile, weight_norms,
)
from theoryscope.core.seeding import generator
from theoryscope.core.train import FamilyResult
from theoryscope.sweeps.figures import Figure, Rows, distinct, label, pyplot
from theoryscope.sweeps.measures.base import Measure
from theoryscope.sweeps.records import nullable


class Samples(Choice):
    TRAIN = "train"
    TEST = "test"


@dataclass(frozen=True)
class CushionSpec:
    """Noise stability and the compression bound (Arora, Ge, Neyshabur & Zhang 2018)."""

    # Which data the measures are computed on; the paper's S is the training set.
    samples: Samples = Samples.TRAIN
    # At most this many samples (the first ones of that set).
    max_samples: int = 256
    # Percentiles of the per-sample cushions stored beside their minimum (the paper's mu).
    percentiles: tuple[float, ...] = (10.0, 50.0)
    # Steps at which to measure as well as after training, to watch cushions evolve.
    steps: tuple[int, ...] = ()
    # Helper matrices per layer for Matrix-Project; 0 skips evaluating a compressed net.
    compression_k: int = 256
    # Interlayer smoothness: perturbation size relative to ||x^i||, draws per sample, and
    # the delta of rho_delta.
    noise_scale: float = 0.1
    draws: int = 8
    delta: float = 0.1
    # Margin gamma of the bound: this percentile of the training margins (classification).
    margin_percentile: float = 10.0
    # Seed of the perturbations and of the Matrix-Project helpers.
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.max_samples >= 1, "max_samples", "an integer >= 1", self.max_samples)
        require(all(is_finite(p) and 0 <= p <= 100 for p in self.percentiles), "percentiles",
                 "a list of numbers in [0, 100]", list(self.percentiles))
        require(all(s >= 0 for s in self.steps), "steps", "a list of integers >= 0", list(self.steps))
        require(self.compression_k >= 0, "compression_k", "an integer >= 0 (0 = no compression)",
                 self.compression_k)
        require(is_finite(self.noise_scale) and self.noise_scale > 0, "noise_scale", "a number > 0",
                 self.noise_scale)
        require(self.draws >= 1, "draws", "an integer >= 1", self.draws)
        require(is_finite(self.delta) and 0 < self.delta < 1, "delta", "a number in (0, 1)", self.delta)
        require(is_finite(self.margin_percentile) and 0 < self.margin_percentile < 100,
                 "margin_percentile", "a number in (0, 100)", self.margin_percentile)
        require(self.seed >= 0, "seed", "an integer >= 0", self.seed)


# One row per run, measured step and layer (Arora, Ge, Neyshabur & Zhang 2018). The
# cushion columns hold the paper's quantity, the minimum over samples; percentile columns
# (layer_cushion_p10, ...) follow the spec's `percentiles` and are added by layers_schema.
LAYERS = pa.schema([
    ("sweep", pa.string()),
    ("run_id", pa.string()),
    ("step", pa.int64()),
    ("layer", pa.int64()),                    # 1 = the first weight matrix
    ("fan_in", pa.int64()),
    ("fan_out", pa.int64()),
    ("layer_cushion", pa.float64()),          # mu_i
    ("layer_cushion_mean", pa.float64()),
    ("interlayer_cushion", pa.float64()),     # mu_{i->} = min(1/sqrt(h^i), min_j mu_{i,j})
    ("interlayer_cushion_mean", pa.float64()),
    ("activation_contraction", pa.float64()),  # max_x ||x^i|| / ||phi(x^i)||; null for the last layer
    ("interlayer_smoothness", pa.float64()),  # rho_delta; null for the last layer
    ("noise_attenuation", pa.float64()),      # output perturbation from noise of norm ||x^i|| at layer i
    ("frobenius_norm", pa.float64()),
    ("spectral_norm", pa.float64()),
    ("stable_rank", pa.float64()),
])


def layers_schema(percentiles: tuple[float, ...]) -> pa.Schema:
    schema = LAYERS
    for name in ("layer_cushion", "interlayer_cushion"):
        for q in percentiles:
            schema = schema.append(pa.field(percentile_column(name, q), pa.float64()))
    return schema


def percentile_column(name: str, q: float) -> str:
    return f"{name}_p{q:g}".replace(".", "_")


# One row per run and measured step: the compression bound of Theorem 4.1 and how a net
# compressed by Matrix-Project does.
BOUNDS = pa.schema([
    ("sweep", pa.string()),
    ("run_id", pa.string()),
    ("step", pa.int64()),
    ("samples", pa.int64()),                  # samples the cushions were measured on
    ("margin", pa.float64()),                 # gamma (classification)
    ("margin_loss", pa.float64()),            # training gamma-margin loss
    ("activation_contraction", pa.float64()),  # c, the maximum over layers
    ("max_output_norm", pa.float64()),        # max over the training set of ||f(x)||
    ("effective_params", pa.float64()),       # q of Theorem 4.1
    ("params", pa.int64()),                   # weights of the uncompressed net
    ("bound", pa.float64()),                  # margin_loss + sqrt(q / n_train), log factors dropped
    ("train_error", pa.float64()),
    ("test_error", pa.float64()),
    ("gen_gap", pa.float64()),
    ("compression_k", pa.int64()),            # Matrix-Project helpers per layer
    ("compressed_params", pa.int64()),        # k per layer
    ("compression_error", pa.float64()),      # median ||f_hat(x) - f(x)|| / ||f(x)||
    ("compressed_train_error", pa.float64()),
    ("compressed_test_error", pa.float64()),
    ("compressed_test_loss", pa.float64()),
    ("compressed_margin_loss", pa.float64()),
])


def cushion_tables(opts: CushionSpec, sweep: str, runs: Sequence[RunSpec],
                 result: FamilyResult) -> dict[str, pa.Table]:
    """``layers`` and ``bounds`` rows of Arora, Ge, Neyshabur & Zhang (2018) for every
    member at every measured step."""
    data = result.data
    nonlinear = models.is_nonlinear(runs[0].model.kind)
    x = (data.x_train if opts.samples is Samples.TRAIN else data.x_test)[:, :opts.max_samples]
    n_train = runs[0].data.n_train
    layer_rows, bound_rows = [], []
    for step in sorted(result.snapshots):
        params = result.snapshots[step]
        w, b = params.weights, params.biases
        depth = len(w)
        with torch.no_grad():
            per_sample = {
                "layer_cushion": layer_cushion(w, b, x, nonlinear),  # [F, L, n]
                "interlayer_cushion": min_interlayer_cushion(w, b, x, nonlinear),
            }
            contraction = activation_contraction(w, b, x, nonlinear)  # [F, L-1]
            rho = smoothness_quantile(interlayer_smoothness(
                w, b, x, opts.noise_scale, opts.draws, generator(opts.seed, "smoothness", step), nonlinear), opts.delta)
            attenuation = noise_attenuation(w, b, x, generator(opts.seed, "attenuation", step), nonlinear)[..., -1]
            norms = weight_norms(w)
            bound = bound_quantities(params, per_sample, contraction, data, nonlinear, n_train, x,
                                     opts.compression_k, opts.margin_percentile, opts.seed)
        columns = {}
        for name, values in per_sample.items():
            columns[name] = host(values.amin(dim=-1))
            columns[f"{name}_mean"] = host(values.mean(dim=-1))
            for q in opts.percentiles:
                columns[percentile_column(name, q)] = host(torch.quantile(values, q / 100, dim=-1))
        hidden = {"activation_contraction": host(contraction), "interlayer_smoothness": host(rho),
                  "noise_attenuation": host(attenuation)}
        norm_columns = {"frobenius_norm": host(norms["frobenius"]), "spectral_norm": host(norms["spectral"]),
                        "stable_rank": host(norms["stable_rank"])}
        for f, run in enumerate(runs):
            for layer in range(1, depth + 1):
                row = {"sweep": sweep, "run_id": run.run_id, "step": step, "layer": layer,
                       "fan_in": w[layer - 1].shape[-1], "fan_out": w[layer - 1].shape[-2]}
                row |= {k: nullable(v[f, layer - 1]) for k, v in columns.items()}
                row |= {k: nullable(v[f, layer - 1]) if layer < depth else None for k, v in hidden.items()}
                row |= {k: nullable(v[f, layer - 1]) for k, v in norm_columns.items()}
                layer_rows.append(row)
            bound_rows.append({"sweep": sweep, "run_id": run.run_id, "step": step, "samples": x.shape[1],
                               **{k: (nullable(v[f]) if isinstance(v, np.ndarray) else v) for k, v in bound.items()}})
    return {
        "layers": pa.Table.from_pylist(layer_rows, schema=layers_schema(opts.percentiles)),
        "bounds": pa.Table.from_pylist(bound_rows, schema=BOUNDS),
    }


def snapshot_steps(opts: CushionSpec, run: RunSpec) -> set[int]:
    """The steps asked for within the run, and the last one."""
    return {s for s in opts.steps if s <= run.train.steps} | {run.train.steps}


def draw_cushions(rows: Rows, _: str):
    """Layer cushion of every run (the paper's minimum over samples), per layer and noise."""
    if not rows:
        return None
    plt = pyplot()
    layers, noises = distinct(rows, "layer"), distinct(rows, "label_noise")
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers) + 0.5, 3.2), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, layer in zip(axes[0], layers):
        data = [[r["layer_cushion"] for r in rows if r["layer"] == layer and r["label_noise"] == n
                 and r["layer_cushion"] is not None] for n in noises]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(noises) + 1), [label(n) for n in noises])
        ax.set_xlabel("label noise")
        ax.set_title(f"layer {layer}")
    axes[0][0].set_ylabel("layer cushion μ_i")
    return fig


def draw_effective_params(rows: Rows, _: str):
    """Theorem 4.1's effective parameter count q against the generalization gap."""
    rows = [r for r in rows if r["q"] is not None and r["gap"] is not None]
    if not rows:
        return None
    fig, ax = pyplot().subplots(figsize=(5, 3.8), layout="constrained")
    points = ax.scatter([r["q"] for r in rows], [r["gap"] for r in rows], c=[r["label_noise"] or 0 for r in rows],
                        cmap="viridis", s=18)
    ax.set_xscale("log")
    ax.set_xlabel("effective parameters q")
    ax.set_ylabel("generalization gap")
    fig.colorbar(points, ax=ax, label="label noise")
    return fig


MEASURE = Measure(
    name="cushions",
    options=CushionSpec,
    tables={"layers": LAYERS, "bounds": BOUNDS},
    snapshot_steps=snapshot_steps,
    rows=cushion_tables,
    figures=(
        Figure("cushions", "Layer cushions against label noise",
               "SELECT r.label_noise, l.layer, l.layer_cushion FROM layers l JOIN runs r USING (sweep, run_id) "
               "WHERE l.sweep = {sweep} AND l.step = r.steps", draw_cushions,
               "Distribution over runs of the layer cushion μ_i (Arora et al. 2018) after training, per layer and "
               "label noise."),
        Figure("effective-params", "Effective parameters against the generalization gap",
               "SELECT b.effective_params AS q, b.gen_gap AS gap, r.label_noise FROM bounds b "
               "JOIN runs r USING (sweep, run_id) WHERE b.sweep = {sweep} AND b.step = r.steps", draw_effective_params,
               "Theorem 4.1's effective parameter count q of every run against its generalization gap."),
    ),
)

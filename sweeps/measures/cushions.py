"""The ``cushions`` measure: noise stability and the compression bound of Arora, Ge,
Neyshabur & Zhang, "Stronger generalization bounds for deep nets via a compression
approach" (ICML 2018).

For every member of a family, at the steps asked for and after training: the per-layer
cushions, contraction, smoothness, noise attenuation, norms and Matrix-Project helpers
(``layers``, one row per layer), the bound of Theorem 4.1 with its premises and the
compressed net beside it (``bounds``, one row per member), and the attenuation curve of
the paper's Figure 1 (``attenuation``, one row per pair of layers). All of it is computed
stacked over the family by ``core.measures.cushion``, ``core.measures.bound`` and
``core.measures.compression``; for a CNN (the paper's Section 5: Theorem 5.1, the
well-distributed Jacobian, Matrix-Project-Conv) by ``core.measures.conv_cushion`` and
``core.measures.conv_compression``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from theoryscope.core.config import REAL_DATA, Choice, DataKind, ModelKind, RunSpec, is_finite, require
from theoryscope.core.config.shapes import conv_shapes
from theoryscope.core.errors import SpecError
from theoryscope.sweeps.figures import Figure
from theoryscope.sweeps.panels import (
    Rows, distinct, facets, layout, levels, matching, mean_note, note, panel_grid, pyplot, shared_legend,
    shared_log_axes,
)
from theoryscope.sweeps.measures.base import Grid, Measure

# torch and core's trainers and measures load in the functions that train or measure, so that
# reading results, planning and the CLI's --help, query and status do without them.
if TYPE_CHECKING:
    import torch

    from theoryscope.core import cnn, models
    from theoryscope.core.measures.bound import CompressionPlan, Layered
    from theoryscope.core.train import FamilyResult, StackedData


class Samples(Choice):
    TRAIN = "train"
    TEST = "test"


@dataclass(frozen=True)
class CushionSpec:
    """Noise stability and the compression bound (Arora, Ge, Neyshabur & Zhang 2018)."""

    # Which data the measures are computed on; the paper's S is the training set.
    samples: Samples = Samples.TRAIN
    # At most this many samples (the first ones of that set); 0 = all of them, the
    # paper's S (max ||f(x)|| and gamma always use the whole training set).
    max_samples: int = 0
    # Percentiles of the per-sample cushions stored beside their minimum (the paper's mu).
    percentiles: tuple[float, ...] = (10.0, 50.0)
    # Steps at which to measure as well as after training, to watch cushions evolve.
    steps: tuple[int, ...] = ()
    # Matrix-Project helpers: [] = per layer from compression_error; one integer for every
    # layer (0 = no compressed net); or a list of one per layer (0 keeps that layer).
    compression_k: int | tuple[int, ...] = ()
    # Target RMS relative error of each layer's output, used when compression_k is [].
    compression_error: float = 0.1
    # Most helpers a layer gets from the target (each costs fan_in * fan_out sign draws);
    # a layer that needs more is kept as it is.
    compression_max_k: int = 4096
    # CNNs: Matrix-Project-Conv's p, the independence of the filters it draws for the
    # output positions (the paper's p = log(1/eta)); a conv layer with k helpers stores k p
    # numbers.
    compression_p: int = 10
    # Interlayer smoothness: perturbation size relative to ||x^i||, noise draws (each one
    # event over all samples and layers; at least 1/delta for the quantile to mean much),
    # and the delta of rho_delta.
    noise_scale: float = 0.1
    draws: int = 32
    delta: float = 0.1
    # Noise attenuation (the paper's Figure 1): noise of this norm relative to ||x^i||.
    attenuation_noise: float = 0.1
    # Margin gamma of the bound: this percentile of the training margins (classification).
    margin_percentile: float = 10.0
    # Seed of the perturbations and of the Matrix-Project helpers.
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.max_samples >= 0, "max_samples", "an integer >= 0 (0 = every sample)", self.max_samples)
        require(all(is_finite(p) and 0 <= p <= 100 for p in self.percentiles), "percentiles",
                 "a list of numbers in [0, 100]", list(self.percentiles))
        require(all(s >= 0 for s in self.steps), "steps", "a list of integers >= 0", list(self.steps))
        k = self.compression_k
        require(k >= 0 if isinstance(k, int) else all(c >= 0 for c in k), "compression_k",
                 "an integer >= 0 (0 = no compressed net), a list of one integer >= 0 per layer, or [] "
                 "(k per layer from compression_error)", list(k) if isinstance(k, tuple) else k)
        require(is_finite(self.compression_error) and self.compression_error > 0, "compression_error",
                 "a number > 0", self.compression_error)
        require(self.compression_max_k >= 1, "compression_max_k", "an integer >= 1", self.compression_max_k)
        require(self.compression_p >= 1, "compression_p", "an integer >= 1", self.compression_p)
        for name in ("noise_scale", "attenuation_noise"):
            require(is_finite(getattr(self, name)) and getattr(self, name) > 0, name, "a number > 0",
                     getattr(self, name))
        require(self.draws >= 1, "draws", "an integer >= 1", self.draws)
        require(is_finite(self.delta) and 0 < self.delta < 1, "delta", "a number in (0, 1)", self.delta)
        require(is_finite(self.margin_percentile) and 0 < self.margin_percentile < 100,
                 "margin_percentile", "a number in (0, 100)", self.margin_percentile)
        require(self.seed >= 0, "seed", "an integer >= 0", self.seed)

    def compression(self, layers: int) -> CompressionPlan | None:
        """The Matrix-Project plan for a net of ``layers`` layers; None: no compressed net."""
        from theoryscope.core.measures.bound import CompressionPlan

        k = self.compression_k
        if k == 0:
            return None
        if isinstance(k, tuple) and k and len(k) != layers:
            raise SpecError(f"measure.cushions.compression_k: expected {layers} integers (one per layer of a "
                            f"net of {layers} layers), got {list(k)!r}")
        given = (k,) * layers if isinstance(k, int) else k or None
        return CompressionPlan(given, self.compression_error, self.compression_max_k, self.seed)


def check_cushions(opts: CushionSpec, grid: Grid, base: RunSpec) -> None:
    """What the options need of the sweep: ``check_compression`` and ``check_conv_maps``."""
    check_compression(opts, grid, base)
    check_conv_maps(opts, grid, base)


# Most bytes of maps a CNN's cushions hold per net: every layer's output and activation for
# every measured sample (a family holds this per member).
CONV_MAPS_BYTES = 1 << 30


def check_conv_maps(opts: CushionSpec, grid: Grid, base: RunSpec) -> None:
    """A CNN's cushions hold every layer's maps for all the measured samples: refused, with
    the ``max_samples`` that would fit, where a net of the sweep would hold more than
    ``CONV_MAPS_BYTES`` (e.g. all 60,000 MNIST images)."""
    swept = dict(grid)
    if ModelKind.CNN not in {ModelKind(k) for k in swept.get("model.kind", (base.model.kind,))}:
        return
    count = "data.n_train" if opts.samples is Samples.TRAIN else "data.n_test"
    fields = ("data.kind", "model.depth", "model.width", "model.kernel_size", "model.pool", count)
    worst = None
    at_base = lambda dotted: getattr(getattr(base, dotted.split(".")[0]), dotted.split(".")[1])  # noqa: E731
    for values in itertools.product(*(swept.get(f, (at_base(f),)) for f in fields)):
        kind, depth, width, kernel, pool, n = values
        image = REAL_DATA[DataKind(kind)].image if DataKind(kind) in REAL_DATA else None
        try:
            blocks = conv_shapes(image, depth, kernel, pool, width).blocks if image else ()
        except ValueError:  # an impossible net, refused by the run's own checks
            continue
        per_sample = math.prod(image or (0,)) + sum(
            b.out_channels * (b.map[0] * b.map[1] + b.pooled[0] * b.pooled[1]) for b in blocks)
        samples = min(n, opts.max_samples) if opts.max_samples else n
        held = samples * per_sample * base.train.dtype.itemsize
        if blocks and (worst is None or held > worst[0]):
            worst = (held, samples, per_sample, depth, width)
    if worst is not None and worst[0] > CONV_MAPS_BYTES:
        held, samples, per_sample, depth, width = worst
        fits = CONV_MAPS_BYTES // (per_sample * base.train.dtype.itemsize)
        raise SpecError(f"measure.cushions: a CNN's measures hold every layer's maps for the {samples} measured "
                        f"samples, {held / 2**30:.1f} GiB per net at depth {depth}, width {width}; set "
                        f"measure.cushions.max_samples to at most {fits}")


def check_compression(opts: CushionSpec, grid: Grid, base: RunSpec) -> None:
    """A list of one k per layer needs every net to have that many layers: every swept
    depth, or the base run's depth when depth is not swept (a CNN has depth conv layers
    and its head)."""
    k = opts.compression_k
    swept = dict(grid).get("model.depth")
    depths = swept or (base.model.depth,)
    kinds = {ModelKind(kind) for kind in dict(grid).get("model.kind", (base.model.kind,))}
    heads = {int(kind is ModelKind.CNN) for kind in kinds}
    if isinstance(k, tuple) and k and any(d + head != len(k) for d in depths for head in heads):
        where = f"[grid] sweeps depth over {list(depths)}" if swept else f"model.depth is {base.model.depth}"
        if len(heads) > 1:
            where += " and [grid] sweeps model.kind over CNNs and MLPs"
        needs = f"depth {len(k) - 1} (its conv layers and the head)" if heads == {1} else f"depth {len(k)}"
        raise SpecError(f"measure.cushions.compression_k: a list of {len(k)} integers (one per layer) needs "
                        f"every net to have {needs}, but {where}; give one integer for every layer, [] "
                        f"(k from compression_error), or a list as long as the number of layers")


# One row per run, measured step and layer (Arora, Ge, Neyshabur & Zhang 2018). The
# cushion columns hold the paper's quantity, the minimum over samples; percentile columns
# (layer_cushion_p10, ...) follow the spec's `percentiles` and are added by layers_schema.
LAYERS = pa.schema([
    ("sweep", pa.string()),
    ("run_id", pa.string()),
    ("step", pa.int64()),
    ("layer", pa.int64()),                    # 1 = the first weight matrix (a CNN's first conv)
    ("fan_in", pa.int64()),                   # a conv layer: C_in k^2
    ("fan_out", pa.int64()),                  # a conv layer: C_out
    ("kernel_size", pa.int64()),              # k of a conv layer; null for a dense one
    ("layer_cushion", pa.float64()),          # mu_i
    ("layer_cushion_mean", pa.float64()),
    ("interlayer_cushion", pa.float64()),     # mu_{i->} = min(1/sqrt(h^i), min_j mu_{i,j})
    ("interlayer_cushion_mean", pa.float64()),
    ("activation_contraction", pa.float64()),  # max_x ||x^i|| / ||phi(x^i)||; null for the last layer
    ("interlayer_smoothness", pa.float64()),  # rho_delta of layer i alone (all samples per draw); null last
    ("interlayer_smoothness_pooled", pa.float64()),  # delta-quantile over samples x draws pooled; null last
    ("noise_attenuation", pa.float64()),      # output change from noise attenuation_noise ||x^i|| at layer i
    ("jacobian_spread", pa.float64()),        # CNNs: beta of Definition 9 (arXiv v4) at layer i (max over j, samples)
    ("frobenius_norm", pa.float64()),         # a conv layer: of its kernel tensor
    ("spectral_norm", pa.float64()),          # a conv layer: of the convolution, circular padding (FFT)
    ("stable_rank", pa.float64()),            # of the operator: ||A||_F^2 / ||A||_2^2
    ("compression_k", pa.int64()),            # Matrix-Project helpers; null where the layer is kept
    ("compression_k_needed", pa.float64()),   # helpers the target error needs (null with a given k)
    ("compressed", pa.bool_()),               # whether Matrix-Project(-Conv) replaced the layer
    ("compression_params", pa.int64()),       # numbers the layer keeps: k (k p for a conv), its entries if kept
    ("compression_expected_error", pa.float64()),  # closed-form RMS relative error of the layer's output
    ("compression_layer_error", pa.float64()),  # measured, with only this layer compressed
])


def layers_schema(percentiles: tuple[float, ...]) -> pa.Schema:
    schema = LAYERS
    for name in ("layer_cushion", "interlayer_cushion"):
        for q in percentiles:
            schema = schema.append(pa.field(percentile_column(name, q), pa.float64()))
    return schema


def percentile_column(name: str, q: float) -> str:
    return f"{name}_p{q:g}".replace(".", "_")


# One row per run and measured step: the compression bound of Theorem 4.1, its premises
# and how a net compressed by Matrix-Project does.
BOUNDS = pa.schema([
    ("sweep", pa.string()),
    ("run_id", pa.string()),
    ("step", pa.int64()),
    ("samples", pa.int64()),                  # samples the cushions were measured on
    ("margin", pa.float64()),                 # gamma (classification)
    ("margin_loss", pa.float64()),            # training gamma-margin loss
    ("activation_contraction", pa.float64()),  # c, the maximum over layers
    ("max_output_norm", pa.float64()),        # max over the training set of ||f(x)||
    ("effective_params", pa.float64()),       # q of Theorem 4.1 (of Theorem 5.1 for a CNN)
    ("jacobian_spread", pa.float64()),        # CNNs: beta of Definition 9 (arXiv v4), the maximum over layers
    ("params", pa.int64()),                   # weights of the uncompressed net
    ("bound", pa.float64()),                  # bound_formula where every premise holds, else null
    ("bound_formula", pa.float64()),          # margin_loss + sqrt(q / n_train), log factors dropped
    ("interlayer_smoothness", pa.float64()),  # rho_delta of Definition 4.4, one per net
    ("premise_smoothness", pa.bool_()),       # rho_delta >= 3 depth
    ("premise_margin", pa.bool_()),           # gamma > 0 (false for regression)
    ("premise_cushions", pa.bool_()),         # every mu_i and mu_{i->} positive and finite
    ("premise", pa.bool_()),                  # all of them: Theorem 4.1 applies
    ("train_error", pa.float64()),
    ("test_error", pa.float64()),
    ("gen_gap", pa.float64()),
    ("compression_k", pa.int64()),            # most Matrix-Project helpers of a layer
    ("compressed_params", pa.int64()),        # sum of the layers' compression_params
    ("compressed_layers", pa.int64()),        # layers Matrix-Project replaced
    ("compression_target", pa.float64()),     # the per-layer target error (null with a given k)
    ("compression_error", pa.float64()),      # median ||f_hat(x) - f(x)|| / ||f(x)||
    ("compressed_train_error", pa.float64()),
    ("compressed_test_error", pa.float64()),
    ("compressed_test_loss", pa.float64()),
    ("compressed_margin_loss", pa.float64()),
])

# One row per run, measured step and pair of layers i < j (the paper's Figure 1): noise
# injected at layer i, measured at layer j.
ATTENUATION = pa.schema([
    ("sweep", pa.string()),
    ("run_id", pa.string()),
    ("step", pa.int64()),
    ("layer", pa.int64()),                    # i, where the noise is injected (1..L-1)
    ("at_layer", pa.int64()),                 # j, where it is measured (i < j <= L)
    ("noise", pa.float64()),                  # ||eta|| / ||x^i||
    ("attenuation", pa.float64()),            # median over samples of ||M^{i,j}(x^i + eta) - x^j|| / ||x^j||
])

# Infinite smoothness is a finding (the map is linear along every perturbation, or there
# is no pair i < j), not a failure, and so is an infinite contraction (a sample whose ReLU
# zeroes a whole nonzero layer): kept as +inf, where other columns store NULL.
KEEPS_INFINITY = frozenset({"interlayer_smoothness", "interlayer_smoothness_pooled", "activation_contraction"})


def cell(value, kind: pa.DataType, name: str):
    """A table cell from a host number: NULL for NaN (and for infinities, but in the
    ``KEEPS_INFINITY`` columns); integers and booleans as such."""
    if value is None or isinstance(value, str):
        return value
    if pa.types.is_boolean(kind):
        return bool(value)
    number = float(value)
    if math.isnan(number) or (math.isinf(number) and name not in KEEPS_INFINITY):
        return None
    return int(number) if pa.types.is_integer(kind) else number


def measured_samples(opts: CushionSpec, data: StackedData) -> torch.Tensor:
    """The samples S the cushions are measured on: the chosen set, all of it or its first
    ``max_samples``."""
    x = data.x_train if opts.samples is Samples.TRAIN else data.x_test
    return x[:, :opts.max_samples] if opts.max_samples else x


@dataclass
class Stability:
    """What ``measure_step`` needs of a family at one step, from an MLP's or a CNN's
    measures: per-sample ``layer_cushion`` and ``interlayer_cushion`` ``[F, L, n]``, the
    contraction ``[F, L-1]``, the smoothness ratios ``[F, L-1, n, draws]``, the
    attenuation ``[F, L-1, L]``, the weight norms ``[F, L]``, the family as the bound sees
    it and every layer's input phi(x^{i-1}) on the samples."""

    per_sample: dict[str, torch.Tensor]
    contraction: torch.Tensor
    ratios: torch.Tensor
    attenuation: torch.Tensor
    norms: dict[str, torch.Tensor]
    net: Layered
    inputs: list[torch.Tensor]
    spread: torch.Tensor | None = None  # CNNs: beta of Definition 9 (arXiv v4) per layer and sample [F, L, n]


def dense_stability(opts: CushionSpec, params: models.Params, x: torch.Tensor, nonlinear: bool,
                    step: int) -> Stability:
    """Section 4's measures of an MLP or deep linear family (``core.measures.cushion``)."""
    import torch

    from theoryscope.core.measures.bound import Layered
    from theoryscope.core.measures.cushion import (
        activation_contraction, interlayer_smoothness, layer_cushion, min_interlayer_cushion, noise_attenuation,
        preactivations, weight_norms,
    )
    from theoryscope.core.seeding import generator

    w, b = params.weights, params.biases
    xs = preactivations(w, b, x, nonlinear)
    return Stability(
        per_sample={"layer_cushion": layer_cushion(w, b, x, nonlinear),
                    "interlayer_cushion": min_interlayer_cushion(w, b, x, nonlinear)},
        contraction=activation_contraction(w, b, x, nonlinear),
        ratios=interlayer_smoothness(w, b, x, opts.noise_scale, opts.draws, generator(opts.seed, "smoothness", step),
                                     nonlinear),
        attenuation=noise_attenuation(w, b, x, generator(opts.seed, "attenuation", step), nonlinear,
                                      opts.attenuation_noise),
        norms=weight_norms(w), net=Layered.dense(params, nonlinear),
        inputs=[xs[0]] + [torch.relu(t) if nonlinear else t for t in xs[1:-1]])


def conv_stability(opts: CushionSpec, params: cnn.ConvParams, x: torch.Tensor, arch: cnn.ConvArch,
                   step: int) -> Stability:
    """Section 5's measures of a CNN family (``core.measures.conv_cushion``) on flat
    samples ``x``."""
    from theoryscope.core.measures import conv_cushion as conv
    from theoryscope.core.measures.bound import Layered
    from theoryscope.core.seeding import generator

    passed = conv.forward_pass(params, x.view(*x.shape[:-1], *arch.in_shape), arch.pool)
    sums = conv.jacobian_sums(params, passed)
    spread = conv.jacobian_spread(params, passed, sums)
    return Stability(
        per_sample={"layer_cushion": conv.layer_cushion(params, passed),
                    "interlayer_cushion": conv.interlayer_cushions(params, passed, sums)},
        contraction=conv.activation_contraction(passed),
        ratios=conv.interlayer_smoothness(params, passed, opts.noise_scale, opts.draws,
                                          generator(opts.seed, "smoothness", step)),
        attenuation=conv.noise_attenuation(params, passed, generator(opts.seed, "attenuation", step),
                                           opts.attenuation_noise),
        norms=conv.weight_norms(params, passed),
        net=Layered.conv(params, arch, spread.amax(dim=-1).amax(dim=-1), opts.compression_p),
        inputs=[*passed.phis[:-1], passed.phis[-1].flatten(start_dim=2)],  # the head reads flat features
        spread=spread)


def measure_step(opts: CushionSpec, got: Stability, data: StackedData, x: torch.Tensor, n_train: int
                 ) -> tuple[dict, dict, np.ndarray]:
    """One measured step of a family: ``(layers columns [F, L], bounds columns [F],
    attenuation [F, L-1, L])``; the last layer's hidden-layer columns are NaN."""
    import torch

    from theoryscope.core.measures.bound import bound_quantities, compressed_quantities, host
    from theoryscope.core.measures.cushion import layer_smoothness, net_smoothness, pooled_smoothness

    per_sample, contraction, ratios, attenuation = got.per_sample, got.contraction, got.ratios, got.attenuation
    bounds = bound_quantities(got.net, per_sample, contraction, net_smoothness(ratios, opts.delta), data, n_train,
                              opts.margin_percentile)
    hidden = {"activation_contraction": contraction, "interlayer_smoothness": layer_smoothness(ratios, opts.delta),
              "interlayer_smoothness_pooled": pooled_smoothness(ratios, opts.delta),
              "noise_attenuation": attenuation[..., -1]}
    layers = {name: np.pad(host(v), ((0, 0), (0, 1)), constant_values=math.nan) for name, v in hidden.items()}
    if got.spread is not None:
        spread = got.spread.amax(dim=-1)  # [F, L]
        layers["jacobian_spread"] = host(spread)
        bounds["jacobian_spread"] = host(spread.amax(dim=-1))
    for name, values in per_sample.items():
        layers[name] = host(values.amin(dim=-1))
        # Mean and percentiles over the samples that constrain the cushion (``inf``: a
        # zero layer input, which meets the definition for every mu).
        constraining = values.masked_fill(values.isinf(), math.nan)
        layers[f"{name}_mean"] = host(constraining.nanmean(dim=-1))
        for q in opts.percentiles:
            layers[percentile_column(name, q)] = host(torch.nanquantile(constraining, q / 100, dim=-1))
    norms = got.norms
    layers |= {"frobenius_norm": host(norms["frobenius"]), "spectral_norm": host(norms["spectral"]),
               "stable_rank": host(norms["stable_rank"])}
    plan = opts.compression(len(got.net.weights))
    if plan is not None:
        net, per_layer = compressed_quantities(got.net, data, x, got.inputs, plan, bounds["margin"])
        bounds |= net
        layers |= per_layer
    return layers, bounds, host(attenuation)


def cushion_tables(opts: CushionSpec, sweep: str, runs: Sequence[RunSpec],
                   result: FamilyResult) -> dict[str, pa.Table]:
    """``layers``, ``bounds`` and ``attenuation`` rows of Arora, Ge, Neyshabur & Zhang
    (2018) for every member at every measured step."""
    import torch

    from theoryscope.core import cnn, models, nets

    data = result.data
    first = runs[0]
    x = measured_samples(opts, data)
    schemas = {"layers": layers_schema(opts.percentiles), "bounds": BOUNDS, "attenuation": ATTENUATION}
    rows: dict[str, list[dict]] = {name: [] for name in schemas}
    for step in sorted(result.snapshots):
        params = result.snapshots[step]
        with torch.no_grad():
            if isinstance(params, cnn.ConvParams):
                got = conv_stability(opts, params, x, nets.conv_arch(first.model, first.data), step)
            else:
                got = dense_stability(opts, params, x, models.is_nonlinear(first.model.kind), step)
            layers, bounds, attenuation = measure_step(opts, got, data, x, first.data.n_train)
        # fan_in, fan_out and (conv layers) the kernel size of every layer.
        shapes = [(math.prod(w.shape[2:]), int(w.shape[1]), int(w.shape[-1]) if w.dim() == 5 else None)
                  for w in got.net.weights]
        for f, run in enumerate(runs):
            key = {"sweep": sweep, "run_id": run.run_id, "step": step}
            for layer, (fan_in, fan_out, kernel) in enumerate(shapes, start=1):
                row = key | {"layer": layer, "fan_in": fan_in, "fan_out": fan_out, "kernel_size": kernel}
                rows["layers"].append(row | {name: v[f, layer - 1] for name, v in layers.items()})
            rows["bounds"].append(key | {"samples": x.shape[1]} | {
                name: v[f] if isinstance(v, np.ndarray) else v for name, v in bounds.items()})
            rows["attenuation"] += [key | {"layer": i, "at_layer": j, "noise": opts.attenuation_noise,
                                           "attenuation": attenuation[f, i - 1, j - 1]}
                                    for i in range(1, len(shapes)) for j in range(i + 1, len(shapes) + 1)]
    return {name: table(rows[name], schema) for name, schema in schemas.items()}


def table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows of host values as a table of ``schema`` (``cell`` per value; missing: NULL)."""
    return pa.Table.from_pylist([{f.name: cell(row.get(f.name), f.type, f.name) for f in schema} for row in rows],
                                schema=schema)


def snapshot_steps(opts: CushionSpec, run: RunSpec) -> set[int]:
    """The steps asked for within the run, and the last one."""
    return {s for s in opts.steps if s <= run.train.steps} | {run.train.steps}


def layer_title(rows: Rows, layer: int) -> str:
    """"layer i", and for CNNs what layer i is: a conv, the head, or by depth either."""
    heads = {r["kernel_size"] is None for r in rows if r["layer"] == layer}
    if all(r["kernel_size"] is None for r in rows):  # an MLP sweep: every layer is dense
        return f"layer {layer}"
    return f"layer {layer} ({'head' if heads == {True} else 'conv' if heads == {False} else 'conv or head'})"


def draw_cushions(rows: Rows, swept: Sequence[str]):
    """Layer cushion of every run after training (the paper's minimum over samples) against
    label noise, one panel per layer and value of the swept fields not drawn as lines; a
    line per width (or depth, else the first other swept field) joins the means over seeds.
    A CNN's panels say whether the layer is a conv or the head."""
    rows = [r for r in rows if r["layer_cushion"] is not None]
    if not rows:
        return None
    layers = distinct(rows, "layer")
    shape = layout(rows, swept, shown=("label_noise",), lines=("width", "depth"), line_fields=2,
                   max_panels=max(1, 8 // len(layers)))
    rows = shape.keep(rows)
    panels = [(key, layer) for key in shape.panel_keys(rows) for layer in layers]
    fig, (axes,) = panel_grid(len(panels), size=(3.0, 2.6))
    styles = shape.styles(rows)
    for ax, (key, layer) in zip(axes, panels):
        mine = matching([r for r in rows if r["layer"] == layer], shape.panels, key)
        for line in shape.line_keys(mine):
            points = matching(mine, shape.lines, line)
            style = styles[line]
            ax.scatter([r["label_noise"] for r in points], [r["layer_cushion"] for r in points], s=10, alpha=0.4,
                       color=style["color"], lw=0)
            noises = levels(points, "label_noise")
            means = [np.mean([r["layer_cushion"] for r in points if r["label_noise"] == n]) for n in noises]
            ax.plot(noises, means, label=shape.line_label(line), **style)
        ax.set_xlabel("label noise")
        ax.set_ylabel("layer cushion μ_i")
        ax.set_title(", ".join(t for t in (layer_title(rows, layer), shape.panel_title(key)) if t), fontsize=9)
    shared_legend(fig)
    note(fig, "dots: runs; lines: their means over seeds", shape.held_note())
    return fig


def draw_effective_params(rows: Rows, swept: Sequence[str]):
    """Theorem 4.1's effective parameter count q of every run against its generalization
    gap, coloured (and marked) by the swept fields, one panel per value of the others."""
    rows = [r for r in rows if r["q"] is not None and r["gap"] is not None]
    if not rows:
        return None
    shape = layout(rows, swept, lines=("label_noise", "width", "depth"), line_fields=2)
    fig, rows, panels = facets(rows, shape, size=(3.8, 3.2))
    for panel in panels:
        ax, key = panel.ax, panel.key
        for line, points, style in panel.lines:
            ax.scatter([r["q"] for r in points], [r["gap"] for r in points], s=20, color=style["color"],
                       marker=style["marker"], label=shape.line_label(line))
        ax.set_xlabel("effective parameters q")
        ax.set_ylabel("generalization gap")
        ax.set_title(shape.panel_title(key), fontsize=9)
    shared_log_axes([panel.ax for panel in panels], "x")
    shared_legend(fig)
    note(fig, "one point per run", shape.held_note())
    return fig


def draw_attenuation(rows: Rows, swept: Sequence[str]):
    """The paper's Figure 1: relative error at every later layer of noise injected at layer i
    (mean over seeds after training), one line per injected layer, one panel per value of
    every swept field."""
    rows = [r for r in rows if r["attenuation"] is not None]
    if not rows:
        return None
    shape = layout(rows, swept)
    rows = shape.keep(rows)
    keys = shape.panel_keys(rows)
    fig, (axes,) = panel_grid(len(keys), size=(3.4, 3.0))
    colours = pyplot().get_cmap("tab10")
    for ax, key in zip(axes, keys):
        mine = matching(rows, shape.panels, key)
        for layer in distinct(mine, "layer"):
            points = sorted((r["at_layer"], r["attenuation"]) for r in mine if r["layer"] == layer)
            ax.plot([layer] + [p[0] for p in points], [mine[0]["noise"]] + [p[1] for p in points], marker="o",
                    color=colours((layer - 1) % 10), label=f"injected at layer {layer}")
        ax.set_xticks(range(1, max(r["at_layer"] for r in mine) + 1))
        ax.set_xlabel("layer j")
        ax.set_ylabel("relative error at layer j")
        ax.set_title(shape.panel_title(key), fontsize=9)
    shared_log_axes(axes)
    shared_legend(fig)
    note(fig, mean_note(rows), shape.held_note())
    return fig


MEASURE = Measure(
    name="cushions",
    options=CushionSpec,
    check=check_cushions,
    tables={"layers": LAYERS, "bounds": BOUNDS, "attenuation": ATTENUATION},
    snapshot_steps=snapshot_steps,
    rows=cushion_tables,
    models=frozenset({ModelKind.MLP, ModelKind.LINEAR, ModelKind.CNN}),
    figures=(
        Figure("cushions", "Layer cushions against label noise",
               "SELECT {fields}r.label_noise, l.layer, l.kernel_size, l.layer_cushion FROM layers l "
               "JOIN runs r USING (sweep, run_id) "
               "WHERE l.sweep = {sweep} AND l.step = r.steps", draw_cushions,
               "The layer cushion μ_i (Arora et al. 2018) of every run after training (dots) and its mean over "
               "seeds (lines), per layer and label noise, one line per width (or depth), one panel per layer and "
               "value of every other swept field."),
        Figure("attenuation", "Attenuation of injected noise",
               "SELECT {fields}a.layer, a.at_layer, any_value(a.noise) AS noise, count(*) AS runs, "
               "avg(a.attenuation) AS attenuation FROM attenuation a JOIN runs r USING (sweep, run_id) "
               "WHERE a.sweep = {sweep} AND a.step = r.steps GROUP BY ALL", draw_attenuation,
               "Noise of relative size `attenuation_noise` injected at layer i, its relative error at every later "
               "layer j (Arora et al. 2018, Figure 1), mean over seeds after training, one panel per value of "
               "every swept field."),
        Figure("effective-params", "Effective parameters against the generalization gap",
               "SELECT {fields}b.effective_params AS q, b.gen_gap AS gap FROM bounds b "
               "JOIN runs r USING (sweep, run_id) WHERE b.sweep = {sweep} AND b.step = r.steps", draw_effective_params,
               "Theorem 4.1's effective parameter count q of every run against its generalization gap, coloured "
               "by label noise (marked by a second swept field), one panel per value of the others."),
    ),
)

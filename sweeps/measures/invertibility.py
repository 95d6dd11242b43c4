"""``[measure] invertibility``: how invertible every conv layer of a CNN family is, in the
sense of Gilbert, Zhang, Lee, Zhang & Lee (IJCAI 2017), "Towards understanding the
invertibility of convolutional neural networks"; the math is ``core.measures.invertibility``.

Per member, conv block and measured step (the init, step 0 by default, and the end of
training), on the block's input for ``samples`` training images:

* sign pairs: the fraction of filters with a near-negated partner, max_j cos(w_i, -w_j)
  above ``threshold`` (the paper's reason why ReLU loses little: with w and -w both
  present, ReLU(Wx) keeps Wx);
* sparsity after ReLU and pooling: the nonzero fraction of the pooled map and k, the
  number of nonzero pooling blocks (the paper's model of max-pooling: one nonzero per
  block);
* the empirical model-RIP constants delta_k and delta_2k of the layer's transposed
  convolution on random model-k-sparse codes, every atom (filter at one position) of unit
  norm, with k the family's median number of nonzero blocks, beside the same estimate for
  Gaussian filters of the same shape (the paper's comparison);
* reconstruction of the layer's input from its pooled output and switches: by the plain
  transposed convolution (scale fitted) and by model-IHT, the relative error
  ||x_hat - x|| / ||x|| averaged over the samples, beside the paper's per-step IHT factor
  5 delta_2k / (1 - delta_k) sqrt((1 + delta_2k) / (1 - delta_2k)) and whether its
  premise (a factor below 1) holds.

The analysis is of the convolution's linear part, as the paper's: it needs
``model.bias = false``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from theoryscope.core.config import ModelKind, RunSpec, is_finite, require
from theoryscope.core.errors import SpecError
from theoryscope.sweeps.figures import Figure
from theoryscope.sweeps.measures.base import Grid, Measure
from theoryscope.sweeps.panels import Rows, distinct, layout, matching, note, panel_grid, shared_legend

# torch and core's trainers and measures load in the functions that train or measure, so that
# reading results, planning and the CLI's --help, query and status do without them.
if TYPE_CHECKING:
    from theoryscope.core.train import FamilyResult


@dataclass(frozen=True)
class InvertibilitySpec:
    """Gilbert et al. (2017)'s invertibility statistics of every conv layer."""

    # Steps at which to measure as well as after training (0: the init).
    steps: tuple[int, ...] = (0,)
    # Training images the layer inputs come from (0: every one).
    samples: int = 64
    # A filter has a sign pair when max_j cos(w_i, -w_j) exceeds this.
    threshold: float = 0.9
    # Random model-sparse codes per RIP estimate.
    draws: int = 256
    # Iterations of model-IHT at most.
    iht_steps: int = 200
    # Seed of the random codes and the Gaussian filters (shared by every member).
    seed: int = 0

    def __post_init__(self) -> None:
        require(all(s >= 0 for s in self.steps), "steps", "a list of integers >= 0", list(self.steps))
        require(self.samples >= 0, "samples", "an integer >= 0 (0 = every training image)", self.samples)
        require(is_finite(self.threshold) and -1 <= self.threshold <= 1, "threshold", "a number in [-1, 1]",
                self.threshold)
        require(self.draws >= 2, "draws", "an integer >= 2", self.draws)
        require(self.iht_steps >= 1, "iht_steps", "an integer >= 1", self.iht_steps)
        require(self.seed >= 0, "seed", "an integer >= 0", self.seed)


def check_invertibility(opts: InvertibilitySpec, grid: Grid, base: RunSpec) -> None:
    """The paper's layers have no biases: neither may the measured ones."""
    swept = dict(grid).get("model.bias", (base.model.bias,))
    if any(swept):
        raise SpecError("measure.invertibility: measures convolutions without biases (the paper's model); "
                        "set model.bias = false")


INVERTIBILITY = pa.schema([
    ("sweep", pa.string()),
    ("run_id", pa.string()),
    ("step", pa.int64()),
    ("layer", pa.int64()),                    # conv block, 1 = the first
    ("filters", pa.int64()),                  # C_out
    ("samples", pa.int64()),
    ("sign_pair_fraction", pa.float64()),     # filters with max_j cos(w_i, -w_j) > threshold
    ("sign_pair_cosine", pa.float64()),       # that max, averaged over the filters
    ("relu_density", pa.float64()),           # nonzero fraction of ReLU(W x), mean over samples
    ("pooled_density", pa.float64()),         # nonzero fraction after pooling
    ("blocks", pa.float64()),                 # nonzero pooling blocks per sample, mean over samples
    ("k", pa.int64()),                        # the sparsity the RIP constants are estimated at
    ("delta_k", pa.float64()),                # empirical model-RIP constant of Wᵀ, unit atoms
    ("delta_2k", pa.float64()),
    ("delta_k_gaussian", pa.float64()),       # the same for Gaussian filters of the same shape
    ("delta_2k_gaussian", pa.float64()),
    ("transposed_error", pa.float64()),       # ||s Wᵀ unpool(pooled) - x|| / ||x||, s fitted, mean over samples
    ("iht_error", pa.float64()),              # ||Wᵀ z_IHT - x|| / ||x||, mean over samples
    ("iht_iterations", pa.int64()),
    ("iht_factor", pa.float64()),             # 5 d2k / (1 - dk) sqrt((1 + d2k) / (1 - d2k)); inf if a delta >= 1
    ("iht_premise", pa.bool_()),              # deltas in [0, 1) and the factor below 1
])


def snapshot_steps(opts: InvertibilitySpec, run: RunSpec) -> set[int]:
    """The steps asked for within the run, and the last one."""
    return {s for s in opts.steps if s <= run.train.steps} | {run.train.steps}


def invertibility_table(opts: InvertibilitySpec, sweep: str, runs: Sequence[RunSpec],
                        result: FamilyResult) -> dict[str, pa.Table]:
    """One row per member, conv block and measured step."""
    import torch

    from theoryscope.core import cnn, nets

    first = runs[0]
    x = result.data.x_train
    x = x[:, :opts.samples] if opts.samples else x
    images = nets.images(first.data, x).to(torch.float64)
    rows = []
    final = first.train.steps
    for step in sorted(snapshot_steps(opts, first)):
        params = result.params if step == final else result.snapshots[step]
        params = nets.like(params, [t.detach().to(device=images.device, dtype=torch.float64)
                                    for t in params.tensors()])
        with torch.no_grad():
            traced = cnn.trace(params, images, first.model.pool)
            inputs = [images] + [block.pooled for block in traced.blocks[:-1]]
            for layer, (w, h) in enumerate(zip(params.convs, inputs), start=1):
                columns = _host_columns(layer_numbers(opts, w, h.contiguous(), first.model.pool), len(runs))
                for f, run in enumerate(runs):
                    rows.append({"sweep": sweep, "run_id": run.run_id, "step": step, "layer": layer,
                                 "filters": int(w.shape[1]), "samples": int(h.shape[1]),
                                 **{name: values[f] for name, values in columns.items()}})
    return {"invertibility": pa.Table.from_pylist(rows, schema=INVERTIBILITY)}


def layer_numbers(opts: InvertibilitySpec, w, x, pool: int) -> dict:
    """Every statistic of one conv layer ``w [F, C_out, C_in, k, k]`` on its input
    ``x [F, n, C_in, H, W]``, per member (``[F]``) or for the family (numbers)."""
    import torch

    from theoryscope.core.measures import invertibility as gilbert

    size = tuple(x.shape[-2:])
    pairs = gilbert.sign_pairs(w, opts.threshold)
    layer = gilbert.relu_pool(w, x, pool)
    blocks_total = w.shape[1] * (size[0] // pool) * (size[1] // pool)
    k = max(1, int(statistics.median(layer.blocks.flatten().tolist())))
    k2 = min(2 * k, blocks_total)
    generator = torch.Generator().manual_seed(opts.seed)
    rip = {name: gilbert.model_rip(w, size, sparsity, pool, opts.draws, generator).delta
           for name, sparsity in (("delta_k", k), ("delta_2k", k2))}
    random = {f"{name}_gaussian": gilbert.gaussian_model_rip(w, size, sparsity, pool, opts.draws, generator).delta
              for name, sparsity in (("delta_k", k), ("delta_2k", k2))}
    rebuilt = gilbert.reconstruct(w, x, pool, steps=opts.iht_steps)
    factor, premise = gilbert.iht_bound(rip["delta_k"].cpu(), rip["delta_2k"].cpu())
    return {
        "sign_pair_fraction": pairs.fraction, "sign_pair_cosine": pairs.cosine.mean(dim=1),
        "relu_density": layer.relu_density.mean(dim=1), "pooled_density": layer.density.mean(dim=1),
        "blocks": layer.blocks.to(torch.float64).mean(dim=1), "k": k, **rip, **random,
        "transposed_error": torch.nanmean(rebuilt.transposed, dim=1), "iht_error": torch.nanmean(rebuilt.iht, dim=1),
        "iht_iterations": rebuilt.iterations, "iht_factor": factor, "iht_premise": premise,
    }


def _host_columns(numbers: dict, members: int) -> dict[str, list]:
    """Every statistic as one plain value per member, read from the device once per
    statistic (a per-member tensor, or the family's number repeated); NaN as NULL,
    infinities kept (an IHT factor with a delta >= 1)."""
    columns = {}
    for name, value in numbers.items():
        values = value.tolist() if hasattr(value, "tolist") else [value] * members
        columns[name] = [None if isinstance(v, float) and np.isnan(v) else v for v in values]
    return columns


def draw_invertibility(rows: Rows, swept: Sequence[str]):
    """Per conv layer: the reconstruction error (IHT solid, transposed convolution dashed),
    the sign-pair fraction and delta_k (Gaussian filters dotted), at the init and after
    training; a line per depth (else the first swept field), a panel column per value
    of every other swept field."""
    if not rows:
        return None
    shape = layout(rows, swept, shown=("layer",), lines=("depth",), max_panels=4)
    rows = shape.keep(rows)
    keys = shape.panel_keys(rows)
    metrics = (("reconstruction error ‖x̂ − x‖/‖x‖", "iht_error", "transposed_error"),
               ("sign-pair fraction", "sign_pair_fraction", None),
               ("model-RIP δ_k", "delta_k", "delta_k_gaussian"))
    fig, axes = panel_grid(len(keys), metrics=len(metrics), size=(3.4, 2.5))
    styles = shape.styles(rows)
    for row_axes, (ylabel, solid, other) in zip(axes, metrics):
        for ax, key in zip(row_axes, keys):
            mine = matching(rows, shape.panels, key)
            for line in shape.line_keys(mine):
                for trained in (False, True):
                    points = sorted((r for r in matching(mine, shape.lines, line) if r["trained"] == trained),
                                    key=lambda r: r["layer"])
                    if not points:
                        continue
                    colour = styles[line]["color"]
                    when = "trained" if trained else "init"
                    name = ", ".join(t for t in (shape.line_label(line), when) if t)
                    layers = [r["layer"] for r in points]
                    ax.plot(layers, [r[solid] for r in points], color=colour, marker="o", ms=3,
                            ls="-" if trained else ":", alpha=1.0 if trained else 0.6, label=name)
                    if other is not None and trained:
                        ax.plot(layers, [r[other] for r in points], color=colour, ls="--", lw=1, marker="x", ms=4)
            ax.set_xticks(distinct(rows, "layer"))
            ax.set_xlabel("conv layer")
            ax.set_ylabel(ylabel, fontsize=8)
            if shape.panel_title(key):
                ax.set_title(shape.panel_title(key), fontsize=9)
    shared_legend(fig)
    note(fig, "solid: trained, dotted: at init; dashed: transposed convolution (row 1), Gaussian filters (row 3); "
              "means over seeds", shape.held_note())
    return fig


MEASURE = Measure(
    name="invertibility",
    options=InvertibilitySpec,
    check=check_invertibility,
    tables={"invertibility": INVERTIBILITY},
    snapshot_steps=snapshot_steps,
    rows=invertibility_table,
    models=frozenset({ModelKind.CNN}),
    figures=(
        Figure("invertibility", "Invertibility of the conv layers (Gilbert et al. 2017)",
               "SELECT {fields}i.layer, i.step = r.steps AS trained, count(*) AS runs, "
               "avg(i.iht_error) AS iht_error, avg(i.transposed_error) AS transposed_error, "
               "avg(i.sign_pair_fraction) AS sign_pair_fraction, avg(i.delta_k) AS delta_k, "
               "avg(i.delta_k_gaussian) AS delta_k_gaussian FROM invertibility i JOIN runs r USING (sweep, run_id) "
               "WHERE i.sweep = {sweep} AND (i.step = 0 OR i.step = r.steps) GROUP BY ALL", draw_invertibility,
               "Per conv layer, at the init and after training, means over seeds: the relative error of the "
               "layer's input rebuilt from its pooled output by model-IHT (solid; dashed: the transposed "
               "convolution), the fraction of filters with a near-negated partner, and the empirical model-RIP "
               "constant δ_k of the transposed convolution (dashed: Gaussian filters of the same shape)."),
    ),
)

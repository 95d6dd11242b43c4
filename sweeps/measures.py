"""Measures of trained families, by their name in ``[measure]``.

Each measure turns a trained family (its weights at the measured steps and its data) into
table rows, computed stacked over the family: the measures are pure functions in
``core.measures``; the trainer only keeps weight snapshots at the steps they ask for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import torch

from core import models
from core.measures.compression import compress, margin_loss, margins
from core.measures.cushion import (
    activation_contraction, layer_cushion, min_interlayer_cushion, noise_attenuation,
    interlayer_smoothness, smoothness_quantile, weight_norms,
)
from core.seeding import generator
from core.train import FamilyResult, member_losses
from storage import schemas
from sweeps.records import nullable
from sweeps.spec import CushionSpec, MeasureSpec, RunSpec, Samples
from sweeps.valleys import valley_tables

MeasureFn = Callable[[object, str, Sequence[RunSpec], FamilyResult], dict[str, pa.Table]]


def snapshot_steps(measure: MeasureSpec, run: RunSpec) -> list[int]:
    """Steps whose weights the enabled measures need (the last step included)."""
    steps: set[int] = set()
    if measure.cushions is not None:
        steps |= {s for s in measure.cushions.steps if s <= run.train.steps} | {run.train.steps}
    return sorted(steps)


def measure_family(measure: MeasureSpec, sweep: str, runs: Sequence[RunSpec],
                   result: FamilyResult) -> dict[str, pa.Table]:
    """Every enabled measure's tables for one trained family."""
    tables: dict[str, pa.Table] = {}
    for name, fn in MEASURES.items():
        options = getattr(measure, name)
        if options is not None:
            tables.update(fn(options, sweep, runs, result))
    return tables


def _host(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


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
            bound = _bound(opts, params, per_sample, contraction, data, nonlinear, n_train, x)
        columns = {}
        for name, values in per_sample.items():
            columns[name] = _host(values.amin(dim=-1))
            columns[f"{name}_mean"] = _host(values.mean(dim=-1))
            for q in opts.percentiles:
                columns[schemas.percentile_column(name, q)] = _host(torch.quantile(values, q / 100, dim=-1))
        hidden = {"activation_contraction": _host(contraction), "interlayer_smoothness": _host(rho),
                  "noise_attenuation": _host(attenuation)}
        norm_columns = {"frobenius_norm": _host(norms["frobenius"]), "spectral_norm": _host(norms["spectral"]),
                        "stable_rank": _host(norms["stable_rank"])}
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
        "layers": pa.Table.from_pylist(layer_rows, schema=schemas.layers_schema(opts.percentiles)),
        "bounds": pa.Table.from_pylist(bound_rows, schema=schemas.BOUNDS),
    }


def _bound(opts: CushionSpec, params: models.Params, per_sample: dict[str, torch.Tensor],
           contraction: torch.Tensor, data, nonlinear: bool, n_train: int, x: torch.Tensor) -> dict:
    """The quantities of Theorem 4.1 and of the Matrix-Project-compressed net, ``[F]`` each."""
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
        "activation_contraction": _host(c), "max_output_norm": _host(max_norm),
        "params": sum(int(w.shape[-1] * w.shape[-2]) for w in params.weights),
        "margin": nothing, "margin_loss": nothing, "effective_params": nothing, "bound": nothing,
        "train_error": nothing, "test_error": nothing, "gen_gap": _host(test_loss - train_loss),
        "compression_k": opts.compression_k or None, "compressed_params": opts.compression_k * depth or None,
        "compression_error": nothing, "compressed_train_error": nothing, "compressed_test_error": nothing,
        "compressed_test_loss": nothing, "compressed_margin_loss": nothing,
    }
    gamma = None
    if data.classification:
        margin = margins(out_train, data.y_train)
        gamma = torch.quantile(margin, opts.margin_percentile / 100, dim=-1)
        gamma = torch.where(gamma > 0, gamma, math.nan)  # no positive margin: no bound
        q = c**2 * depth**2 * max_norm**2 * (1 / (mu**2 * mu_to**2)).sum(dim=-1) / gamma**2
        loss_at_gamma = torch.where(torch.isnan(gamma), math.nan, margin_loss(margin, gamma))
        row |= {"margin": _host(gamma), "margin_loss": _host(loss_at_gamma), "effective_params": _host(q),
                "bound": _host(loss_at_gamma + torch.sqrt(q / n_train)), "train_error": _host(train_error),
                "test_error": _host(test_error), "gen_gap": _host(test_error - train_error)}
    if opts.compression_k:
        small = models.Params(compress(params.weights, opts.compression_k, opts.seed), params.biases)
        reference = models.forward(params, x, nonlinear)
        moved = (models.forward(small, x, nonlinear) - reference).norm(dim=-1) / reference.norm(dim=-1)
        c_train = models.forward(small, data.x_train, nonlinear)
        c_test_loss, c_test_error = member_losses(models.forward(small, data.x_test, nonlinear), data.y_test,
                                                  data.classification)
        row |= {"compression_error": _host(moved.median(dim=-1).values), "compressed_test_loss": _host(c_test_loss)}
        if data.classification:
            _, c_train_error = member_losses(c_train, data.y_train, True)
            row |= {"compressed_train_error": _host(c_train_error), "compressed_test_error": _host(c_test_error),
                    "compressed_margin_loss": _host(torch.where(
                        torch.isnan(gamma), math.nan, margin_loss(margins(c_train, data.y_train), gamma)))}
    return row


MEASURES: dict[str, MeasureFn] = {"cushions": cushion_tables, "valleys": valley_tables}

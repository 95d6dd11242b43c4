"""The trained nets of a sweep, kept for the researcher: safetensors files and the
``weights`` table.

Each family writes one file, ``<results>/weights/sweep=<name>/<family_id>.safetensors``,
holding for every kept step its tensors stacked over the family's members:
``step<S>.weight<i>`` (``[F, out, in]``) and ``step<S>.bias<i>`` (``[F, out]``), layer 1
first, in the dtype the family trained in. The ``weights`` table has one row per run
and kept step: the file, the run's ``member`` index in those stacks, the names, shapes
(of one member) and dtype of its tensors. ``load`` returns a run's net as DESIGN's
plain tensors; ``init`` rebuilds the net it started from, from its seed.

What is kept is the spec's ``[store] weights``: the final weights of every run and
those at the steps its measures snapshot (``true``), the final ones only (``"final"``),
nothing (``false``), or under ``"auto"`` (the default) as much of that as fits in
``store.limit_gib``, decided from the whole sweep so a resumed sweep decides the same.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from theoryscope.core.config import Experiment, ModelKind, RunSpec
from theoryscope.core.datasets.table import input_width
from theoryscope.core.errors import StorageError
from theoryscope.storage.location import (
    ResultsLike, existing_root, list_partitions, read_parquet, remove, results_root, root_text,
)
from theoryscope.storage.parquet import partition_dir, scan
from theoryscope.sweeps import measures
from theoryscope.sweeps.plan import member_cost
from theoryscope.sweeps.spec import KeepWeights, StoreSpec

# torch and core's trainers and measures load in the functions that train or measure, so that
# reading results, planning and the CLI's --help, query and status do without them.
if TYPE_CHECKING:
    import torch

    from theoryscope.core import nets
    from theoryscope.core.train import FamilyResult

WEIGHTS = pa.schema([
    ("sweep", pa.string()),
    ("run_id", pa.string()),
    ("step", pa.int64()),                      # train.steps for the final weights
    ("file", pa.string()),                     # relative to the results root
    ("member", pa.int64()),                    # the run's index along the stacked first dimension
    ("tensors", pa.list_(pa.string())),        # weights layer 1..L, then biases
    ("shapes", pa.list_(pa.list_(pa.int64()))),  # of one member's tensors
    ("dtype", pa.string()),                    # safetensors' name: F32, F64
    ("bytes", pa.int64()),                     # the run's tensors at this step
])


class Kept(enum.Enum):
    """What a sweep keeps, once ``[store] weights`` is decided."""

    ALL = "final and snapshots"
    FINAL = "final"
    NONE = "none"


@dataclass(frozen=True)
class WeightsPlan:
    """What a sweep keeps and about how much space it takes (bytes of tensors)."""

    kept: Kept
    bytes: int
    all_bytes: int
    final_bytes: int
    reason: str


def kept_steps(kept: Kept, measure: measures.MeasureSpec, run: RunSpec) -> list[int]:
    """The steps of ``run`` whose weights are kept: the final one (``train.steps``) and,
    with everything kept, those its measures snapshot."""
    if kept is Kept.NONE:
        return []
    snapshots = measures.snapshot_steps(measure, run) if kept is Kept.ALL else []
    return sorted({*snapshots, run.train.steps})


def net_bytes(run: RunSpec) -> int:
    """Bytes of one net of ``run``, its weights and biases in the dtype it trains in."""
    return member_cost(run).params * run.train.dtype.itemsize


def plan_weights(store: StoreSpec, measure: measures.MeasureSpec, runs: Sequence[RunSpec]) -> WeightsPlan:
    """Decide ``[store] weights`` for a sweep of ``runs`` (all of them, done or not)."""
    groups: dict[int, list] = {}  # runs that differ only in their seed have one size
    for run in runs:
        shared = run.shared()
        group = groups.get(id(shared))
        if group is None:  # the group holds ``shared``, so its id is not reused meanwhile
            group = groups[id(shared)] = [shared, net_bytes(run), len(kept_steps(Kept.ALL, measure, run)), 0]
        group[3] += 1
    final = sum(size * count for _, size, _, count in groups.values())
    every = sum(size * steps * count for _, size, steps, count in groups.values())
    limit = store.limit_gib * 1024**3
    if store.weights is True:
        return WeightsPlan(Kept.ALL, every, every, final, "[store] weights = true")
    if store.weights is KeepWeights.FINAL:
        return WeightsPlan(Kept.FINAL, final, every, final, '[store] weights = "final"')
    if store.weights is False:
        return WeightsPlan(Kept.NONE, 0, every, final, "[store] weights = false")
    if every <= limit:
        return WeightsPlan(Kept.ALL, every, every, final, f"within store.limit_gib = {store.limit_gib:g}")
    if final <= limit:
        return WeightsPlan(Kept.FINAL, final, every, final, f"all steps would take more than store.limit_gib = "
                           f"{store.limit_gib:g}; set [store] weights = true to keep them")
    return WeightsPlan(Kept.NONE, 0, every, final, f"more than store.limit_gib = {store.limit_gib:g}; set [store] "
                       'weights = "final" or true to keep them')


def weights_file(results: ResultsLike, sweep: str, family_id: str):
    return partition_dir(results, "weights", sweep) / f"{family_id}.safetensors"


def write_family_weights(results: ResultsLike, sweep: str, family_id: str, runs: Sequence[RunSpec],
                         result: FamilyResult, steps: Sequence[int]) -> pa.Table:
    """Write a trained family's kept steps to its safetensors file (atomically) and
    return its ``weights`` rows; nothing is written without steps."""
    import torch

    from theoryscope.storage.tensors import NAMES, write_tensors

    if not steps:
        return WEIGHTS.empty_table()
    final = runs[0].train.steps
    tensors: dict[str, torch.Tensor] = {}
    for step in steps:
        params = result.params if step == final else result.snapshots[step]
        for name, tensor in _named(step, params):
            tensors[name] = tensor.detach().cpu()
    path = weights_file(results, sweep, family_id)
    write_tensors(path, tensors, {"format": "theoryscope-weights", "sweep": sweep, "family_id": family_id,
                                  "run_ids": json.dumps([r.run_id for r in runs])})
    relative = f"weights/sweep={sweep}/{family_id}.safetensors"
    rows = []
    for step in steps:
        named = [(name, t) for name, t in tensors.items() if name.startswith(f"step{step}.")]
        for member, run in enumerate(runs):
            rows.append({"sweep": sweep, "run_id": run.run_id, "step": step, "file": relative, "member": member,
                         "tensors": [n for n, _ in named], "shapes": [list(t.shape[1:]) for _, t in named],
                         "dtype": NAMES[named[0][1].dtype],
                         "bytes": sum(t[0].numel() * t.element_size() for _, t in named)})
    return pa.Table.from_pylist(rows, schema=WEIGHTS)


def drop_unfinished_weights(results: ResultsLike, sweep: str, done: set[str]) -> None:
    """Remove the safetensors files of families that are not done (``done``: the family
    ids that are): their runs train again, perhaps in another family."""
    for path in list_partitions(results_root(results) / "weights", f"sweep={sweep}"):
        if path.name.endswith(".safetensors") and path.name.removesuffix(".safetensors") not in done:
            remove(path)


def _named(step: int, params: nets.Params) -> list[tuple[str, torch.Tensor]]:
    """A family's tensors under their names in the file: ``step{s}.weight{i}`` and
    ``step{s}.bias{i}`` of an MLP's layer i; a CNN's ``step{s}.conv{i}.weight`` (and
    ``.bias``) of block i and ``step{s}.head.weight`` (and ``.bias``)."""
    from theoryscope.core import cnn

    if isinstance(params, cnn.ConvParams):
        named = [(f"step{step}.conv{i}.weight", w) for i, w in enumerate(params.convs, start=1)]
        named.append((f"step{step}.head.weight", params.head))
        if params.conv_biases is not None:
            named += [(f"step{step}.conv{i}.bias", b) for i, b in enumerate(params.conv_biases, start=1)]
            named.append((f"step{step}.head.bias", params.head_bias))
        return named
    named = [(f"step{step}.weight{i}", w) for i, w in enumerate(params.weights, start=1)]
    return named + [(f"step{step}.bias{i}", b) for i, b in enumerate(params.biases or [], start=1)]


def index(results: ResultsLike, sweep: str, run_id: str | None = None) -> pa.Table:
    """The ``weights`` rows of a sweep (of one run), from its complete files."""
    files = scan(existing_root(results), "weights", sweep).complete
    tables = [read_parquet(path) for path in files]
    table = pa.concat_tables(tables).select(WEIGHTS.names) if tables else WEIGHTS.empty_table()
    return table if run_id is None else table.filter(pc.equal(table["run_id"], run_id))


def load(results: ResultsLike, sweep: str, run_id: str, step: int | None = None) -> nets.Params:
    """Run ``run_id``'s net at ``step`` (None: its final weights) as plain CPU tensors,
    layer 1 first, in the dtype it trained in; biases None for a net without them. A
    CNN's is a ``core.cnn.ConvParams`` of one net (kernels ``[C_out, C_in, k, k]``)."""
    from theoryscope.core import cnn, models
    from theoryscope.storage.tensors import read_header, read_member

    rows = index(results, sweep, run_id).to_pylist()
    if not rows:
        raise StorageError(f"no weights of run {run_id!r} in sweep {sweep!r} under {root_text(results)}: the sweep "
                           "kept none ([store] weights), the run is not done, or it is another sweep's")
    kept = sorted(r["step"] for r in rows)
    step = kept[-1] if step is None else step
    row = next((r for r in rows if r["step"] == step), None)
    if row is None:
        raise StorageError(f"run {run_id!r} of sweep {sweep!r} kept no weights at step {step}; kept steps: "
                           f"{', '.join(map(str, kept))}")
    path = existing_root(results) / row["file"]
    entries, _ = read_header(path)
    tensors = {name.split(".", 1)[1]: read_member(path, entries[name], row["member"]) for name in row["tensors"]}
    if "head.weight" in tensors:
        depth = sum(name.endswith(".weight") for name in tensors) - 1
        biased = "head.bias" in tensors
        return cnn.ConvParams([tensors[f"conv{i}.weight"] for i in range(1, depth + 1)], tensors["head.weight"],
                              [tensors[f"conv{i}.bias"] for i in range(1, depth + 1)] if biased else None,
                              tensors.get("head.bias"))
    weights = [t for name, t in tensors.items() if name.startswith("weight")]
    biases = [t for name, t in tensors.items() if name.startswith("bias")]
    return models.Params(weights, biases or None)


def init(run: RunSpec) -> nets.Params:
    """The net ``run`` started from, rebuilt from its seed (float64, CPU; training casts
    it to ``train.dtype``): ``models.init_member`` for experiment "train" (a CNN's
    ``cnn.init_member``), the factors of the common end-to-end start
    (``core.linear_start``) for the deep linear ones."""
    from theoryscope.core import cnn, models, nets
    from theoryscope.core.linear_start import initial_factors

    if run.model.kind is ModelKind.CNN:
        return cnn.init_member(nets.conv_arch(run.model, run.data), run.seed, run.model.init_scale, run.model.init)
    if run.experiment is Experiment.TRAIN:
        dims = run.model.layer_dims(input_width(run.data), run.data.n_outputs)
        return models.init_member(run.model, dims, run.seed)
    return models.Params(initial_factors(run), None)


def family_init(runs: Sequence[RunSpec], dtype: torch.dtype, device: torch.device) -> nets.Params:
    """``init`` of every member of a family, stacked ``[F, ...]``: drawn for the whole
    family at once for experiment "train" (``nets.init_family``)."""
    import torch

    from theoryscope.core import models, nets
    from theoryscope.core.linear_start import initial_factors

    first = runs[0]
    if first.experiment is Experiment.TRAIN:
        return nets.init_family(runs, dtype, device)
    factors = [initial_factors(run) for run in runs]
    return models.Params([torch.stack(layer).to(device=device, dtype=dtype) for layer in zip(*factors)], None)


def run_spec(results: ResultsLike, sweep: str, run_id: str) -> RunSpec:
    """The spec of one run of a recorded sweep, from the spec the sweep was launched with."""
    from theoryscope.sweeps.catalog import recorded_sweep
    from theoryscope.sweeps.plan import expand_runs

    found = next((r for r in expand_runs(recorded_sweep(results, sweep).spec()) if r.run_id == run_id), None)
    if found is None:
        raise StorageError(f"sweep {sweep!r} has no run {run_id!r}")
    return found

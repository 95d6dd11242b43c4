"""The trained nets kept as safetensors files ([store] weights, theoryscope.weights)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from helpers import SMALL_SPEC, invoke
from theoryscope import weights
from theoryscope.core import models
from theoryscope.core.errors import StorageError
from theoryscope.core.train import DTYPES, member_losses, stack_data
from theoryscope.storage.location import results_root
from theoryscope.storage.parquet import published_tables
from theoryscope.storage.tensors import read_header, read_member, write_tensors
from theoryscope.sweeps.dispatch import LocalBackend
from theoryscope.sweeps.launch import launch, prepare
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.plan import plan_sweep
from theoryscope.sweeps.tables import run_query
from theoryscope.sweeps.weights import Kept, plan_weights

CLASSIFIER = """
name = "nets"

[data]
kind = "gaussian-mixture"
n_train = 48
n_test = 40
input_dim = 6
n_classes = 3

[model]
kind = "mlp"
width = 12

[train]
optimizer = "sgd"
lr = 0.1
batch_size = 16
steps = 24
log_every = 8
dtype = "DTYPE"

[grid]
depth = [1, 3]
seed = [0, 1]

[measure]
cushions = { steps = [0, 8], compression_k = 0, draws = 2 }
"""


def trained(tmp_path, text: str):
    spec = parse_spec(text)
    results = tmp_path / "results"
    summary = launch(prepare(spec, results), results, LocalBackend())
    assert summary.total("n_ok") == summary.planned
    return spec, results


def evaluated(params: models.Params, run, dtype: torch.dtype) -> dict[str, float]:
    """The run's losses and errors recomputed from a loaded net, as training evaluates a
    family (here of one member)."""
    data = stack_data([run], dtype, torch.device("cpu"))
    family = models.Params([w.unsqueeze(0) for w in params.weights],
                           None if params.biases is None else [b.unsqueeze(0) for b in params.biases])
    nonlinear = models.is_nonlinear(run.model.kind)
    out = {}
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        loss, error = member_losses(models.forward(family, x, nonlinear), y, data.classification)
        out[f"{split}_loss"] = loss.item()
        out[f"{split}_error"] = None if error is None else error.item()
    return out


@pytest.mark.parametrize("dtype, rel", [("float64", 1e-12), ("float32", 2e-6)])
def test_a_loaded_net_reproduces_its_runs_final_losses(tmp_path, dtype, rel):
    spec, results = trained(tmp_path, CLASSIFIER.replace("DTYPE", dtype))
    runs = run_query(results, "SELECT run_id, train_loss, test_loss, train_error, test_error FROM runs").to_pylist()
    assert len(runs) == 4
    by_id = {r.run_id: r for r in prepare(spec, results).runs}
    for row in runs:
        params = weights.load(results, "nets", row["run_id"])
        assert params.weights[0].dtype == DTYPES[by_id[row["run_id"]].train.dtype]
        again = evaluated(params, by_id[row["run_id"]], params.weights[0].dtype)
        for name in ("train_loss", "test_loss"):
            assert again[name] == pytest.approx(row[name], rel=rel, abs=0), name
        assert again["train_error"] == row["train_error"] and again["test_error"] == row["test_error"]


def test_regression_nets_round_trip_too_and_the_index_has_one_row_per_run(tmp_path):
    spec, results = trained(tmp_path, SMALL_SPEC.replace('steps = 30', 'steps = 30\ndtype = "float64"'))
    rows = weights.index(results, "small").to_pylist()
    runs = {r.run_id: r for r in prepare(spec, results).runs}
    assert sorted(r["run_id"] for r in rows) == sorted(runs) and {r["step"] for r in rows} == {30}
    for row in run_query(results, "SELECT run_id, depth, train_loss FROM runs").to_pylist():
        params = weights.load(results, "small", row["run_id"])
        assert len(params.weights) == row["depth"] and (params.biases is not None) == runs[row["run_id"]].model.bias
        assert evaluated(params, runs[row["run_id"]], torch.float64)["train_loss"] == pytest.approx(
            row["train_loss"], rel=1e-12)


def test_snapshots_are_kept_and_step_0_is_the_init_rebuilt_from_the_seed(tmp_path):
    _, results = trained(tmp_path, CLASSIFIER.replace("DTYPE", "float32"))
    run_id = run_query(results, "SELECT run_id FROM runs WHERE depth = 3 AND seed = 1").column("run_id")[0].as_py()
    assert sorted(r["step"] for r in weights.index(results, "nets", run_id).to_pylist()) == [0, 8, 24]
    start, init = weights.load(results, "nets", run_id, step=0), weights.init(results, "nets", run_id)
    assert init.weights[0].dtype == torch.float64
    for kept, rebuilt in zip(start.tensors(), init.tensors()):
        assert torch.equal(kept, rebuilt.to(torch.float32))  # the same float64 draw, cast as training casts it
    middle, final = weights.load(results, "nets", run_id, step=8), weights.load(results, "nets", run_id)
    x = torch.randn(5, 6, dtype=torch.float32)
    by_hand = x
    for layer, w in enumerate(final.weights):
        by_hand = by_hand @ w.T
        by_hand = by_hand.relu() if layer < len(final.weights) - 1 else by_hand
    assert torch.allclose(weights.outputs(final, x), by_hand, rtol=1e-5, atol=1e-6)
    assert not torch.equal(middle.weights[0], final.weights[0])
    with pytest.raises(StorageError, match="kept no weights at step 9; kept steps: 0, 8, 24"):
        weights.load(results, "nets", run_id, step=9)
    with pytest.raises(StorageError, match="no weights of run 'nope'"):
        weights.load(results, "nets", "nope")


def test_the_files_are_plain_safetensors_stacked_over_the_family(tmp_path):
    _, results = trained(tmp_path, CLASSIFIER.replace("DTYPE", "float32"))
    rows = weights.index(results, "nets").to_pylist()
    for row in rows:
        stacked = load_file(results / row["file"])  # the official reader
        loaded = weights.load(results, "nets", row["run_id"], step=row["step"])
        assert [list(t.shape) for t in loaded.tensors()] == row["shapes"]
        for name, tensor in zip(row["tensors"], loaded.tensors()):
            assert torch.equal(stacked[name][row["member"]], tensor)
        assert row["bytes"] == sum(t.numel() * 4 for t in loaded.tensors()) and row["dtype"] == "F32"


@pytest.mark.parametrize("setting, kept", [("true", [0, 8, 24]), ('"final"', [24]), ("false", [])])
def test_store_weights_says_what_is_kept(tmp_path, setting, kept):
    _, results = trained(tmp_path, CLASSIFIER.replace("DTYPE", "float32") + f"\n[store]\nweights = {setting}\n")
    assert sorted({r["step"] for r in weights.index(results, "nets").to_pylist()}) == kept
    assert (results / "weights").exists() == bool(kept)


def test_auto_keeps_what_fits_under_the_limit():
    spec = parse_spec(CLASSIFIER.replace("DTYPE", "float32"))
    runs = plan_sweep(spec).runs
    every = plan_weights(spec.store, spec.measure, runs)
    assert every.kept is Kept.ALL and every.bytes == every.all_bytes == 3 * every.final_bytes
    # no biases (model.bias = false): depth 1 has 6*3 weights, depth 3 6*12 + 12*12 + 12*3; two seeds, float32
    assert every.final_bytes == 2 * 4 * (6 * 3 + 6 * 12 + 12 * 12 + 12 * 3)
    limit = lambda gib: parse_spec(CLASSIFIER.replace("DTYPE", "float32") + f"\n[store]\nlimit_gib = {gib}\n")  # noqa: E731
    assert plan_weights(limit(1.5 * every.final_bytes / 1024**3).store, spec.measure, runs).kept is Kept.FINAL
    nothing = plan_weights(limit(0).store, spec.measure, runs)
    assert nothing.kept is Kept.NONE and "store.limit_gib" in nothing.reason


def test_plan_prints_the_space_the_weights_take(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(CLASSIFIER.replace("DTYPE", "float64"))
    result = invoke("plan", str(path))
    assert result.exit_code == 0  # float64: 8 bytes x 270 weights x 2 seeds x 3 steps = 12,960 bytes
    assert "weights: final and snapshots kept, ≈ 12.7 KiB" in " ".join(result.output.split())
    path.write_text(CLASSIFIER.replace("DTYPE", "float64") + '\n[store]\nweights = "all"\n')
    result = invoke("plan", str(path))
    assert result.exit_code != 0
    assert 'store.weights: expected true or false or one of "auto" | "final", got \'all\'' in result.output


def test_one_member_is_read_from_its_own_bytes_in_an_object_store(s3_server):
    root = results_root(s3_server("tensors"))
    path = root / "weights" / "sweep=x" / "family.safetensors"
    stacked = torch.arange(5 * 3 * 2, dtype=torch.float64).reshape(5, 3, 2)
    size = write_tensors(path, {"step1.weight1": stacked, "step1.bias1": stacked[:, :, 0]}, {"sweep": "x"})
    entries, metadata = read_header(path)
    assert metadata == {"sweep": "x"} and entries["step1.weight1"].shape == (5, 3, 2) and size > 5 * 3 * 2 * 8
    for member in range(5):
        assert torch.equal(read_member(path, entries["step1.weight1"], member), stacked[member])
        assert torch.equal(read_member(path, entries["step1.bias1"], member), stacked[member, :, 0])
    with pytest.raises(IndexError):
        read_member(path, entries["step1.weight1"], 5)


def test_a_family_that_is_done_has_its_weights_rows(tmp_path):
    """The weights index is one of the tables a family publishes before its runs file."""
    _, results = trained(tmp_path, CLASSIFIER.replace("DTYPE", "float32"))
    marks = list((results / "runs" / "sweep=nets").glob("*.parquet"))
    assert marks
    for path in marks:
        assert "weights" in published_tables(pq.read_table(path))

"""The ways to train the workload's nets that theoryscope is measured against, each
written as its user would write it: one ``nn.Sequential`` per net, ``torch.optim.SGD``,
``loss.backward()``, the training loss of each logged step and a test evaluation.

* ``sequential``: a plain PyTorch loop over the nets, in this process;
* ``ray_tasks``: one Ray task per net (1 CPU each), rows gathered by the driver;
* ``ray_tune``: Ray Tune, one trial per net, a function trainable calling
  ``tune.report`` at every logged step.

Each net starts from theoryscope's own initial weights for its run and trains on the
run's own data, so final losses agree with theoryscope's to float32 rounding. Every
variant ends by writing its curves to one Parquet file, as a user would.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn as nn

from theoryscope.core.config import RunSpec
from theoryscope.core.data import make_dataset
from theoryscope.core.datasets.table import input_width
from theoryscope.core.models import init_member

Report = Callable[[dict], None]


def build_net(run: RunSpec) -> nn.Sequential:
    dims = run.model.layer_dims(input_width(run.data), run.data.n_outputs)
    start = init_member(run.model, dims, run.seed)
    layers: list[nn.Module] = []
    for i, w in enumerate(start.weights):
        linear = nn.Linear(w.shape[1], w.shape[0], bias=start.biases is not None)
        with torch.no_grad():
            linear.weight.copy_(w)
            if start.biases is not None:
                linear.bias.copy_(start.biases[i])
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def train_one(run: RunSpec, report: Report | None = None) -> list[dict]:
    """Train one net by full-batch GD; its curve rows (step, train and test loss)."""
    data = make_dataset(run.data)
    x, y = data.x_train.float(), data.y_train.float()
    x_test, y_test = data.x_test.float(), data.y_test.float()
    net = build_net(run)
    optimizer = torch.optim.SGD(net.parameters(), lr=run.train.lr)
    loss_fn = nn.MSELoss()
    t = run.train
    rows = []
    for step in range(t.steps + 1):
        loss = loss_fn(net(x), y)
        if step % t.log_every == 0 or step == t.steps:
            with torch.no_grad():
                test_loss = loss_fn(net(x_test), y_test).item()
            row = {"run_id": run.run_id, "step": step, "train_loss": loss.item(), "test_loss": test_loss}
            rows.append(row)
            if report is not None:
                report(row)
        if step < t.steps:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return rows


def write_rows(rows: Sequence[dict], folder: str) -> None:
    pq.write_table(pa.Table.from_pylist(list(rows)), f"{folder}/curves.parquet")


def sequential(runs: Sequence[RunSpec], folder: str) -> dict[str, float]:
    rows = [row for run in runs for row in train_one(run)]
    write_rows(rows, folder)
    return final_losses(rows)


def ray_tasks(runs: Sequence[RunSpec], folder: str) -> dict[str, float]:
    import ray

    task = ray.remote(num_cpus=1)(train_one)
    rows = [row for per_run in ray.get([task.remote(run) for run in runs]) for row in per_run]
    write_rows(rows, folder)
    return final_losses(rows)


def ray_tune(runs: Sequence[RunSpec], folder: str) -> dict[str, float]:
    from ray import tune

    def trainable(config: dict, runs: Sequence[RunSpec]) -> None:
        train_one(runs[config["index"]], report=lambda row: tune.report(row))

    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, runs=list(runs)), {"cpu": 1}),
        param_space={"index": tune.grid_search(list(range(len(runs))))},
        run_config=tune.RunConfig(name="bench", storage_path=folder, verbose=0),
    )
    grid = tuner.fit()
    rows = [row for result in grid for row in result.metrics_dataframe[
        ["run_id", "step", "train_loss", "test_loss"]].to_dict("records")]
    write_rows(rows, folder)
    return final_losses(rows)


def final_losses(rows: Sequence[dict]) -> dict[str, float]:
    """Each run's training loss at its last logged step."""
    last: dict[str, tuple[int, float]] = {}
    for row in rows:
        if row["run_id"] not in last or row["step"] > last[row["run_id"]][0]:
            last[row["run_id"]] = (row["step"], row["train_loss"])
    return {run_id: loss for run_id, (_, loss) in last.items()}


VARIANTS: dict[str, Callable[[Sequence[RunSpec], str], dict[str, float]]] = {
    "sequential": sequential, "ray_tasks": ray_tasks, "ray_tune": ray_tune,
}


def timed(variant: str, runs: Sequence[RunSpec]) -> tuple[float, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{variant}-") as folder:
        start = time.perf_counter()
        losses = VARIANTS[variant](runs, folder)
        return time.perf_counter() - start, losses

"""10^4 and 10^5 small MLPs in one family: this engine against the previous one.

    python -m bench.scale [--members 10000 100000] [--width 16] [--steps 200] [--batch-size 64]
                          [--engines current previous] [--device cpu|cuda]

Each family (depth 3, input dimension 16, 256 training and 256 test samples, SGD, one
member per seed over one data draw) trains in a fresh process, so each figure has its own
peak memory (the process's maximum resident set, or the GPU's peak allocation). Prints
wall time (set-up and training), nets per minute and peak memory per engine and size,
and the previous engine's figures over the current one's, measured in the same run.

The previous engine is this one with the three per-member pieces #14 replaced put back:
the inputs copied for every member, every member's init drawn by its own
``torch.Generator`` in a Python loop, and every member's batch order drawn by its own
``torch.randperm`` each epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import torch

from theoryscope.core import models
from theoryscope.core import train as trainer
from theoryscope.core.config import DataSpec, Experiment, Init, ModelSpec, Optimizer, RunSpec, TrainSpec
from theoryscope.core.seeding import generator

ENGINES = ("current", "previous")


def family_runs(members: int, width: int, steps: int, batch_size: int) -> list[RunSpec]:
    base = RunSpec(Experiment.TRAIN, DataSpec(n_train=256, n_test=256, input_dim=16),
                   ModelSpec(depth=3, width=width, bias=True),
                   TrainSpec(optimizer=Optimizer.SGD, lr=0.05, steps=steps, batch_size=batch_size,
                             log_every=max(1, steps // 4)))
    return [dataclasses.replace(base, seed=s) for s in range(members)]


# ---------------------------------------------------------------------------------------
# The previous engine's per-member pieces
# ---------------------------------------------------------------------------------------

class RandpermOrder(trainer.BatchOrder):
    """Batch orders as before: one generator per member, one ``randperm`` per member and epoch."""

    def __init__(self, seeds: Sequence[int], n: int, batch_size: int, device: torch.device):
        super().__init__(seeds, n, batch_size, device)
        self.streams = [generator(s, "batches") for s in seeds]

    def _draw(self, epoch: int) -> torch.Tensor:
        return torch.stack([torch.randperm(self.n, generator=g) for g in self.streams]).to(self.device)


def init_one_by_one(specs: Sequence[ModelSpec], seeds: Sequence[int], dims: Sequence[int],
                    dtype: torch.dtype, device: torch.device) -> models.Params:
    """Inits as before: each member from its own generator, then stacked."""
    weights, biases = [], []
    for spec, seed in zip(specs, seeds):
        g, ws, bs = generator(seed, "init"), [], []
        for fan_in, fan_out in zip(dims[:-1], dims[1:]):
            bound = spec.init_scale / math.sqrt(fan_in)
            if spec.init is Init.GAUSSIAN:
                ws.append(torch.randn(fan_out, fan_in, generator=g, dtype=torch.float64) * bound)
                bs.append(torch.zeros(fan_out, dtype=torch.float64))
            else:
                ws.append((torch.rand(fan_out, fan_in, generator=g, dtype=torch.float64) * 2 - 1) * bound)
                bs.append((torch.rand(fan_out, generator=g, dtype=torch.float64) * 2 - 1) * bound)
        weights.append(ws)
        biases.append(bs)

    def stack(per_member: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        return [torch.stack(layer).to(device=device, dtype=dtype) for layer in zip(*per_member)]

    return models.Params(stack(weights), stack(biases) if specs[0].bias else None)


current_stack_data = trainer.stack_data  # kept before ``use_previous_engine`` replaces it


def copied_data(runs: Sequence[RunSpec], dtype: torch.dtype, device: torch.device) -> trainer.StackedData:
    """The data as before: the inputs copied for every member."""
    data = current_stack_data(runs, dtype, device)
    return dataclasses.replace(data, x_train=data.x_train.contiguous(), x_test=data.x_test.contiguous())


def use_previous_engine(put: Callable[[object, str, object], None] = setattr) -> None:
    """Put the previous engine's pieces in the trainer (``put``: how, e.g. a test's
    ``monkeypatch.setattr``)."""
    put(trainer, "BatchOrder", RandpermOrder)
    put(trainer, "stack_data", copied_data)
    put(models, "init_family", init_one_by_one)


# ---------------------------------------------------------------------------------------
# One measurement (in its own process) and the comparison
# ---------------------------------------------------------------------------------------

def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_one(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if args.engine == "previous":
        use_previous_engine()
    trainer.train_family(family_runs(2, args.width, 2, args.batch_size), device)  # warm-up
    runs = family_runs(args.members, args.width, args.steps, args.batch_size)
    start = time.perf_counter()
    result = trainer.train_family(runs, device)
    wall = time.perf_counter() - start
    return {"engine": args.engine, "members": args.members, "wall_s": wall, "train_s": result.wall_seconds,
            "setup_s": wall - result.wall_seconds, "peak_bytes": peak_bytes(device),
            "final_train_loss": float(result.train_loss[-1].mean())}


def measure(engine: str, members: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "bench.scale", "--one", "--engine", engine, "--members", str(members),
               "--width", str(args.width), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--device", args.device]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=ENGINES, default="current", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.members = args.members[0]
        print(json.dumps(measure_one(args)))
        return
    print(f"device {args.device}: depth-3 MLPs of width {args.width}, d 16, n 256, {args.steps} steps, "
          f"batch {args.batch_size}")
    for members in args.members:
        rows = {engine: measure(engine, members, args) for engine in args.engines}
        for engine, r in rows.items():
            print(f"  {members:>7,} nets  {engine:<8}  {r['wall_s']:8.1f} s (set-up {r['setup_s']:6.1f} s)  "
                  f"{members / r['wall_s'] * 60:10,.0f} nets/min  peak {r['peak_bytes'] / 2**30:6.2f} GiB  "
                  f"mean final loss {r['final_train_loss']:.4f}")
        if set(rows) == set(ENGINES):
            cur, prev = rows["current"], rows["previous"]
            print(f"  {members:>7,} nets  previous / current: wall {prev['wall_s'] / cur['wall_s']:.2f}x, "
                  f"set-up {prev['setup_s'] / max(cur['setup_s'], 1e-9):.2f}x, "
                  f"peak memory {prev['peak_bytes'] / cur['peak_bytes']:.2f}x")


if __name__ == "__main__":
    main()

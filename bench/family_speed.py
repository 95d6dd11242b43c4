"""Stacked family vs the same nets trained one at a time, on one device.

    python -m bench.family_speed [--device cpu|cuda] [--members 256] [--depth 3]
                                 [--width 64] [--n 1024] [--dim 32] [--steps 200] [--alone 8]

Both sides use theoryscope's own trainer, so the ratio is what stacking buys: the
one-at-a-time baseline trains ``--alone`` members separately and is extrapolated to the
whole family. Also prints the matmul FLOP rate the family reached.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from theoryscope.core.config import DataSpec, Experiment, ModelSpec, RunSpec, TrainSpec
from theoryscope.core.train import train_family
from theoryscope.sweeps.plan import Family, estimate_cost


def family_runs(args: argparse.Namespace) -> list[RunSpec]:
    base = RunSpec(Experiment.TRAIN,
                   DataSpec(n_train=args.n, n_test=args.n, input_dim=args.dim),
                   ModelSpec(depth=args.depth, width=args.width),
                   TrainSpec(lr=0.05, steps=args.steps, log_every=10))
    return [dataclasses.replace(base, seed=s) for s in range(args.members)]


def timed(runs: list[RunSpec], device: torch.device) -> float:
    start = time.perf_counter()
    train_family(runs, device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    for name, default in (("members", 256), ("depth", 3), ("width", 64), ("n", 1024), ("dim", 32),
                          ("steps", 200), ("alone", 8)):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    device = torch.device(args.device)
    runs = family_runs(args)
    timed(runs[:2], device)  # warm-up: allocator, kernels, threads
    stacked = timed(runs, device)
    alone = sum(timed([run], device) for run in runs[:args.alone]) / args.alone * len(runs)
    flops = estimate_cost(Family("bench", tuple(runs))).flops
    print(f"device {device} ({torch.get_num_threads()} threads): {len(runs)} nets, depth {args.depth}, "
          f"width {args.width}, n {args.n}, {args.steps} steps")
    print(f"  stacked family : {stacked:8.2f} s  {len(runs) / stacked * 60:10.0f} nets/min  "
          f"{flops / stacked / 1e9:8.1f} GFLOP/s")
    print(f"  one at a time  : {alone:8.2f} s  {len(runs) / alone * 60:10.0f} nets/min  "
          f"(extrapolated from {args.alone})")
    print(f"  speed-up       : {alone / stacked:8.1f}x")


if __name__ == "__main__":
    main()

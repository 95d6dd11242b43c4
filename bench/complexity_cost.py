"""What ``[measure] complexity`` costs against the training it measures, on one device.

    python -m bench.complexity_cost [--device cpu|cuda] [--members 256] [--depth 3] [--width 256]
                                    [--n-train 500] [--batch-size 128] [--steps 4000] [--draws 8 32] [--groups]

One family of MLPs trained as ``examples/generalization-measures.toml`` trains its nets
(the shipped digits, SGD with momentum 0.9, every net to a training cross-entropy of
0.01, Jiang et al. 2020), then every complexity measure of its final nets computed as a
launch computes them (``sweeps.measures.complexity.complexity_table``), once per number
of PAC-Bayes draws asked for. Prints the training time, the measures' time per group and
their ratio to training, measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from theoryscope.core.config import DataKind, DataSpec, Experiment, ModelSpec, Optimizer, RunSpec, TrainSpec
from theoryscope.core.train import FamilyResult, train_family
from theoryscope.sweeps.measures import complexity

GROUPS = {"norms": complexity.NORMS, "margins": complexity.MARGINS, "pacbayes": complexity.PACBAYES,
          "sharpness": ("sharpness",), "hessian_top": ("hessian_top",)}


def family_runs(args: argparse.Namespace) -> list[RunSpec]:
    """``--members`` nets of one shape: two learning rates, the rest seeds."""
    base = RunSpec(Experiment.TRAIN,
                   DataSpec(kind=DataKind.DIGITS, n_train=args.n_train, n_test=1000),
                   ModelSpec(depth=args.depth, width=args.width),
                   TrainSpec(optimizer=Optimizer.SGD, lr=0.05, momentum=0.9, batch_size=args.batch_size,
                             steps=args.steps, log_every=50, stop_train_loss=0.01))
    return [dataclasses.replace(base, seed=m // 2, train=dataclasses.replace(base.train, lr=(0.02, 0.05)[m % 2]))
            for m in range(args.members)]


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def measure(runs: list[RunSpec], result: FamilyResult, draws: int, groups: bool) -> tuple[float, dict[str, float]]:
    """All measures of the family; with ``groups``, also the init rebuilt from the seeds
    and each group of measures alone (seconds; every group includes the init again)."""
    spec = complexity.ComplexitySpec(perturbation=complexity.PerturbationSpec(draws=draws))
    total, _ = timed(lambda: complexity.complexity_table(spec, "bench", runs, result))
    if not groups:
        return total, {}
    final = result.snapshots[max(result.snapshots)]
    parts = {"init": timed(lambda: complexity.stacked_init(runs, final))[0]}
    for group, names in GROUPS.items():
        alone = dataclasses.replace(spec, measures=names)
        parts[group], _ = timed(lambda: complexity.complexity_table(alone, "bench", runs, result))
    return total, parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    for name, default in (("members", 256), ("depth", 3), ("width", 256), ("n-train", 500), ("batch-size", 128),
                          ("steps", 4000)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--draws", type=int, nargs="+", default=[8], help="PAC-Bayes draws, one row each")
    parser.add_argument("--groups", action="store_true", help="also time each group of measures alone")
    args = parser.parse_args()
    device = torch.device(args.device)
    runs = family_runs(args)
    warm = runs[:2]  # warm-up: allocator, kernels, threads, lazy imports
    measure(warm, train_family(warm, device, snapshot_steps=(args.steps,)), draws=1, groups=args.groups)
    result = train_family(runs, device, snapshot_steps=(args.steps,))
    stopped = np.where(result.stopped_step >= 0, result.stopped_step, args.steps)
    print(f"device {device} ({torch.get_num_threads()} threads): {len(runs)} nets, depth {args.depth}, "
          f"width {args.width}, digits n_train {args.n_train}, SGD batch {args.batch_size}, to cross-entropy 0.01")
    print(f"  training        : {result.wall_seconds:8.1f} s   (stopped at step {int(stopped.min())}-{int(stopped.max())},"
          f" median {int(np.median(stopped))}; {int((stopped < args.steps).sum())} of {len(runs)} reached the loss)")
    for draws in args.draws:
        total, parts = measure(runs, result, draws, args.groups)
        groups = ", ".join(f"{g} {t:.1f} s" for g, t in parts.items())
        print(f"  measures ({draws:2d} PAC-Bayes draws): {total:8.1f} s = {total / result.wall_seconds:6.1%} of training"
              + (f"   ({groups})" if groups else ""))


if __name__ == "__main__":
    main()

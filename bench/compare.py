"""theoryscope against Ray Tune, one Ray task per net and a plain PyTorch loop.

    python -m bench [--workloads compute tiny] [--variants theoryscope ray_tasks ray_tune sequential]
                    [--repeats 1] [--sample tiny:ray_tune=64 tiny:sequential=256 ...]

Every variant trains the same runs (``bench.workloads``) from the same initial weights
on the same data, and ends with its curves in Parquet; theoryscope runs its own
``launch`` path end to end (planning, packing for the machine, Ray tasks, Parquet,
the sweep record). Variants alternate within each repeat, so a noisy neighbour slows
all of them alike. All share one local Ray started at the beginning, its workers warmed
up (imports of torch and theoryscope) before anything is timed; that start-up is
reported on its own line.

``--sample WORKLOAD:VARIANT=K`` trains K runs spread evenly over the workload instead
of all of them and extrapolates the time to the whole workload (the rows say so); use it
for the slow baselines on the tiny workload, whose nets all cost the same.

Printed per workload: wall time (median over repeats), nets/min, the matmul FLOP rate
against this machine's float32 matmul peak measured in the same run, peak memory above
idle (the whole machine's, so Ray's workers count), each baseline's time as a multiple
of theoryscope's, how far each variant's final training losses are from theoryscope's,
and where theoryscope's time went (training, data and set-up, Parquet writing, Ray).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field

import torch

from bench.baselines import VARIANTS as BASELINES
from bench.baselines import timed as timed_baseline
from bench.workloads import Workload, workload
from theoryscope.sweeps.dispatch import RayBackend
from theoryscope.sweeps.execute import warm_worker
from theoryscope.sweeps.launch import LaunchSummary, run_sweep

ORDER = ("theoryscope", "ray_tasks", "ray_tune", "sequential")


@dataclass
class Row:
    variant: str
    workload: Workload
    sampled: int
    seconds: list[float] = field(default_factory=list)
    peak_bytes: list[int] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)
    summary: LaunchSummary | None = None

    @property
    def wall(self) -> float:
        """Median wall time, extrapolated to the whole workload when sampled."""
        return statistics.median(self.seconds) * len(self.workload.runs) / self.sampled


def used_memory() -> int:
    """The machine's memory in use (MemTotal - MemAvailable, Linux)."""
    with open("/proc/meminfo") as handle:
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in handle}
    return fields["MemTotal"] - fields["MemAvailable"]


class PeakMemory:
    """Peak of the machine's used memory above its level at the start, sampled."""

    def __init__(self, every: float = 0.05):
        self.every, self.peak, self._stop = every, 0, threading.Event()

    def __enter__(self) -> PeakMemory:
        self.base = used_memory()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, used_memory() - self.base)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def matmul_peak(threads: int, size: int = 2048, repeats: int = 20) -> float:
    """Best float32 matmul FLOP rate of ``threads`` threads (GFLOP/s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    torch.set_num_threads(before)
    return best


def run_theoryscope(work: Workload) -> tuple[float, dict[str, float], LaunchSummary]:
    from theoryscope.sweeps.tables import run_query

    with tempfile.TemporaryDirectory(prefix="bench-theoryscope-") as results:
        start = time.perf_counter()
        summary = run_sweep(work.spec, results, backend=RayBackend())
        seconds = time.perf_counter() - start
        rows = run_query(results, "SELECT run_id, train_loss FROM runs").to_pylist()
    return seconds, {r["run_id"]: r["train_loss"] for r in rows}, summary


def sample(work: Workload, k: int) -> list:
    runs = list(work.runs)
    if k >= len(runs):
        return runs
    return [runs[round(i * (len(runs) - 1) / (k - 1))] for i in range(k)] if k > 1 else runs[:1]


def worst_difference(ours: dict[str, float], theirs: dict[str, float]) -> float:
    """Largest relative difference of final training losses on the runs both trained."""
    common = [r for r in theirs if r in ours]
    return max((abs(ours[r] - theirs[r]) / max(abs(ours[r]), 1e-12) for r in common), default=float("nan"))


def measure(names: list[str], variants: list[str], repeats: int, samples: dict[tuple[str, str], int],
            resources: str = "") -> dict[str, list[Row]]:
    works = {name: workload(name, resources) for name in names}
    rows = {name: [Row(v, work, min(samples.get((name, v), len(work.runs)), len(work.runs))) for v in variants]
            for name, work in works.items()}
    for repeat in range(repeats):
        for name in names:
            for row in rows[name]:
                runs = sample(row.workload, row.sampled)
                with PeakMemory() as memory:
                    if row.variant == "theoryscope":
                        seconds, losses, row.summary = run_theoryscope(row.workload)
                    else:
                        seconds, losses = timed_baseline(row.variant, runs)
                row.seconds.append(seconds)
                row.peak_bytes.append(memory.peak)
                row.losses = losses
                print(f"  [{repeat + 1}/{repeats}] {name:8s} {row.variant:12s} {seconds:8.1f} s"
                      + (f" ({row.sampled} of {len(row.workload.runs)} runs)" if row.sampled < len(row.workload.runs)
                         else ""), flush=True)
    return rows


def report(rows: dict[str, list[Row]], peak: float, ray_start: float, cpus: int) -> None:
    print(f"\nmachine: {cpus} CPUs; float32 matmul peak {peak:.0f} GFLOP/s ({cpus} threads); "
          f"Ray start-up {ray_start:.1f} s (not counted below)")
    for name, table in rows.items():
        work = table[0].workload
        ours = next((r for r in table if r.variant == "theoryscope"), None)
        print(f"\n{name}: {len(work.runs)} nets, {work.flops / 1e12:.2f} TFLOP of matmuls")
        print(f"  {'variant':12s} {'wall s':>9s} {'nets/min':>9s} {'GFLOP/s':>8s} {'% peak':>7s} "
              f"{'peak mem':>9s} {'vs theoryscope':>15s} {'loss diff':>10s}")
        for row in table:
            ratio = f"{row.wall / ours.wall:.1f}x" if ours else "-"
            diff = "-" if ours is None or row is ours else f"{worst_difference(ours.losses, row.losses):.1e}"
            rate = work.flops / row.wall / 1e9
            note = f"  (extrapolated from {row.sampled})" if row.sampled < len(work.runs) else ""
            print(f"  {row.variant:12s} {row.wall:9.1f} {len(work.runs) / row.wall * 60:9.0f} {rate:8.1f} "
                  f"{rate / peak * 100:6.1f}% {max(row.peak_bytes) / 2**30:7.2f} G {ratio:>15s} {diff:>10s}{note}")
        if ours is not None and ours.summary is not None:
            where_the_time_went(ours.summary, cpus)


def where_the_time_went(summary: LaunchSummary, cpus: int) -> None:
    """theoryscope's last repeat: the share of the families' task time spent training,
    in set-up (data, init, tables), writing Parquet; and the wall time not covered by
    tasks (Ray scheduling, planning, the sweep record)."""
    outcomes = summary.outcomes
    task = sum(o.task_seconds for o in outcomes)
    train = sum(o.wall_seconds for o in outcomes)
    write = sum(o.write_seconds for o in outcomes)
    busy = task / min(cpus, len(outcomes))
    print(f"  theoryscope: {len(outcomes)} families; of their task time {task:.1f} s: training "
          f"{train / task:.1%}, set-up {(task - train - write) / task:.1%}, Parquet {write / task:.1%}; "
          f"wall {summary.wall_seconds:.1f} s vs {busy:.1f} s of tasks per CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["compute", "tiny"], choices=["compute", "tiny"])
    parser.add_argument("--variants", nargs="+", default=list(ORDER), choices=ORDER)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--num-gpus", type=float, default=0.0,
                        help="GPUs per theoryscope family (fractions share a GPU); the baselines stay on CPUs")
    parser.add_argument("--sample", nargs="*", default=[], metavar="WORKLOAD:VARIANT=K",
                        help="train K runs of a baseline on a workload and extrapolate")
    args = parser.parse_args()
    samples = {}
    for item in args.sample:
        name, _, rest = item.partition(":")
        variant, _, k = rest.partition("=")
        if name not in ("compute", "tiny") or variant not in BASELINES or not k.isdigit() or int(k) < 1:
            parser.error(f"--sample {item}: give WORKLOAD:BASELINE=K with a workload of compute, tiny, "
                         f"a baseline of {', '.join(sorted(BASELINES))} and K >= 1")
        samples[(name, variant)] = int(k)

    import ray

    cpus = os.cpu_count() or 1
    peak = matmul_peak(cpus)
    start = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    # Every variant starts with workers that have imported torch and theoryscope.
    ray.get([ray.remote(num_cpus=1)(warm_worker).remote() for _ in range(cpus)])
    ray_start = time.perf_counter() - start
    try:
        resources = f"num_gpus = {args.num_gpus}" if args.num_gpus > 0 else ""
        rows = measure(args.workloads, args.variants, args.repeats, samples, resources)
    finally:
        ray.shutdown()
    report(rows, peak, ray_start, cpus)


if __name__ == "__main__":
    main()

"""How long the reading commands take to start and answer, against Python alone.

    python -m bench.startup [--repeats 5]

Launches a tiny sweep into a scratch results directory once, then times each command in
a fresh process (the median of ``--repeats``): ``--version``, ``--help``, ``status``,
``tables``, a one-line ``query``, and ``plan`` of the quickstart spec (which loads torch
to see this machine's GPUs). Prints seconds per command and the ratio to two baselines
measured in the same run: an empty Python (``python -c pass``) and ``import torch``,
what every command used to pay before it started.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPEC = """
name = "startup"
[data]
kind = "teacher-student"
n_train = 32
n_test = 32
input_dim = 4
[model]
kind = "mlp"
width = 8
[train]
optimizer = "gd"
steps = 10
log_every = 5
[grid]
depth = [1, 2]
"""


def seconds(argv: list[str], repeats: int) -> float:
    """The median wall time of ``argv`` in a fresh process."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(argv, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    python = [sys.executable]
    cli = [sys.executable, "-m", "theoryscope.cli"]
    with tempfile.TemporaryDirectory() as scratch:
        spec, results = Path(scratch) / "spec.toml", str(Path(scratch) / "results")
        spec.write_text(SPEC)
        subprocess.run([*cli, "launch", str(spec), "--results", results, "--backend", "local", "--quiet"],
                       cwd=REPO, check=True)
        empty = seconds([*python, "-c", "pass"], args.repeats)
        torch = seconds([*python, "-c", "import torch"], args.repeats)
        commands = {
            "--version": ["--version"], "--help": ["--help"], "status": ["status", "--results", results],
            "tables": ["tables", "--results", results],
            "query": ["query", "SELECT depth, avg(test_loss) FROM runs GROUP BY depth", "--results", results],
            "plan (loads torch)": ["plan", str(REPO / "examples" / "quickstart.toml")],
        }
        print(f"baselines: python -c pass {empty:.2f} s, python -c 'import torch' {torch:.2f} s")
        print(f"{'command':<20} {'seconds':>8} {'/ python':>9} {'/ import torch':>15}")
        for name, argv in commands.items():
            took = seconds([*cli, *argv], args.repeats)
            print(f"{name:<20} {took:8.2f} {took / empty:9.1f} {took / torch:15.2f}")


if __name__ == "__main__":
    main()

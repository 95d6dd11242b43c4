"""What ``[measure] cushions`` costs on a CNN family, per measure, against autograd.

    python -m bench.conv_cushion_cost [--side 28] [--width 16] [--depth 2] [--members 4] [--samples 64]

A family of random CNNs (``core.cnn``: kernel 3, pool 2, 10 outputs) on random
``side`` x ``side`` one-channel images. Times every function ``conv_stability`` calls
(``core.measures.conv_cushion``) on ``samples`` samples, and, as the baseline measured in
the same run, the exact Jacobians J^{i,j} of the same family from
``torch.autograd.functional.jacobian`` (vectorised), one sample and member at a time, on
a few samples, scaled to ``samples``. Prints seconds and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as nnf

from theoryscope.core import cnn
from theoryscope.core.config import Init
from theoryscope.core.measures import conv_cushion


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def autograd_jacobians(params: cnn.ConvParams, passed: conv_cushion.ConvPass, f: int, s: int) -> None:
    """Every J^{i,j} of member f at sample s from autograd: the baseline."""
    pool, depth = passed.pool, len(params.convs)

    def segment(i, j):
        def run(v):
            for k in range(i + 1, j + 1):
                a = nnf.max_pool2d(torch.relu(v).unsqueeze(0), pool)[0]
                v = (nnf.conv2d(a.unsqueeze(0), params.convs[k - 1][f], padding=1)[0] if k <= depth
                     else params.head[f] @ a.flatten())
            return v
        return run

    for i in range(1, depth + 1):
        for j in range(i + 1, depth + 2):
            torch.autograd.functional.jacobian(segment(i, j), passed.xs[i][f, s], vectorize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=28)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--baseline-samples", type=int, default=2)
    args = parser.parse_args()
    arch = cnn.ConvArch((1, args.side, args.side), args.depth, args.width, 3, 2, 10)
    f = args.members
    params = cnn.init_family(arch, list(range(f)), [1.0] * f, [Init.DEFAULT] * f, torch.float32, torch.device("cpu"))
    images = torch.randn(f, args.samples, 1, args.side, args.side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        passed, forward = timed(lambda: conv_cushion.forward_pass(params, images, 2))
        sums, jacobians = timed(lambda: conv_cushion.jacobian_sums(params, passed))
        costs = {
            "forward pass": forward,
            "Jacobian sums (interlayer cushions, beta)": jacobians,
            "layer cushion": timed(lambda: conv_cushion.layer_cushion(params, passed))[1],
            "interlayer smoothness (32 draws)": timed(lambda: conv_cushion.interlayer_smoothness(
                params, passed, 0.1, 32, torch.Generator().manual_seed(1)))[1],
            "noise attenuation": timed(lambda: conv_cushion.noise_attenuation(
                params, passed, torch.Generator().manual_seed(2)))[1],
            "weight norms (FFT)": timed(lambda: conv_cushion.weight_norms(params, passed))[1],
        }
    _, baseline = timed(lambda: [autograd_jacobians(params, passed, m, s) for m in range(f)
                                 for s in range(args.baseline_samples)])
    baseline *= args.samples / args.baseline_samples
    print(f"{f} CNNs, depth {args.depth}, width {args.width}, {args.side}x{args.side} maps, {args.samples} samples")
    for name, seconds in costs.items():
        print(f"  {name:45s} {seconds:8.3f} s")
    print(f"  {'autograd Jacobians (baseline, scaled)':45s} {baseline:8.3f} s   "
          f"({baseline / jacobians:.0f}x the Jacobian sums)")


if __name__ == "__main__":
    main()

"""A family of small CNNs trained as one stacked model, against the same nets one at a time.

    python -m bench.cnn_speed [--members 16] [--width 16] [--depth 2] [--steps 200] [--device cpu|cuda]

The nets are ``model.kind = "cnn"`` students on the UCI digits (8x8 images, 1,000 training
samples), SGD with minibatches of 64, each member with its own seed. The family is
``core.train.train_family``; the baseline trains each member alone with ``torch.nn``
modules (Conv2d, ReLU, MaxPool2d, Linear) and ``torch.optim.SGD`` on the same batches'
sizes, from the same init. Prints both wall times, nets per second and their ratio,
measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from theoryscope.core.config import REAL_DATA
from theoryscope.core.data import make_dataset
from theoryscope.core.train import train_family
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.plan import plan_sweep
from theoryscope.sweeps.weights import init

SPEC = """
name = "cnn-speed"
[data]
kind = "digits"
n_train = 1000
n_test = 797
[model]
kind = "cnn"
depth = {depth}
width = {width}
[train]
optimizer = "sgd"
lr = 0.05
batch_size = 64
steps = {steps}
log_every = {steps}
[grid]
seed = {seeds}
"""


def one_net(run, device: torch.device) -> nn.Module:
    """The member as torch.nn modules, from its init."""
    start = init(run)
    layers: list[nn.Module] = []
    for w in start.convs:
        conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], padding=w.shape[2] // 2, bias=False)
        conv.weight.data.copy_(w)
        layers += [conv, nn.ReLU(), nn.MaxPool2d(run.model.pool)]
    head = nn.Linear(start.head.shape[1], start.head.shape[0], bias=False)
    head.weight.data.copy_(start.head)
    return nn.Sequential(*layers, nn.Flatten(), head).to(device)


def one_at_a_time(runs, device: torch.device) -> float:
    """Seconds to train every member alone, one after another (random minibatches)."""
    data = make_dataset(runs[0].data)
    x = data.x_train.float().view(-1, *REAL_DATA[runs[0].data.kind].image).to(device)
    y = data.y_train.to(device)
    started = time.perf_counter()
    for run in runs:
        net = one_net(run, device)
        optimizer = torch.optim.SGD(net.parameters(), lr=run.train.lr)
        generator = torch.Generator().manual_seed(run.seed)
        for _ in range(run.train.steps):
            batch = torch.randint(0, len(y), (run.train.batch_size,), generator=generator).to(device)
            loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    spec = parse_spec(SPEC.format(depth=args.depth, width=args.width, steps=args.steps,
                                  seeds=list(range(args.members))))
    runs = plan_sweep(spec).runs
    train_family(runs[:2], device)  # warm-up: kernels, allocator
    started = time.perf_counter()
    train_family(runs, device)
    family = time.perf_counter() - started
    alone = one_at_a_time(runs, device)
    print(f"{args.members} CNNs (digits, depth {args.depth}, width {args.width}, {args.steps} SGD steps, "
          f"batch 64) on {device}")
    print(f"family (one stacked model): {family:7.2f} s  {args.members / family:7.1f} nets/s")
    print(f"one net at a time (torch.nn): {alone:7.2f} s  {args.members / alone:7.1f} nets/s")
    print(f"one at a time / family: {alone / family:.2f}x")


if __name__ == "__main__":
    main()

"""Train a family of nets as one stacked model.

The loop runs over steps, never over members: every step is one batched forward, one
backward of the summed member losses (members are independent, so each gets exactly its
own gradient) and one stacked optimizer update. Curve points are written into tensors on
the device and copied to the host once, at the end. A member whose training loss stops
being finite is frozen where it stands and reported as diverged; the others carry on.

Losses: regression uses the mean squared error over samples and outputs (also the
objective); classification uses cross-entropy, with the 0-1 error rate reported beside it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as nnf

from core import models
from core.data import Dataset, make_dataset
from core.optim import Hyper, StackedOptimizer
from core.seeding import generator
from sweeps.spec import DType, RunSpec

DTYPES = {DType.FLOAT32: torch.float32, DType.FLOAT64: torch.float64}


@dataclass(frozen=True)
class FamilyResult:
    """What training a family produced, on the host.

    Curve arrays are ``[T, F]`` over ``steps``; the final metrics are the last curve point.
    Error arrays are None for regression. ``diverged_step[f]`` is the step at which member
    f was frozen, or -1.
    """

    steps: np.ndarray
    train_loss: np.ndarray
    test_loss: np.ndarray
    train_error: np.ndarray | None
    test_error: np.ndarray | None
    diverged_step: np.ndarray
    params: models.Params
    wall_seconds: float
    device: str


@dataclass(frozen=True)
class StackedData:
    x_train: torch.Tensor  # [F, n_train, d]
    y_train: torch.Tensor  # [F, n_train, outputs] or [F, n_train]
    x_test: torch.Tensor
    y_test: torch.Tensor
    classification: bool


def stack_data(runs: Sequence[RunSpec], dtype: torch.dtype, device: torch.device) -> StackedData:
    """Each member's data set, stacked; members with the same data spec share one draw."""
    cache: dict = {}
    sets: list[Dataset] = []
    for run in runs:
        if run.data not in cache:
            cache[run.data] = make_dataset(run.data)
        sets.append(cache[run.data])
    classification = sets[0].classification

    def stack(name: str, labels: bool) -> torch.Tensor:
        t = torch.stack([getattr(s, name) for s in sets])
        return t.to(device) if labels and classification else t.to(device=device, dtype=dtype)

    return StackedData(stack("x_train", False), stack("y_train", True),
                       stack("x_test", False), stack("y_test", True), classification)


def member_losses(out: torch.Tensor, y: torch.Tensor, classification: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-member mean loss ``[F]`` and, for classification, 0-1 error ``[F]``."""
    if classification:
        f, n, c = out.shape
        loss = nnf.cross_entropy(out.reshape(f * n, c), y.reshape(f * n), reduction="none").view(f, n).mean(1)
        error = (out.argmax(-1) != y).to(out.dtype).mean(1)
        return loss, error
    return ((out - y) ** 2).mean(dim=(1, 2)), None


def _hyper(runs: Sequence[RunSpec], dtype: torch.dtype, device: torch.device) -> Hyper:
    def column(name: str) -> torch.Tensor:
        return torch.tensor([getattr(r.train, name) for r in runs], dtype=dtype, device=device)

    return Hyper(*(column(n) for n in ("lr", "momentum", "weight_decay", "beta1", "beta2", "eps")))


class BatchOrder:
    """Each member's own shuffled minibatches, epoch after epoch, from its own seed.

    Per member, the order is a fresh random permutation each epoch (the last batch of an
    epoch may be short), exactly as it would be if the member trained alone.
    """

    def __init__(self, seeds: Sequence[int], n: int, batch_size: int, device: torch.device):
        self.streams = [generator(s, "batches") for s in seeds]
        self.n, self.batch_size, self.device = n, batch_size, device
        self.order: torch.Tensor | None = None
        self.pos = n

    def next(self) -> torch.Tensor:
        """Indices ``[F, b]`` of the next minibatch of every member."""
        if self.pos >= self.n:
            perms = [torch.randperm(self.n, generator=g) for g in self.streams]
            self.order = torch.stack(perms).to(self.device)
            self.pos = 0
        idx = self.order[:, self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx [F, b]`` of each member's ``t [F, n, ...]``."""
    expanded = idx.view(*idx.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
    return torch.gather(t, 1, expanded)


def train_family(runs: Sequence[RunSpec], device: torch.device) -> FamilyResult:
    """Train ``runs`` (one family: same shapes and loop) together on ``device``."""
    first = runs[0]
    t_spec, d_spec, m_spec = first.train, first.data, first.model
    dtype = DTYPES[t_spec.dtype]
    data = stack_data(runs, dtype, device)
    dims = m_spec.layer_dims(d_spec.input_dim, d_spec.n_outputs)
    params = models.init_family([r.model for r in runs], [r.seed for r in runs], dims, dtype, device)
    tensors = params.tensors()
    for p in tensors:
        p.requires_grad_(True)
    optimizer = StackedOptimizer(t_spec.optimizer, _hyper(runs, dtype, device), tensors)
    nonlinear = models.is_nonlinear(m_spec.kind)
    n_train, batch_size = d_spec.n_train, t_spec.batch_size
    full_batch = batch_size == 0 or batch_size >= n_train
    batches = None if full_batch else BatchOrder([r.seed for r in runs], n_train, batch_size, device)

    log_steps = t_spec.log_steps()
    f = len(runs)
    curves = torch.full((4, len(log_steps), f), float("nan"), dtype=dtype, device=device)
    active = torch.ones(f, dtype=torch.bool, device=device)
    diverged_step = torch.full((f,), -1, dtype=torch.long, device=device)
    log_row = {s: i for i, s in enumerate(log_steps)}

    def evaluate(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad():
            return member_losses(models.forward(params, x, nonlinear), y, data.classification)

    def record(row: int, which: int, loss: torch.Tensor, error: torch.Tensor | None) -> None:
        curves[which, row] = loss.detach()
        if error is not None:
            curves[which + 2, row] = error.detach()

    start = time.perf_counter()
    for step in range(t_spec.steps + 1):
        if full_batch:
            xb, yb = data.x_train, data.y_train
        else:
            idx = batches.next()
            xb, yb = _gather(data.x_train, idx), _gather(data.y_train, idx)
        training = step < t_spec.steps
        with torch.set_grad_enabled(training):
            loss, error = member_losses(models.forward(params, xb, nonlinear), yb, data.classification)
        # A member is frozen once its loss on this step's batch, or its full training
        # loss at a logged step, is no longer finite.
        bad = ~torch.isfinite(loss.detach())
        row = log_row.get(step)
        if row is not None:
            train_loss, train_error = (loss, error) if full_batch else evaluate(data.x_train, data.y_train)
            record(row, 0, train_loss, train_error)
            record(row, 1, *evaluate(data.x_test, data.y_test))
            bad |= ~torch.isfinite(train_loss.detach())
        diverged_step = torch.where(active & bad, step, diverged_step)
        active &= ~bad
        if not training:
            break
        total = torch.where(active, loss, 0.0).sum()
        grads = torch.autograd.grad(total, tensors)
        optimizer.step(tensors, grads, active)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    host = curves.double().cpu().numpy()
    errors = data.classification
    for p in tensors:
        p.requires_grad_(False)
    return FamilyResult(
        steps=np.asarray(log_steps, dtype=np.int64),
        train_loss=host[0], test_loss=host[1],
        train_error=host[2] if errors else None, test_error=host[3] if errors else None,
        diverged_step=diverged_step.cpu().numpy(),
        params=models.Params([w.detach().cpu() for w in params.weights],
                             None if params.biases is None else [b.detach().cpu() for b in params.biases]),
        wall_seconds=wall, device=describe_device(device),
    )


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def pick_device(num_gpus: float) -> torch.device:
    """CUDA when the family was given a GPU and one is visible, else the CPU."""
    if num_gpus > 0 and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")

"""Train a family of nets as one stacked model.

The loop runs over steps, never over members: every step is one batched forward, one
backward of the summed member losses (members are independent, so each gets exactly its
own gradient) and one stacked optimizer update. Curve points are written into tensors on
the device and copied to the host once, at the end. A member whose training loss stops
being finite is frozen where it stands and reported as diverged; the others carry on.

Losses: regression reports the mean squared error over samples and outputs and trains on
it, or on (1/2) x the summed squared error with ``train.objective = "half-sum"``;
classification uses cross-entropy, with the 0-1 error rate reported beside it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as nnf

from theoryscope.core import counters, nets
from theoryscope.core.checkpoint import Checkpoint
from theoryscope.core.config import DType, MatmulPrecision, Objective, RunSpec, shares_inputs
from theoryscope.core.data import Dataset, make_dataset
from theoryscope.core.optim import Hyper, StackedOptimizer
from theoryscope.core.precision import matmuls_at

DTYPES = {DType.FLOAT32: torch.float32, DType.FLOAT64: torch.float64}


@dataclass(frozen=True)
class FamilyResult:
    """What training a family produced: curves and final weights on the host, data and
    snapshots on the training device.

    Curve arrays are ``[T, F]`` over ``steps``; the final metrics are the last curve point.
    Error arrays are None for regression. ``diverged_step[f]`` is the step at which member
    f was frozen because its loss was no longer finite, ``stopped_step[f]`` the step at
    which it was frozen because its training loss reached ``train.stop_train_loss``;
    -1 if never.
    """

    steps: np.ndarray
    train_loss: np.ndarray
    test_loss: np.ndarray
    train_error: np.ndarray | None
    test_error: np.ndarray | None
    diverged_step: np.ndarray
    params: nets.Params
    wall_seconds: float
    device: str
    # The family's data on its device, and its weights at the requested snapshot steps
    # (for measures that look at the nets while they train).
    data: StackedData | None = None
    snapshots: dict[int, nets.Params] | None = None
    stopped_step: np.ndarray | None = None
    # Experiment "linear-dynamics": ||W_e - W_rule||_F / ||W_rule||_F at the logged steps.
    rule_deviation: np.ndarray | None = None
    # With train.matmul_precision other than "highest": per member, the largest relative
    # difference between the training loss as trained and in exact float32, over the
    # first and the last step.
    precision_error: np.ndarray | None = None


@dataclass(frozen=True)
class StackedData:
    x_train: torch.Tensor  # [F, n_train, d]
    y_train: torch.Tensor  # [F, n_train, outputs] or [F, n_train]
    x_test: torch.Tensor
    y_test: torch.Tensor
    classification: bool


def stack_data(runs: Sequence[RunSpec], dtype: torch.dtype, device: torch.device) -> StackedData:
    """Each member's data set, stacked; members with the same data spec share one draw.
    Inputs that are the same for every member (one ``input_draw``, whatever the labels:
    label noise changes only those) are one copy, expanded over the members (a stride-0
    view, which ``torch.bmm`` reads as fast as a stacked copy)."""
    cache: dict = {}
    sets: list[Dataset] = []
    for run in runs:
        if run.data not in cache:
            cache[run.data] = make_dataset(run.data)
        sets.append(cache[run.data])
    classification = sets[0].classification
    shared = shares_inputs(r.data for r in runs)

    def stack(name: str, labels: bool) -> torch.Tensor:
        tensors = [getattr(s, name) for s in sets]
        if labels:
            t = torch.stack(tensors)
            return t.to(device) if classification else t.to(device=device, dtype=dtype)
        if shared:
            first = tensors[0]
            return first.to(device=device, dtype=dtype).unsqueeze(0).expand(len(tensors), *first.shape)
        return torch.stack(tensors).to(device=device, dtype=dtype)

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


def member_hyper(runs: Sequence[RunSpec], dtype: torch.dtype, device: torch.device) -> Hyper:
    return Hyper.of([r.train for r in runs], dtype, device)


class BatchOrder:
    """Each member's own shuffled minibatches, epoch after epoch, from its own seed.

    Per member, the order is a fresh random permutation each epoch (the last batch of an
    epoch may be short), drawn from the member's key and the epoch's number
    (``core.counters``): one call per epoch for the whole family, and exactly the order
    the member would have alone. The state is two numbers (epochs drawn, position).
    """

    def __init__(self, seeds: Sequence[int], n: int, batch_size: int, device: torch.device):
        self.keys = counters.keys(seeds, "batches")
        self.n, self.batch_size, self.device = n, batch_size, device
        self.order: torch.Tensor | None = None
        self.epoch = 0  # epochs drawn so far
        self.pos = n

    def _draw(self, epoch: int) -> torch.Tensor:
        return counters.permutations(counters.subkeys(self.keys, epoch), self.n, self.device).to(self.device)

    def next(self) -> torch.Tensor:
        """Indices ``[F, b]`` of the next minibatch of every member."""
        if self.pos >= self.n:
            self.order = self._draw(self.epoch)
            self.epoch += 1
            self.pos = 0
        idx = self.order[:, self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def restore(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self.order = self._draw(self.epoch - 1) if self.epoch > 0 else None


# Evaluating a whole training or test set holds about this many bytes of activations at
# a time: a family of 10^5 small nets is evaluated a block of members after another.
EVAL_BYTES = 2**28


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx [F, b]`` of each member's ``t [F, n, ...]``."""
    expanded = idx.view(*idx.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
    return torch.gather(t, 1, expanded)


class FamilyTraining:
    """One family's training, step by step, with everything needed to stop and continue.

    The state is the stacked parameters, the optimizer's buffers and step count, each
    member's batch-order stream, the curves so far, which members are still active and
    when the others diverged or stopped (``train.stop_train_loss``: a member whose
    training loss reached it is frozen like a diverged one, its siblings carry on; once
    every member is frozen the family ends, ``fast_forward``). ``state_dict`` and
    ``load_state_dict`` round-trip all of it, so a family continued from a checkpoint
    computes exactly what it would have computed.
    """

    def __init__(self, runs: Sequence[RunSpec], device: torch.device, snapshot_steps: Sequence[int] = ()):
        first = runs[0]
        self.runs, self.device = list(runs), device
        self.spec_train, self.spec_data, self.model = first.train, first.data, first.model
        self.dtype = DTYPES[self.spec_train.dtype]
        self.data = stack_data(runs, self.dtype, device)
        self.params = nets.init_family(runs, self.dtype, device)
        self.tensors = self.params.tensors()
        self.optimizer = StackedOptimizer(self.spec_train.optimizer, member_hyper(runs, self.dtype, device), self.tensors)
        batch_size = self.spec_train.batch_size
        self.full_batch = batch_size == 0 or batch_size >= self.spec_data.n_train
        self.batches = None if self.full_batch else BatchOrder([r.seed for r in runs], self.spec_data.n_train,
                                                                batch_size, device)
        self.log_steps = self.spec_train.log_steps()
        f = len(runs)
        self.curves = torch.full((4, len(self.log_steps), f), float("nan"), dtype=self.dtype, device=device)
        self.active = torch.ones(f, dtype=torch.bool, device=device)
        self.diverged_step = torch.full((f,), -1, dtype=torch.long, device=device)
        self.stop = self.spec_train.stop_train_loss
        self.stopped_step = torch.full((f,), -1, dtype=torch.long, device=device)
        self.stop_checked = False  # whether the last step checked the stops
        self.step = 0  # the next step to run
        self.elapsed = 0.0  # training seconds, summed over every attempt
        self.snapshot_steps = {s for s in snapshot_steps if s <= self.spec_train.steps}
        self.snapshots: dict[int, list[torch.Tensor]] = {}
        self.precision = self.spec_train.matmul_precision
        self.precision_error = torch.zeros(f, dtype=self.dtype, device=device)

    def _forward(self, x: torch.Tensor, params: nets.Params | None = None) -> torch.Tensor:
        with matmuls_at(self.precision, self.device):
            return nets.forward(self.model, self.spec_data, params or self.params, x).to(self.dtype)

    def _evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-member loss and error on a whole set, in blocks of members whose
        activations stay within ``EVAL_BYTES`` (one block for all but huge families)."""
        f, n = x.shape[:2]
        widest = nets.activation_units(self.model, self.spec_data)
        block = max(1, EVAL_BYTES // max(1, 2 * n * widest * x.element_size()))
        losses, errors = [], []
        with torch.no_grad():
            for lo in range(0, f, block):
                part = slice(lo, min(f, lo + block))
                params = self.params if block >= f else nets.members(self.params, part)
                loss, error = member_losses(self._forward(x[part], params), y[part], self.data.classification)
                losses.append(loss)
                errors.append(error)
        if len(losses) == 1:
            return losses[0], errors[0]
        return torch.cat(losses), None if errors[0] is None else torch.cat(errors)

    def _check_precision(self, train_loss: torch.Tensor) -> None:
        """Compare the training loss as trained with exact float32 (reduced precision only)."""
        with torch.no_grad():
            exact, _ = member_losses(nets.forward(self.model, self.spec_data, self.params, self.data.x_train),
                                     self.data.y_train, self.data.classification)
            error = (train_loss.detach() - exact).abs() / exact.abs().clamp_min(torch.finfo(self.dtype).tiny)
            self.precision_error = torch.maximum(self.precision_error, torch.nan_to_num(error, nan=0.0))

    def _record(self, row: int, which: int, loss: torch.Tensor, error: torch.Tensor | None) -> None:
        self.curves[which, row] = loss.detach()
        if error is not None:
            self.curves[which + 2, row] = error.detach()

    def run_step(self) -> None:
        """Log (at logged steps), freeze what diverged, and take one optimizer step;
        at ``step == steps`` only the final evaluation."""
        step, data = self.step, self.data
        training = step < self.spec_train.steps
        if step in self.snapshot_steps:
            self.snapshots[step] = [p.detach().clone() for p in self.tensors]
        row = self.spec_train.log_row(step)
        # A member is frozen once its loss on this step's batch, or its full training
        # loss at a logged step, is no longer finite.
        bad = torch.zeros_like(self.active)
        if training or self.full_batch:  # after the last update a minibatch would go unused
            if self.full_batch:
                xb, yb = data.x_train, data.y_train
            else:
                idx = self.batches.next()
                xb, yb = _gather(data.x_train, idx), _gather(data.y_train, idx)
            for p in self.tensors:
                p.requires_grad_(training)
            with torch.set_grad_enabled(training):
                loss, error = member_losses(self._forward(xb), yb, data.classification)
            bad |= ~torch.isfinite(loss.detach())
        if row is not None:
            train_loss, train_error = (loss, error) if self.full_batch else self._evaluate(data.x_train, data.y_train)
            self._record(row, 0, train_loss, train_error)
            self._record(row, 1, *self._evaluate(data.x_test, data.y_test))
            if self.precision is not MatmulPrecision.HIGHEST and step in (0, self.spec_train.steps):
                self._check_precision(train_loss)
            bad |= ~torch.isfinite(train_loss.detach())
        self.diverged_step = torch.where(self.active & bad, step, self.diverged_step)
        self.active &= ~bad
        # Stops change only where the whole training set's loss is known: every step in
        # full batch, the logged steps with minibatches; `all_frozen` reads the host there.
        self.stop_checked = bool(self.stop) and (self.full_batch or row is not None)
        if self.stop_checked:
            self._stop_reached(step, loss if self.full_batch else train_loss)
        if training:
            loss = loss * objective_scale(self.spec_train.objective, yb)
            total = torch.where(self.active, loss, 0.0).sum()
            grads = torch.autograd.grad(total, self.tensors)
            self.optimizer.step(self.tensors, grads, self.active)
        self.step += 1

    def _stop_reached(self, step: int, train_loss: torch.Tensor) -> None:
        """Freeze the members whose training loss at ``step`` is at most stop_train_loss."""
        reached = self.active & (train_loss.detach() <= self.stop)
        self.stopped_step = torch.where(reached, step, self.stopped_step)
        self.active &= ~reached

    @property
    def finished(self) -> bool:
        return self.step > self.spec_train.steps

    @property
    def all_frozen(self) -> bool:
        """Every member stopped or diverged, with stop_train_loss on: one host read, only
        after a step that checked the stops (a member diverged in between waits for it)."""
        return self.stop_checked and not bool(self.active.any())

    def fast_forward(self) -> None:
        """End a family whose members are all frozen: what the remaining steps would log
        is what the frozen weights give now, evaluated once (the whole training and test
        sets), and the remaining snapshots are those weights."""
        later = [row for row, s in enumerate(self.log_steps.tolist()) if s >= self.step]
        if later:
            train, test = self._evaluate(self.data.x_train, self.data.y_train), self._evaluate(
                self.data.x_test, self.data.y_test)
            for row in later:
                self._record(row, 0, *train)
                self._record(row, 1, *test)
            if self.precision is not MatmulPrecision.HIGHEST:
                self._check_precision(train[0])
        for step in self.snapshot_steps:
            if step >= self.step:
                self.snapshots[step] = [p.detach().clone() for p in self.tensors]
        self.step = self.spec_train.steps + 1

    def state_dict(self) -> dict:
        """Everything that changes during training, on the CPU."""
        return {
            "run_ids": [r.run_id for r in self.runs],
            "step": self.step,
            "elapsed": self.elapsed,
            "params": [p.detach().cpu() for p in self.tensors],
            "optimizer": [s.cpu() for s in self.optimizer.state_tensors()],
            "optimizer_t": self.optimizer.t,
            "curves": self.curves.cpu(),
            "active": self.active.cpu(),
            "diverged_step": self.diverged_step.cpu(),
            "stopped_step": self.stopped_step.cpu(),
            "batches": None if self.batches is None else self.batches.state(),
            "snapshots": [[step, [t.cpu() for t in tensors]] for step, tensors in sorted(self.snapshots.items())],
            "precision_error": self.precision_error.cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["run_ids"] != [r.run_id for r in self.runs]:
            raise ValueError("the checkpoint belongs to other runs")
        with torch.no_grad():
            for p, saved in zip(self.tensors, state["params"]):
                p.copy_(saved)
            for s, saved in zip(self.optimizer.state_tensors(), state["optimizer"]):
                s.copy_(saved)
        self.optimizer.t = state["optimizer_t"]
        self.curves = state["curves"].to(self.device)
        self.active = state["active"].to(self.device)
        self.diverged_step = state["diverged_step"].to(self.device)
        self.stopped_step = state.get("stopped_step", self.stopped_step.cpu()).to(self.device)
        if self.batches is not None:
            self.batches.restore(state["batches"])
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.snapshots = {step: [t.to(self.device) for t in tensors] for step, tensors in state["snapshots"]}
        self.precision_error = state.get("precision_error", self.precision_error.cpu()).to(self.device)

    def result(self) -> FamilyResult:
        host = self.curves.double().cpu().numpy()
        errors = self.data.classification
        final = nets.like(self.params, [t.detach().cpu() for t in self.tensors])
        snapshots = {step: nets.like(self.params, tensors) for step, tensors in self.snapshots.items()}
        return FamilyResult(
            steps=self.log_steps,
            train_loss=host[0], test_loss=host[1],
            train_error=host[2] if errors else None, test_error=host[3] if errors else None,
            diverged_step=self.diverged_step.cpu().numpy(), stopped_step=self.stopped_step.cpu().numpy(),
            params=final,
            wall_seconds=self.elapsed, device=describe_device(self.device),
            data=self.data, snapshots=snapshots,
            precision_error=None if self.precision is MatmulPrecision.HIGHEST
            else self.precision_error.double().cpu().numpy(),
        )


def objective_scale(objective: Objective, targets: torch.Tensor) -> float:
    """What the mean squared error is multiplied by to give the objective minimised on
    regression targets ``[F, n, outputs]``: 1 for "mean"; n x outputs / 2 for "half-sum",
    since (1/2) sum of squares = (n outputs / 2) x their mean."""
    return targets.shape[1] * targets.shape[2] / 2 if objective is Objective.HALF_SUM else 1.0


def train_family(runs: Sequence[RunSpec], device: torch.device, checkpoint: Checkpoint | None = None,
                 snapshot_steps: Sequence[int] = ()) -> FamilyResult:
    """Train ``runs`` (one family: same shapes and loop) together on ``device``.

    With a ``checkpoint`` (``core.checkpoint.Checkpoint``), training continues from its
    saved state if there is one for these runs, and saves to it as often as it says; the
    caller removes it when done. The weights at ``snapshot_steps`` (those within the
    run) are kept in the result.
    """
    training = FamilyTraining(runs, device, snapshot_steps)
    if checkpoint is not None:
        saved = checkpoint.load()
        if saved is not None:
            try:
                training.load_state_dict(saved)
            except (ValueError, KeyError, RuntimeError) as exc:  # other runs or shapes: start over
                warnings.warn(f"ignoring checkpoint {checkpoint}: {exc}", RuntimeWarning, stacklevel=2)
                training = FamilyTraining(runs, device, snapshot_steps)
    start = time.perf_counter()
    while not training.finished:
        if checkpoint is not None and checkpoint.due(training.step):
            training.elapsed += time.perf_counter() - start
            start = time.perf_counter()
            checkpoint.save(training.state_dict())
        training.run_step()
        if training.all_frozen:
            training.fast_forward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    training.elapsed += time.perf_counter() - start
    for p in training.tensors:
        p.requires_grad_(False)
    return training.result()


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def pick_device(num_gpus: float) -> torch.device:
    """CUDA when the family was given a GPU and one is visible, else the CPU."""
    if num_gpus > 0 and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")

"""train.matmul_precision: reduced-precision matmuls, off by default, with their error
against exact float32 reported per run."""

from __future__ import annotations

import pytest
import torch

from helpers import PRECISION_SPEC as SPEC
from theoryscope.core import models
from theoryscope.core.errors import SpecError
from theoryscope.core.train import FamilyTraining, member_losses, train_family
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.plan import plan_sweep


def families() -> dict[str, list]:
    plan = plan_sweep(parse_spec(SPEC))
    return {f.exemplar.train.matmul_precision.value: list(f.runs) for f in plan.families}


def test_each_precision_trains_as_its_own_family_and_the_default_keeps_run_ids():
    by_precision = families()
    assert sorted(by_precision) == ["bf16", "highest", "tf32"]
    default = parse_spec(SPEC.replace('"train.matmul_precision" = ["highest", "bf16", "tf32"]\n', ""))
    assert {r.run_id for r in by_precision["highest"]} == {r.run_id for r in plan_sweep(default).runs}


def test_bf16_error_is_the_difference_from_exact_float32_at_the_first_step():
    runs = families()["bf16"]
    cpu = torch.device("cpu")
    # Oracle: the initial nets' training loss with and without bfloat16 autocast.
    start = FamilyTraining(runs, cpu)
    x, y = start.data.x_train, start.data.y_train
    with torch.no_grad():
        exact, _ = member_losses(models.forward(start.params, x, True), y, False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rough = models.forward(start.params, x, True)
        reduced, _ = member_losses(rough.float(), y, False)
    at_start = ((reduced - exact).abs() / exact).double().numpy()
    assert (at_start > 1e-5).all() and (at_start < 5e-2).all()

    trained = train_family(runs, cpu)
    assert (trained.precision_error >= at_start - 1e-12).all()  # the worst of the first and last step
    assert (trained.precision_error < 5e-2).all()
    highest = train_family(families()["highest"], cpu)
    assert highest.precision_error is None
    assert abs(trained.train_loss[-1] / highest.train_loss[-1] - 1).max() < 5e-2


def test_tf32_changes_nothing_on_the_cpu():
    cpu = torch.device("cpu")
    tf32 = train_family(families()["tf32"], cpu)
    highest = train_family(families()["highest"], cpu)
    assert (tf32.train_loss == highest.train_loss).all() and (tf32.precision_error == 0).all()
    assert torch.backends.cuda.matmul.allow_tf32 is False  # restored after every forward


@pytest.mark.parametrize("extra, fragment", [
    ('dtype = "float64"\nmatmul_precision = "bf16"', '"highest" with dtype = "float64"'),
    ('matmul_precision = "fp8"', "matmul_precision"),
])
def test_refused_settings(extra, fragment):
    text = SPEC.replace("log_every = 10\n", f"log_every = 10\n{extra}\n").replace(
        '"train.matmul_precision" = ["highest", "bf16", "tf32"]\n', "")
    with pytest.raises(SpecError, match=fragment):
        parse_spec(text)


def test_reduced_precision_is_refused_outside_train():
    text = """
name = "a"
experiment = "acceleration"
data = {kind = "lp-regression", n_train = 64, n_test = 32, input_dim = 6}
model = {kind = "linear", width = 6, init = "balanced"}
train = {steps = 30, matmul_precision = "bf16"}
"""
    with pytest.raises(SpecError, match='"highest" outside experiment = "train"'):
        parse_spec(text)

"""The benchmark's two workloads, as theoryscope specs: every variant trains exactly
the runs these specs plan, on the same data (``core.data.make_dataset``) from the same
initial weights (``core.models.init_member``).

compute: 108 teacher-student MLPs (d = 32, n = 1024, depth {2, 3, 5} weight layers,
    width {16, 64, 256}, init scale {0.5, 1, 2}, label noise {0, 0.5}, 2 seeds, 300
    full-batch GD steps, a curve point every 10 steps, biases on); about 6.9 TFLOP.
tiny: 2,048 MLPs of depth 3 and width 16 (d = 16, n = 256, 200 steps); init scale
    {0.5, 1, 1.5, 2} x label noise {0, 0.25, 0.5, 1} x 128 seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

from theoryscope.core.config import RunSpec
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.plan import Plan, estimate_cost, plan_sweep
from theoryscope.sweeps.spec import SweepSpec

COMPUTE = """
name = "bench-compute"

[data]
kind = "teacher-student"
input_dim = 32
n_train = 1024
n_test = 1024

[model]
kind = "mlp"
bias = true

[train]
optimizer = "gd"
lr = 0.01
steps = 300
log_every = 10

[grid]
depth = [2, 3, 5]
width = [16, 64, 256]
init_scale = [0.5, 1.0, 2.0]
label_noise = [0.0, 0.5]
seed = [0, 1]
"""

TINY = """
name = "bench-tiny"

[data]
kind = "teacher-student"
input_dim = 16
n_train = 256
n_test = 256

[model]
kind = "mlp"
depth = 3
width = 16
bias = true

[train]
optimizer = "gd"
lr = 0.05
steps = 200
log_every = 10

[grid]
init_scale = [0.5, 1.0, 1.5, 2.0]
label_noise = [0.0, 0.25, 0.5, 1.0]
seed = SEEDS
""".replace("SEEDS", str(list(range(128))))

SPECS = {"compute": COMPUTE, "tiny": TINY}


@dataclass(frozen=True)
class Workload:
    name: str
    spec: SweepSpec
    plan: Plan

    @property
    def runs(self) -> tuple[RunSpec, ...]:
        return self.plan.runs

    @property
    def flops(self) -> float:
        """Matmul FLOPs of training and the logged evaluations (``estimate_cost``)."""
        return sum(estimate_cost(f).flops for f in self.plan.families)


def workload(name: str, resources: str = "") -> Workload:
    """The named workload; ``resources`` is extra TOML for the spec's ``[resources]``."""
    text = SPECS[name] + (f"\n[resources]\n{resources}\n" if resources else "")
    spec = parse_spec(text, origin=f"the {name} workload")
    return Workload(name, spec, plan_sweep(spec))

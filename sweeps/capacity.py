"""What the machines running a sweep offer its families: how many train at once, and
how much memory each may fill (``sweeps.plan.Capacity``, which packing uses).

CPU families (``resources.num_gpus = 0``) fill host memory: a node with C CPUs and M
bytes of Ray ``memory`` runs floor(C / num_cpus) families at once, each with
M / that many bytes. GPU families fill GPU memory: floor(G / num_gpus) families per
node, each with ``num_gpus`` of one GPU's memory (so 0.25 puts four families on a GPU).
Half of that memory is used for the estimate (``sweeps.plan.member_cost`` counts
tensors, not the allocator's slack, the autograd graph's temporaries or measures).

The budget is rounded down to a power of two, so the same machines give the same
packing from one launch to the next (free memory drifts; a resumed family must keep its
id to find its checkpoint).
"""

from __future__ import annotations

import math
import os

from theoryscope.sweeps.plan import Capacity
from theoryscope.sweeps.spec import ResourceSpec

# Fraction of the memory a family may fill by the estimate.
USABLE = 0.5
# Splitting a group to fill slots stops at families of this much work (about a second
# on one CPU core; on a GPU far less, where larger families are what pays).
MIN_FAMILY_FLOPS = {"cpu": 50e9, "gpu": 5e12}
# When a cluster's GPUs cannot be asked for their memory.
FALLBACK_GPU_BYTES = 16 * 1024**3


def capacity_for(nodes: list[dict[str, float]], resources: ResourceSpec,
                 gpu_bytes: int = FALLBACK_GPU_BYTES) -> Capacity | None:
    """Capacity from Ray-style node resources (``{"CPU": 2, "memory": ..., "GPU": 1}``);
    None when no node can host a family."""
    if resources.num_gpus > 0:
        per_node = [math.floor(n.get("GPU", 0.0) / resources.num_gpus + 1e-9) for n in nodes]
        budget = largest = gpu_bytes * min(1.0, resources.num_gpus)
        kind = "gpu"
    else:
        per_node = [math.floor(n.get("CPU", 0.0) / resources.num_cpus + 1e-9) for n in nodes]
        budgets = [n.get("memory", 0.0) / k for n, k in zip(nodes, per_node) if k > 0]
        budget, largest = min(budgets, default=0.0), max(budgets, default=0.0)
        kind = "cpu"
    slots = sum(per_node)
    if slots == 0 or budget <= 0:
        return None
    return Capacity(slots, _power_of_two_below(budget * USABLE), MIN_FAMILY_FLOPS[kind], int(largest))


def local_node(num_cpus: int | None = None) -> dict[str, float]:
    """This machine as a node: its CPUs and its physical memory."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"CPU": float(num_cpus or os.cpu_count() or 1), "memory": float(memory), "GPU": float(_local_gpus())}


def local_capacity(resources: ResourceSpec) -> Capacity | None:
    """What the embedded local Ray on this machine offers (what ``plan`` packs for)."""
    gpu_bytes = local_gpu_bytes() if resources.num_gpus > 0 else FALLBACK_GPU_BYTES
    return capacity_for([local_node()], resources, gpu_bytes)


def local_gpu_bytes() -> int:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    return FALLBACK_GPU_BYTES


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _power_of_two_below(value: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(value, 1.0)))))

"""theoryscope: sweeps of whole families of small nets, measured against deep-learning theory.

This file is the package ``theoryscope`` (the repository root is installed under that
one name; ``core``, ``sweeps`` and ``storage`` are its subpackages, ``cli.py`` is
``theoryscope.cli``). It re-exports what notebooks use, once::

    import theoryscope as ts

    spec = ts.load_spec("examples/quickstart.toml")
    print(ts.plan(spec).families[:3])
    summary = ts.launch(spec, results="results")
    ts.query("results", "SELECT depth, avg(test_loss) FROM runs GROUP BY depth")
    ts.layer_cushion(weights, None, x)
    net = ts.weights.load("results", "quickstart", run_id)   # a trained net (``theoryscope.weights``)

Names are imported on first use, so ``import theoryscope`` (and every CLI command that
does not train) stays fast: nothing here imports torch or Ray until it is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# The subpackages, bottom floor first. Each may import only those before it (the
# layering test checks it); `cli` sits on top of them all.
SUBPACKAGES = ("core", "storage", "sweeps")
# Its modules beside them: the command line and the trained nets' API, on top.
MODULES = ("cli", "weights")

# Public name -> "module:attribute", relative to this package.
_EXPORTS = {
    # specs, plans, sweeps
    "load_spec": "sweeps.load:load_spec",
    "parse_spec": "sweeps.load:parse_spec",
    "plan": "sweeps.plan:plan_sweep",
    "launch": "sweeps.launch:run_sweep",
    "resume": "sweeps.launch:resume_sweep",
    "status": "sweeps.status:sweep_status",
    "query": "sweeps.tables:run_query",
    "tables": "sweeps.tables:describe_views",
    "report": "sweeps.report:build_report",
    "RunSpec": "core.config:RunSpec",
    "SweepSpec": "sweeps.spec:SweepSpec",
    # measures on plain tensors (Arora et al. 2018; Freeman & Bruna 2017; Advani & Saxe
    # 2017; Arora, Cohen & Hazan 2018)
    "layer_cushion": "core.measures.cushion:layer_cushion",
    "interlayer_cushion": "core.measures.cushion:interlayer_cushion",
    "activation_contraction": "core.measures.cushion:activation_contraction",
    "linear_barrier": "core.measures.valley:linear_barrier",
    "string_barrier": "core.measures.valley:string_barrier",
    "relative_barrier": "core.measures.valley:relative_barrier",
    "summarize_overtraining": "core.measures.overtraining:summarize",
    "linear_theory_test_error": "core.measures.overtraining:linear_theory_test_error",
    "end_to_end_update": "core.measures.acceleration:end_to_end_update",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'theoryscope' has no attribute {name!r}")
    module, _, attribute = _EXPORTS[name].partition(":")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *MODULES})

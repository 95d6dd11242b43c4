"""What a cluster receives of theoryscope: this installed package, copied whole.

Nodes of an existing cluster need not have theoryscope installed, so a launch with
``--address`` ships the package with the job (Ray ``py_modules``) and ``submit`` stages
it into the job's working directory. Both copy the same files: the package's
``__init__.py``, its modules (``cli.py``, ``weights.py``) and its subpackages, wherever the package is installed
from (a wheel, or this repository in development mode).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import theoryscope

NAME = "theoryscope"
ROOT = Path(theoryscope.__file__).resolve().parent


def stage_package(into: Path) -> Path:
    """Copy the package to ``into / "theoryscope"`` and return that folder."""
    target = into / NAME
    target.mkdir(parents=True)
    for module in ("__init__", *theoryscope.MODULES):
        shutil.copy2(ROOT / f"{module}.py", target / f"{module}.py")
    for package in theoryscope.SUBPACKAGES:
        shutil.copytree(ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target

"""The floor plan holds: each floor imports only the floors below it.

core (the run vocabulary, data, models, training, the measures' mathematics) imports
nothing of theoryscope's above it and neither Ray nor the CLI's libraries; storage
(tables, files, SQL) imports core at most; sweeps imports core and storage; cli.py sits on
top. Nothing anywhere imports the bare names ``core``, ``sweeps``, ``storage`` or
``cli``: installed, they belong to other distributions. Every import counts, also those
inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import theoryscope
from helpers import REPO

# Floor -> what it may not import (theoryscope's floors by their dotted name).
FORBIDDEN = {
    "core": ("theoryscope.storage", "theoryscope.sweeps", "theoryscope.cli", "ray", "typer", "rich"),
    "storage": ("theoryscope.sweeps", "theoryscope.cli", "ray", "typer", "rich"),
    "sweeps": ("theoryscope.cli", "typer"),
    "weights": ("theoryscope.cli", "ray", "typer", "rich"),  # the trained nets' API, for notebooks
}
BARE = ("core", "sweeps", "storage", "cli")


def imported(source: str, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, the file of the
    dotted ``module`` (relative imports resolved against it)."""
    names = []
    package = module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            names.append((node.lineno, target))
            names.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names)
    return names


def violations(source: str, module: str) -> list[str]:
    """What ``source`` (the file of ``module``, e.g. "theoryscope.core.train") imports
    that its floor may not."""
    floor = module.split(".")[1]
    banned = FORBIDDEN.get(floor, ())
    found = []
    for line, name in imported(source, module):
        if name.split(".")[0] in BARE:
            found.append(f"{module}:{line} imports the bare name {name!r} (use theoryscope.{name})")
        elif any(name == b or name.startswith(b + ".") for b in banned):
            found.append(f"{module}:{line} imports {name} ({floor} may not)")
    return found


def package_files() -> list[tuple[Path, str]]:
    files = [(REPO / f"{name}.py", f"theoryscope.{name}") for name in ("__init__", *theoryscope.MODULES)]
    for floor in ("core", "storage", "sweeps"):
        for path in sorted((REPO / floor).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            files.append((path, ".".join(("theoryscope", *parts))))
    return files


def test_every_floor_imports_only_the_floors_below_it():
    found = [v for path, module in package_files() for v in violations(path.read_text(), module)]
    assert not found, "\n".join(found)


def test_tests_and_benchmarks_import_theoryscope_by_its_installed_name():
    found = []
    for folder in ("tests", "bench"):
        for path in sorted((REPO / folder).glob("*.py")):
            found += [f"{path.name}:{line} {name}" for line, name in imported(path.read_text(), f"{folder}.x")
                      if name.split(".")[0] in BARE]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("module, source", [
    ("theoryscope.core.train", "from theoryscope.sweeps.spec import RunSpec\n"),
    ("theoryscope.core.checkpoint", "from theoryscope.storage.location import remove\n"),
    ("theoryscope.core.models", "def f():\n    import ray\n"),
    ("theoryscope.core.measures.valley", "from ...sweeps import spec\n"),
    ("theoryscope.storage.query", "from theoryscope.sweeps.catalog import find_sweep\n"),
    ("theoryscope.storage.query", "import rich.table\n"),
    ("theoryscope.sweeps.plan", "from theoryscope.cli import app\n"),
    ("theoryscope.sweeps.plan", "from core.config import RunSpec\n"),
])
def test_the_checker_catches_each_kind_of_violation(module, source):
    assert violations(source, module)


@pytest.mark.parametrize("module, source", [
    ("theoryscope.core.train", "from theoryscope.core.config import RunSpec\nfrom . import models\n"),
    ("theoryscope.storage.query", "from theoryscope.core.errors import SpecError\nimport duckdb\n"),
    ("theoryscope.sweeps.dispatch", "import ray\nfrom theoryscope.storage import schemas\n"),
    ("theoryscope.cli", "import typer\nfrom theoryscope.sweeps.launch import run_sweep\n"),
])
def test_the_checker_allows_imports_from_below(module, source):
    assert violations(source, module) == []

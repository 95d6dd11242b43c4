"""One installed name: the wheel holds ``theoryscope/...`` alone, and theoryscope works
installed next to distributions that own the names ``core``, ``sweeps``, ``storage`` and
``cli`` (W&B's sweep engine installs ``sweeps``, pyCLI installs ``cli``)."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import theoryscope
from helpers import REPO, SMALL_SPEC
from theoryscope.sweeps.package import stage_package

# Files the other distributions would put under those names: each fails loudly if imported.
SQUATTERS = {
    "core/__init__.py": "raise ImportError('this is another distribution\\'s core')\n",
    "sweeps/__init__.py": "raise ImportError('this is W&B\\'s sweeps')\n",
    "storage/__init__.py": "raise ImportError('this is another distribution\\'s storage')\n",
    "cli.py": "def broken(:\n",  # pyCLI's module, as far as Python 3 is concerned: a SyntaxError
}
ALWAYS_BUILT = {"__pycache__", ".venv", ".git", "build", "results", "theoryscope.egg-info"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the repository as it is (tests, bench, examples included)."""
    copy = tmp_path_factory.mktemp("source") / "theoryscope"
    shutil.copytree(REPO, copy, ignore=lambda _, names: [n for n in names if n in ALWAYS_BUILT or n.endswith(".pyc")])
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                            "print(build_meta.build_wheel(sys.argv[1]))", str(out)],
                           cwd=copy, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    return out / built.stdout.strip().splitlines()[-1]


def test_the_wheel_holds_only_the_theoryscope_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    outside = [n for n in names if not n.startswith(("theoryscope/", "theoryscope-"))]
    assert not outside, outside
    for required in ("theoryscope/__init__.py", "theoryscope/cli.py", "theoryscope/core/config/run.py",
                     "theoryscope/core/datasets/digits.csv.gz", "theoryscope/sweeps/launch.py",
                     "theoryscope/storage/query.py"):
        assert required in names
    assert not [n for n in names if n.startswith(("theoryscope/tests/", "theoryscope/bench/"))]


def test_the_wheel_ships_every_subpackage_that_a_cluster_receives(wheel, tmp_path):
    """``pyproject.toml``'s package list and what ``--address`` / ``submit`` ship agree."""
    shipped = stage_package(tmp_path)
    staged = {str(p.relative_to(tmp_path)) for p in shipped.rglob("*.py")}
    in_wheel = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    assert staged == in_wheel


@pytest.mark.slow
def test_installed_beside_squatters_the_cli_and_a_launch_work(wheel, tmp_path):
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                                "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    for name, text in SQUATTERS.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text)
    work = tmp_path / "work"  # outside the repository, so nothing resolves to its folders
    work.mkdir()
    (work / "spec.toml").write_text(SMALL_SPEC)
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(site), "HOME": str(tmp_path),
           "RAY_USAGE_STATS_ENABLED": "0"}

    def theoryscope_command(*args: str) -> subprocess.CompletedProcess:
        script = Path(sys.executable).parent / "theoryscope"  # the console script
        return subprocess.run([str(script), *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import theoryscope.cli, sys; print(theoryscope.__file__); "
                            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('core', 'sweeps', 'storage', "
                            "'cli')))"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    assert where.stdout.splitlines() == [str(site / "theoryscope" / "__init__.py"), "[]"]
    assert theoryscope_command("--help").returncode == 0
    launched = theoryscope_command("launch", "spec.toml", "--results", "results", "--quiet")
    assert launched.returncode == 0, launched.stderr[-3000:]
    asked = theoryscope_command("query", "SELECT count(*) AS n FROM runs WHERE status = 'ok'", "--results", "results",
                                "--format", "json")
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout) == [{"n": 8}]


def test_every_public_name_resolves():
    for name in theoryscope.__all__:
        assert getattr(theoryscope, name) is not None
    with pytest.raises(AttributeError):
        theoryscope.no_such_name  # noqa: B018


def test_importing_theoryscope_imports_neither_torch_nor_ray():
    code = "import sys, theoryscope; print(sorted({'torch', 'ray'} & set(sys.modules)))"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert shown.stdout.strip() == "[]", shown.stderr


def test_the_subpackages_are_the_installed_ones():
    for name in theoryscope.SUBPACKAGES:
        assert importlib.import_module(f"theoryscope.{name}").__file__.startswith(str(REPO / name))

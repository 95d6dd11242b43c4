"""Results in an object store: ``--results s3://...`` against a real S3 server (moto's,
on 127.0.0.1), and ``--results file:///...``. Atomic writes, debris, checkpoints, SQL and
a whole sweep through Ray workers must behave as they do in a local directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import torch

from helpers import CREDENTIALS, REPO, SMALL_SPEC, free_port
from theoryscope.core.errors import QueryError, StorageError
from theoryscope.storage.location import StorePath, host, results_root, root_text, write_file_atomic
from theoryscope.storage.parquet import clean, read_column, scan, table_path, write_atomic
from theoryscope.sweeps.checkpoints import Checkpointer
from theoryscope.sweeps.dispatch import LocalBackend
from theoryscope.sweeps.launch import launch, prepare
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.tables import run_query


def rows(n: int) -> pa.Table:
    return pa.table({"run_id": [f"r{i}" for i in range(n)], "step": list(range(n))})


def objects(root: StorePath) -> list[str]:
    infos = root.fs.get_file_info(pafs.FileSelector(root.path, recursive=True, allow_not_found=True))
    return sorted(i.path.removeprefix(root.path + "/") for i in infos if i.type == pafs.FileType.File)


def test_a_uri_names_a_store_and_file_uris_a_local_directory(s3_server, tmp_path):
    root = results_root(s3_server("names"))
    assert isinstance(root, StorePath) and root.path == "theoryscope/names"
    assert str(root / "runs") == "s3://theoryscope/names/runs"
    assert root_text(root) == s3_server("names")  # options travel to workers and hints
    assert results_root(f"file://{tmp_path}/r") == tmp_path / "r"
    with pytest.raises(StorageError, match="--results nosuch://x"):
        results_root("nosuch://x/y")


def test_files_in_a_store_are_written_whole_scanned_and_cleaned(s3_server):
    root = results_root(s3_server("files"))
    write_atomic(rows(3), table_path(root, "curves", "a", "f1"))
    write_atomic(rows(2), table_path(root, "curves", "b", "f2"))
    write_atomic(rows(4), table_path(root, "curves", "a", "f1"))  # a retried family replaces its file
    assert objects(root) == ["curves/sweep=a/f1.parquet", "curves/sweep=b/f2.parquet"]
    assert read_column(root, "curves", "a", "step") == [0, 1, 2, 3]

    fs = root.fs
    with fs.open_output_stream(f"{root.path}/curves/sweep=a/cut.parquet") as stream:
        stream.write(b"PAR1 and then nothing")
    dead = f"{root.path}/curves/sweep=a/f3.parquet.tmp-{host()}-999999999-beef"
    live = f"{root.path}/curves/sweep=a/f4.parquet.tmp-{host()}-{os.getpid()}-beef"
    for path in (dead, live):
        with fs.open_output_stream(path) as stream:
            stream.write(b"half")
    found = scan(root, "curves")
    assert [p.name for p in found.complete] == ["f1.parquet", "f2.parquet"]
    assert [p.name for p in found.damaged] == ["cut.parquet"]
    assert sorted(p.name for p in found.leftovers) == sorted([Path(dead).name, Path(live).name])
    removed = clean(found)
    assert sorted(p.name for p in removed) == sorted(["cut.parquet", Path(dead).name])
    assert objects(root) == ["curves/sweep=a/f1.parquet", f"curves/sweep=a/{Path(live).name}",
                             "curves/sweep=b/f2.parquet"]


def test_a_failed_write_leaves_no_object(s3_server):
    root = results_root(s3_server("failed"))
    target = table_path(root, "runs", "s", "f")

    class Boom(Exception):
        pass

    def explode(stream):
        stream.write(b"PAR1 partial")
        raise Boom

    with pytest.raises(Boom):
        write_file_atomic(target, explode)
    assert objects(root) == []


def test_a_checkpoint_round_trips_through_a_store(s3_server):
    path = results_root(s3_server("ckpt")) / "checkpoints" / "sweep=s" / "fam.pt"
    checkpoint = Checkpointer(path, every_steps=5)
    assert checkpoint.load() is None
    state = {"step": 7, "weights": torch.randn(3, 4, 5), "rng": torch.random.get_rng_state()}
    checkpoint.save(state)
    loaded = checkpoint.load()
    assert loaded["step"] == 7 and torch.equal(loaded["weights"], state["weights"])
    assert torch.equal(loaded["rng"], state["rng"])
    checkpoint.remove()
    assert checkpoint.load() is None and objects(results_root(s3_server("ckpt"))) == []


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **CREDENTIALS}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "theoryscope.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


COMPARED = "SELECT run_id, family_id, status, train_loss, test_loss, test_error FROM runs ORDER BY run_id"


@pytest.mark.slow
def test_a_sweep_on_ray_workers_writes_to_a_store_and_resumes_from_it(s3_server, write_spec, tmp_path):
    """The acceptance path: launch on the embedded Ray with results in S3, then status,
    query and resume from the store, with the same numbers as a local directory."""
    spec = write_spec(SMALL_SPEC)
    uri = s3_server("sweep")
    done = cli("launch", str(spec), "--results", uri, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["ok"] == 8 and summary["results"] == uri

    status = cli("status", "small", "--results", uri, "--json")
    assert status.returncode == 0, status.stderr
    status = json.loads(status.stdout)
    assert status[0]["done"] == 8 and status[0]["remaining"] == 0
    again = cli("resume", "small", "--results", uri, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["ran"] == 0

    queried = cli("query", COMPARED, "--results", uri, "--format", "json")
    assert queried.returncode == 0, queried.stderr
    in_store = json.loads(queried.stdout)
    local = tmp_path / "local"
    launch(prepare(parse_spec(SMALL_SPEC), local), local, LocalBackend())
    expected = run_query(local, COMPARED).to_pylist()
    # Ray workers train with one torch thread each, this process with its own count: the
    # same families, float32 numbers equal to rounding (bitwise only at equal thread counts).
    keys = ("run_id", "family_id", "status")
    assert [[r[k] for k in keys] for r in in_store] == [[r[k] for k in keys] for r in expected]
    for got, want in zip(in_store, expected):
        for name in ("train_loss", "test_loss", "test_error"):
            if want[name] is None:
                assert got[name] is None, (name, got)
            else:
                assert got[name] == pytest.approx(want[name], rel=1e-5, abs=1e-9), (name, got)
    assert objects(results_root(uri))[0].startswith("curves/sweep=small/")
    assert not any(".tmp-" in name or name.endswith(".pt") for name in objects(results_root(uri)))


def test_sql_over_a_store_reaches_no_file(s3_server):
    root = s3_server("sandbox")
    launch(prepare(parse_spec(SMALL_SPEC), root), root, LocalBackend())
    assert run_query(root, "SELECT count(*) AS n FROM runs").to_pylist() == [{"n": 8}]
    assert run_query(root, "SELECT count(DISTINCT sweep) AS n FROM curves").to_pylist() == [{"n": 1}]
    for hostile in ("SELECT * FROM read_csv('/etc/passwd')",
                    f"SELECT * FROM read_parquet('{REPO}/**/*.parquet')",
                    "SELECT * FROM read_parquet('s3://theoryscope/sandbox/runs/*/*.parquet')"):
        with pytest.raises(QueryError):
            run_query(root, hostile)


@pytest.mark.slow  # two CLI processes
def test_file_uris_are_local_directories(write_spec, tmp_path):
    spec = write_spec(SMALL_SPEC)
    uri = f"file://{tmp_path}/viafile"
    done = cli("launch", str(spec), "--results", uri, "--backend", "local", "--json")
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "viafile" / "runs" / "sweep=small").glob("*.parquet"))) == 2
    counted = cli("query", "SELECT count(*) AS n FROM runs", "--results", uri, "--format", "json")
    assert json.loads(counted.stdout) == [{"n": 8}]


def test_an_unreachable_store_is_one_line_and_exit_1(write_spec):
    spec = write_spec(SMALL_SPEC)
    port = free_port()  # nothing listens there
    bad = cli("launch", str(spec), "--backend", "local", "--results",
              f"s3://nobucket/x?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
              f"&connect_timeout=1&request_timeout=1")
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and "nobucket" in bad.stderr and "Traceback" not in bad.stderr

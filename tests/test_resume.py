"""Resume: checkpoints that continue exactly, dead workers retried, failures retried,
debris ignored and cleaned, and names that keep different specs apart."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from helpers import FAMILIES, SMALL_SPEC, Interrupting
from theoryscope.core.errors import TheoryscopeError
from theoryscope.core.train import train_family
from theoryscope.storage.parquet import table_path
from theoryscope.sweeps.checkpoints import Checkpointer
from theoryscope.sweeps.dispatch import LocalBackend, RayBackend
from theoryscope.sweeps.execute import FamilyJob, execute_family, execute_in_worker
from theoryscope.sweeps.launch import launch, prepare, prepare_resume
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.plan import plan_sweep
from theoryscope.sweeps.tables import debris, run_query

CPU = torch.device("cpu")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_family_continued_from_its_checkpoint_equals_an_uninterrupted_one(name, tmp_path):
    runs = FAMILIES[name]
    whole = train_family(runs, CPU)
    path = tmp_path / "family.pt"
    with pytest.raises(KeyboardInterrupt):
        train_family(runs, CPU, Interrupting(path, every_steps=7, after=2))
    assert path.is_file()
    continued = train_family(runs, CPU, Checkpointer(path, every_steps=7))
    for key in ("train_loss", "test_loss", "train_error", "test_error", "diverged_step"):
        np.testing.assert_array_equal(getattr(continued, key), getattr(whole, key), err_msg=key)
    for a, b in zip(continued.params.weights, whole.params.weights):
        assert torch.equal(a, b)


def test_checkpoints_load_without_unpickling_objects(tmp_path):
    runs = FAMILIES["adam-minibatch-bias"]
    path = tmp_path / "family.pt"
    with pytest.raises(KeyboardInterrupt):
        train_family(runs, CPU, Interrupting(path, every_steps=5, after=1))
    payload = torch.load(path, weights_only=True)  # raises on anything but tensors and plain values
    assert payload["step"] == 5 and payload["run_ids"] == [r.run_id for r in runs]


def test_a_damaged_checkpoint_is_ignored_with_a_warning(tmp_path):
    runs = FAMILIES["gd-mlp-regression"][:2]
    path = tmp_path / "family.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(RuntimeWarning, match="unreadable checkpoint"):
        result = train_family(runs, CPU, Checkpointer(path, every_steps=1000))
    np.testing.assert_array_equal(result.train_loss, train_family(runs, CPU).train_loss)
    assert not path.exists()


def test_execute_family_resumes_from_its_checkpoint_and_removes_it(tmp_path, monkeypatch):
    spec = parse_spec(SMALL_SPEC.replace("steps = 30", "steps = 30\ncheckpoint_every = 4"))
    family = plan_sweep(spec).families[1]
    clean_dir, broken_dir = tmp_path / "clean", tmp_path / "broken"
    execute_family(FamilyJob("small", family.family_id, family.runs, str(clean_dir)))
    job = FamilyJob("small", family.family_id, family.runs, str(broken_dir))

    original = Checkpointer.save
    calls = []

    def save_then_die(self, payload):
        original(self, payload)
        calls.append(payload["step"])
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        execute_family(job)
    assert job.checkpoint_path.is_file() and calls == [4, 8, 12]
    monkeypatch.setattr(Checkpointer, "save", original)
    execute_family(job)
    assert not job.checkpoint_path.exists()
    for table in ("runs", "curves"):
        a = pq.read_table(table_path(clean_dir, table, "small", family.family_id))
        b = pq.read_table(table_path(broken_dir, table, "small", family.family_id))
        drop = ["wall_seconds", "finished_at"] if table == "runs" else []
        assert a.drop_columns(drop).equals(b.drop_columns(drop))


@pytest.mark.slow  # Ray workers killed and started again
def test_a_worker_that_dies_is_retried_by_ray(results, tmp_path, ray_session):
    marks = str(tmp_path / "marks")
    os.makedirs(marks)

    def dies_on_first_attempt(job, threads):  # pickled by value into the worker
        mark = os.path.join(marks, job.family_id)
        if not os.path.exists(mark):
            open(mark, "w").close()
            os._exit(1)
        return execute_in_worker(job, threads)

    spec = parse_spec(SMALL_SPEC)
    summary = launch(prepare(spec, results), results, RayBackend(task=dies_on_first_attempt))
    assert summary.total("n_ok") == 8 and summary.total("n_failed") == 0
    assert len(os.listdir(marks)) == 2  # both families died once
    counts = run_query(results, "SELECT count(*) AS n, count(DISTINCT run_id) AS d FROM runs").to_pylist()
    assert counts == [{"n": 8, "d": 8}]


@pytest.mark.slow  # Ray workers killed and started again
def test_a_worker_that_keeps_dying_is_recorded_as_failed(results, ray_session):
    def always_dies(job, threads):
        os._exit(1)

    spec = parse_spec(SMALL_SPEC.replace("[grid]", "[resources]\nmax_retries = 1\n\n[grid]"))
    summary = launch(prepare(spec, results), results, RayBackend(task=always_dies))
    assert summary.total("n_failed") == 8
    errors = run_query(results, "SELECT DISTINCT status, error FROM runs").to_pylist()
    assert len(errors) == 1 and errors[0]["status"] == "failed" and "died" in errors[0]["error"].lower()


def test_failed_runs_are_kept_until_retried_then_replaced(results, fail_families):
    heal = fail_families(2, "CUDA out of memory")
    spec = parse_spec(SMALL_SPEC)
    launch(prepare(spec, results), results, LocalBackend())
    heal()
    assert prepare_resume(results, "small").families == ()  # failed runs are recorded, not lost
    retry = prepare_resume(results, "small", retry_failed=True)
    assert sum(f.size for f in retry.families) == 4
    launch(retry, results, LocalBackend())
    rows = run_query(results, "SELECT status, count(*) AS n, count(DISTINCT run_id) AS d FROM runs "
                              "GROUP BY status").to_pylist()
    assert rows == [{"status": "ok", "n": 8, "d": 8}]


def test_launching_the_same_spec_resumes_and_harmless_edits_are_the_same_spec(results):
    spec = parse_spec(SMALL_SPEC)
    launch(prepare(spec, results), results, LocalBackend())
    edited = SMALL_SPEC.replace("[grid]\ndepth = [1, 2]\nlabel_noise = [0.0, 0.5]",
                                "[resources]\nnum_cpus = 2\n\n[grid]\nlabel_noise = [0.0, 0.5]\ndepth = [1, 2]")
    assert edited != SMALL_SPEC
    assert prepare(parse_spec(edited), results).families == ()


def test_force_new_keeps_the_old_results_apart(results):
    launch(prepare(parse_spec(SMALL_SPEC), results), results, LocalBackend())
    other = parse_spec(SMALL_SPEC.replace("steps = 30", "steps = 20"))
    with pytest.raises(TheoryscopeError, match="--force-new to launch it as 'small-[0-9a-f]{6}'"):
        prepare(other, results)
    plan = prepare(other, results, force_new=True)
    assert plan.sweep.startswith("small-") and len(plan.families) == 2
    launch(plan, results, LocalBackend())
    assert prepare(other, results, force_new=True).sweep == plan.sweep  # the same name again: a resume
    rows = run_query(results, "SELECT sweep, max(steps) AS steps, count(*) AS n FROM runs GROUP BY sweep "
                              "ORDER BY sweep").to_pylist()
    assert rows == [{"sweep": "small", "steps": 30, "n": 8}, {"sweep": plan.sweep, "steps": 20, "n": 8}]


def test_truncated_and_temporary_files_are_ignored_reported_and_cleaned(results):
    spec = parse_spec(SMALL_SPEC)
    launch(prepare(spec, results), results, LocalBackend())
    done = plan_sweep(spec).families[0]
    victim = table_path(results, "runs", "small", done.family_id)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # truncated: its runs are no longer done
    stray = victim.with_name(f"{victim.name}.tmp-otherhost-1-abcd")
    stray.write_bytes(b"half")
    os.utime(stray, (0, 0))  # old: its writer is long gone
    found = debris(results)
    assert found.damaged == [victim] and found.leftovers == [stray]
    counts = run_query(results, "SELECT count(*) AS n FROM runs").to_pylist()
    assert counts == [{"n": 4}]  # the other family only; nothing read from the debris
    plan = prepare_resume(results, "small")
    assert [f.family_id for f in plan.families] == [done.family_id]
    summary = launch(plan, results, LocalBackend())
    assert sorted(summary.removed) == sorted([victim, stray])
    assert debris(results).damaged == [] and debris(results).leftovers == []
    counts = run_query(results, "SELECT count(*) AS n, count(DISTINCT run_id) AS d FROM runs").to_pylist()
    assert counts == [{"n": 8, "d": 8}]


def test_a_live_writers_temporary_file_is_left_alone(results):
    launch(prepare(parse_spec(SMALL_SPEC), results), results, LocalBackend())
    from theoryscope.storage.location import host

    live = results / "runs" / "sweep=small" / f"x.parquet.tmp-{host()}-{os.getpid()}-beef"
    live.write_bytes(b"being written")
    launch(prepare(parse_spec(SMALL_SPEC), results), results, LocalBackend())
    assert live.exists()

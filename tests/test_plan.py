"""Grid expansion, run ids, and packing runs into families."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from helpers import REPO, SMALL_SPEC
from theoryscope.core.errors import SpecError
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.plan import family_key, pack_families, plan_sweep


def test_grid_is_the_cartesian_product():
    plan = plan_sweep(parse_spec(SMALL_SPEC))
    assert len(plan.runs) == 2 * 2 * 2
    combos = {(r.model.depth, r.data.label_noise, r.seed) for r in plan.runs}
    assert combos == {(d, n, s) for d in (1, 2) for n in (0.0, 0.5) for s in (0, 1)}
    assert len({r.run_id for r in plan.runs}) == 8


def test_no_grid_is_one_run():
    plan = plan_sweep(parse_spec('name = "one"'))
    assert len(plan.runs) == 1 and len(plan.families) == 1


def test_families_share_shapes_and_are_fewer_than_runs():
    plan = plan_sweep(parse_spec(SMALL_SPEC))
    assert len(plan.families) == 2  # depth 1 and depth 2; noise and seed vary inside
    assert sum(f.size for f in plan.families) == len(plan.runs)
    for family in plan.families:
        assert len({family_key(r) for r in family.runs}) == 1


def test_lr_and_seed_share_a_family_but_steps_do_not():
    spec = parse_spec('name = "x"\n[grid]\n"train.lr" = [0.1, 0.2]\nseed = [0, 1]\n"train.steps" = [10, 20]')
    plan = plan_sweep(spec)
    assert len(plan.runs) == 8 and len(plan.families) == 2
    assert sorted(f.size for f in plan.families) == [4, 4]


def test_split_at_max_family_size_into_near_equal_families():
    spec = parse_spec(f'name = "x"\n[resources]\nmax_family_size = 4\n[grid]\nseed = {list(range(10))}')
    sizes = sorted(f.size for f in plan_sweep(spec).families)
    assert sizes == [3, 3, 4]


def test_family_ids_are_content_hashes():
    runs = plan_sweep(parse_spec(SMALL_SPEC)).runs
    a = pack_families(runs, 512)
    b = pack_families(list(reversed(runs)), 512)
    assert {f.family_id for f in a} == {f.family_id for f in b}
    assert len({f.family_id for f in a}) == len(a)


def test_exclude_leaves_out_done_runs():
    spec = parse_spec(SMALL_SPEC)
    full = plan_sweep(spec)
    done = frozenset(r.run_id for r in full.runs[:3])
    rest = plan_sweep(spec, exclude=done)
    assert len(rest.runs) == 8  # the plan still knows every run
    todo = [r.run_id for f in rest.families for r in f.runs]
    assert len(todo) == 5 and not set(todo) & done


def test_run_id_ignores_key_order_formatting_and_int_vs_float():
    a = parse_spec('name = "a"\n[train]\nlr = 1\nsteps = 5\n[model]\nwidth = 8')
    b = parse_spec('name = "b"  # another name, same run\n[model]\nwidth   =   8\n[train]\nsteps = 5\nlr = 1.0')
    assert plan_sweep(a).runs[0].run_id == plan_sweep(b).runs[0].run_id


def test_run_id_changes_with_any_field():
    base = plan_sweep(parse_spec('name = "a"')).runs[0].run_id
    for body in ("[train]\nlr = 0.051", "[data]\nseed = 1", "seed = 1", "[train]\ndtype = \"float64\"",
                 "[model]\nbias = true"):
        assert plan_sweep(parse_spec('name = "a"\n' + body)).runs[0].run_id != base, body


def test_run_id_is_the_same_in_another_process():
    ids = [r.run_id for r in plan_sweep(parse_spec(SMALL_SPEC)).runs]
    code = (
        "import json, sys\n"
        "from theoryscope.sweeps.load import parse_spec\n"
        "from theoryscope.sweeps.plan import plan_sweep\n"
        "print(json.dumps([r.run_id for r in plan_sweep(parse_spec(sys.stdin.read())).runs]))\n"
    )
    child = subprocess.run([sys.executable, "-c", code], input=SMALL_SPEC, capture_output=True,
                           text=True, cwd=REPO, env={"PYTHONHASHSEED": "12345", "PATH": ""}, check=True)
    assert json.loads(child.stdout) == ids


def test_run_id_is_pinned():
    """The canonical form is a contract: a change here orphans every stored result."""
    run = plan_sweep(parse_spec('name = "a"')).runs[0]
    assert run.canonical_json() == (
        '{"data":{"input_dim":32,"kind":"teacher-student","label_noise":0.0,"n_test":1024,"n_train":1024,'
        '"output_dim":1,"seed":0,"teacher_width":32},"experiment":"train","model":{"activation":"relu",'
        '"bias":false,"depth":2,"init":"default","init_scale":1.0,"kind":"mlp","width":64},"seed":0,'
        '"train":{"batch_size":0,"dtype":"float32","log_every":20,"lr":0.05,"optimizer":"gd","steps":1000,'
        '"weight_decay":0.0}}')
    assert run.run_id == hashlib.sha256(run.canonical_json().encode()).hexdigest()[:16] == "9c23675b776670a8"


def test_fields_that_do_not_apply_are_not_part_of_the_run():
    """Width at depth 1, momentum under gd, Adam's betas under sgd: one run, not several."""
    spec = parse_spec('name = "x"\n[grid]\ndepth = [1, 2]\nwidth = [8, 16, 32]\n"train.momentum" = [0.0, 0.9]')
    plan = plan_sweep(spec)
    assert plan.grid_points == 12 and len(plan.runs) == 1 + 3  # depth 1 is one net; momentum unused by gd
    assert len(plan.families) == 4
    gd = plan_sweep(parse_spec('name = "x"\n[train]\nmomentum = 0.5\nbeta1 = 0.1')).runs[0]
    assert gd.run_id == plan_sweep(parse_spec('name = "x"')).runs[0].run_id
    sgd = plan_sweep(parse_spec('name = "x"\n[train]\noptimizer = "sgd"\nmomentum = 0.5')).runs[0]
    assert '"momentum":0.5' in sgd.canonical_json() and "beta1" not in sgd.canonical_json()


def test_impossible_combination_is_named():
    spec = parse_spec('name = "x"\n[train]\noptimizer = "sgd"\n[grid]\n"train.batch_size" = [32, 4096]\n"data.n_train" = [64]')
    with pytest.raises(SpecError, match=r"train.batch_size = 4096.*data.n_train = 64"):
        plan_sweep(spec)


def test_zero_init_is_fine_at_depth_1_only():
    ok = parse_spec('name = "x"\n[model]\nkind = "linear"\ndepth = 1\ninit_scale = 0\n[grid]\n"data.n_train" = [10, 20]')
    assert len(plan_sweep(ok).runs) == 2
    with pytest.raises(SpecError, match=r"grid.depth\[1\]: 3 does not fit model.init_scale.*saddle"):
        parse_spec('name = "x"\n[model]\ninit_scale = 0.0\ndepth = 1\n[grid]\ndepth = [1, 3]')
    combined = parse_spec('name = "x"\n[model]\ndepth = 1\n[grid]\ndepth = [1, 2]\ninit_scale = [0, 1]')
    with pytest.raises(SpecError, match="model.depth = 2, model.init_scale = 0.0.*saddle"):
        plan_sweep(combined)

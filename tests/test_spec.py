"""Spec parsing and validation: defaults, grid names, and one-line errors for bad input."""

from __future__ import annotations

import dataclasses
import json

import pytest

from theoryscope.core.config import DataKind, DataSpec, Experiment, ModelSpec, Optimizer, RunSpec, TrainSpec
from theoryscope.core.errors import SpecError
from theoryscope.sweeps.load import load_spec, parse_spec
from theoryscope.sweeps.spec import ResourceSpec


def test_minimal_spec_takes_every_default():
    spec = parse_spec('name = "x"')
    assert spec.name == "x"
    assert spec.data == DataSpec() and spec.model == ModelSpec() and spec.train == TrainSpec()
    assert spec.resources == ResourceSpec() and spec.grid == ()
    assert spec.data.kind is DataKind.TEACHER_STUDENT and spec.train.optimizer is Optimizer.GD


def test_design_example_parses():
    spec = parse_spec("""
        name = "cushions-vs-noise"
        experiment = "train"
        [data]
        kind = "teacher-student"
        n_train = 1024
        n_test = 1024
        input_dim = 32
        [model]
        kind = "mlp"
        activation = "relu"
        [train]
        optimizer = "gd"
        lr = 0.05
        steps = 2000
        batch_size = 0
        log_every = 20
        [grid]
        depth = [1, 2, 4]
        width = [16, 64, 256]
        init_scale = [0.5, 1.0, 2.0]
        label_noise = [0.0, 0.2, 0.4]
        seed = [0, 1, 2]
        [resources]
        num_cpus = 1
        num_gpus = 0.5
        max_family_size = 512
    """.replace("\n        ", "\n"))
    assert dict(spec.grid) == {
        "model.depth": (1, 2, 4), "model.width": (16, 64, 256), "model.init_scale": (0.5, 1.0, 2.0),
        "data.label_noise": (0.0, 0.2, 0.4), "seed": (0, 1, 2),
    }
    assert spec.resources.num_gpus == 0.5


def test_dotted_grid_names_and_int_to_float():
    spec = parse_spec('name = "x"\n[train]\nlr = 1\n[grid]\n"data.n_train" = [200, 800]\n"train.lr" = [1, 0.5]')
    assert dict(spec.grid) == {"data.n_train": (200, 800), "train.lr": (1.0, 0.5)}
    assert isinstance(spec.train.lr, float)
    assert all(isinstance(v, float) for v in dict(spec.grid)["train.lr"])


def test_spec_text_is_kept_verbatim():
    text = '# a comment\nname = "x"   # trailing\n'
    assert parse_spec(text).source == text


BAD = [
    # (spec body after the name line, fragments the one-line message must contain)
    ("colour = 1", ["colour", "unknown key", "allowed", "name"]),
    ("[model]\nwidht = 3", ["model.widht", "unknown key", "width"]),
    ("[measure]\ncushionz = true", ["measure.cushionz", "unknown key"]),
    ("[model]\nwidth = -3", ["model.width", ">= 1", "-3"]),
    ("[model]\nwidth = 3.5", ["model.width", "integer", "3.5"]),
    ("[model]\nwidth = true", ["model.width", "integer", "True"]),
    ('[model]\nwidth = "64"', ["model.width", "integer", "'64'"]),
    ("[data]\nn_train = 0", ["data.n_train", ">= 1", "0"]),
    ('[data]\nkind = "imagenet"', ["data.kind", '"teacher-student"', '"gaussian-mixture"', "imagenet"]),
    ("[train]\nlr = 0", ["train.lr", "> 0", "0.0"]),
    ("[train]\nlr = -0.1", ["train.lr", "> 0"]),
    ("[train]\nlr = nan", ["train.lr", "finite"]),
    ('[train]\noptimizer = "lbfgs"', ["train.optimizer", '"gd" | "sgd" | "adam"', "lbfgs"]),
    ("[train]\nbatch_size = 32", ["train.batch_size", '"sgd"']),
    ("[train]\nsteps = 0", ["train.steps", ">= 1"]),
    ("[resources]\nnum_gpus = -1", ["resources.num_gpus", ">= 0"]),
    ("[resources]\nmax_family_size = 0", ["resources.max_family_size", ">= 1"]),
    ('[model]\nkind = "mlp"\ninit_scale = 0', ["model.init_scale", "saddle"]),
    ('[model]\nkind = "linear"\ndepth = 3\ninit_scale = 0', ["model.init_scale", "depth >= 2"]),
    ("[data]\nkind = \"gaussian-mixture\"\nlabel_noise = 1.5", ["data.label_noise", "[0, 1]"]),
    ('experiment = "dance"', ["experiment", '"train"', "dance"]),
    ("data = 3", ["data", "table"]),
    ("[grid]\nwidth = []", ["grid.width", "non-empty list"]),
    ("[grid]\nwidth = 16", ["grid.width", "non-empty list"]),
    ("[grid]\nwidth = [16, -2]", ["grid.width[1]", ">= 1", "-2"]),
    ("[grid]\nwidth = [16, 16]", ["grid.width[1]", "twice"]),
    ('[grid]\n"model.colour" = [1]', ["grid.model.colour", "not a sweepable field", "data.n_train"]),
    ('[grid]\n"resources.num_cpus" = [1]', ["grid.resources.num_cpus", "not a sweepable field"]),
    ('[grid]\ndepth = [1]\n"model.depth" = [2]', ["grid.model.depth", "again"]),
    ('[grid]\n"data.kind" = ["teacher-student", "imagenet"]', ["grid.data.kind[1]", '"linear-teacher"', "imagenet"]),
    ('[data]\nkind = "mnist"', ["data.path", "the directory holding the mnist files"]),
    ('[data]\nkind = "digits"\nn_train = 1700\nn_test = 200', ["data.n_train", "1797"]),
    ('[data]\nkind = "digits"\nlabel_noise = 1.5', ["data.label_noise", "[0, 1]"]),
    ('[train]\nobjective = "sum"', ["train.objective", '"half-sum"']),
    ("[grid]\nseed = [-1]", ["grid.seed[0]", ">= 0"]),
]


@pytest.mark.parametrize("body,fragments", BAD, ids=[b.split("\n")[-1] for b, _ in BAD])
def test_bad_values_give_one_line_with_the_key_path(body, fragments):
    with pytest.raises(SpecError) as info:
        parse_spec('name = "x"\n' + body, origin="spec.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("spec.toml: ")
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_missing_name():
    with pytest.raises(SpecError, match="name: missing"):
        parse_spec("[data]\nn_train = 3")


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden", "has space", "x" * 200])
def test_bad_sweep_names(name):
    with pytest.raises(SpecError, match="name: expected letters"):
        parse_spec(f'name = "{name}"')


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.toml")


def test_not_toml(write_spec):
    path = write_spec("this is = = not toml\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: not valid TOML")
    assert "\n" not in str(info.value)


def test_binary_file(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SpecError, match="UTF-8"):
        load_spec(path)


def test_a_run_id_tells_apart_sections_that_compare_equal_but_print_apart():
    """1 == 1.0, but a config that says 1 is not the config that says 1.0: the cached
    section configs behind run_id must not hand one the other's JSON."""
    base = RunSpec(Experiment.TRAIN, DataSpec(), ModelSpec(), TrainSpec())
    as_float = dataclasses.replace(base, train=dataclasses.replace(base.train, lr=1.0))
    as_int = dataclasses.replace(base, train=dataclasses.replace(base.train, lr=1))
    assert as_float.train == as_int.train
    assert '"lr":1.0' in as_float.canonical_json() and '"lr":1,' in as_int.canonical_json()
    assert as_float.run_id != as_int.run_id
    for run in (as_float, as_int, base):  # the cached text is json.dumps of the whole config
        assert run.canonical_json() == json.dumps(run.to_config(), sort_keys=True, separators=(",", ":"))


def test_runs_that_differ_only_in_their_seed_share_what_their_sections_fix():
    """``RunSpec.shared``: one dict for the runs holding the same section objects (a grid of
    seeds), another for equal but separate objects; each run's JSON is still its own."""
    base = RunSpec(Experiment.TRAIN, DataSpec(), ModelSpec(depth=3, width=5), TrainSpec())
    seeds = [dataclasses.replace(base, seed=s) for s in (0, 7, 12345)]
    assert all(r.shared() is base.shared() for r in seeds)
    copy = dataclasses.replace(base, data=dataclasses.replace(base.data), seed=7)
    assert copy.shared() is not base.shared() and copy.run_id == seeds[1].run_id
    for run in seeds:
        assert run.canonical_json() == json.dumps(run.to_config(), sort_keys=True, separators=(",", ":"))
    assert len({r.run_id for r in seeds}) == 3
    from theoryscope.sweeps.plan import family_key
    assert family_key(seeds[2]) is family_key(seeds[0]) and family_key(copy) == family_key(base)


def test_a_directory_is_not_a_spec(tmp_path):
    with pytest.raises(SpecError, match="is a directory; give the spec file"):
        load_spec(tmp_path)


def test_a_byte_order_mark_is_not_part_of_the_spec(tmp_path):
    """Some editors start UTF-8 files with U+FEFF; TOML does not allow it, so it is dropped."""
    path = tmp_path / "spec.toml"
    path.write_bytes('\ufeffname = "bom"\n'.encode("utf-8"))
    spec = load_spec(path)
    assert spec.name == "bom" and not spec.source.startswith("\ufeff")


def test_an_unreadable_spec_is_one_error_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "spec.toml"
    path.write_text('name = "x"\n')

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(path), "read_text", denied)
    with pytest.raises(SpecError, match=r"spec.toml: cannot read the spec \(Permission denied\)"):
        load_spec(path)


ACCELERATION = """
name = "acc"
experiment = "{experiment}"
[data]
kind = "{kind}"
[model]
kind = "linear"
{model}
[train]
optimizer = "gd"
[grid]
depth = [1, 2]
{grid}
"""


@pytest.mark.parametrize("experiment, kind", [("acceleration", "lp-regression"), ("linear-dynamics", "teacher-student")])
def test_end_to_end_experiments_default_to_a_balanced_start(experiment, kind):
    """`model.init` defaults to nn.Linear's init, which these experiments refuse: their
    own default is "balanced"; a value the spec sets or sweeps stays."""
    def init_of(model="", grid=""):
        spec = parse_spec(ACCELERATION.format(experiment=experiment, kind=kind, model=model, grid=grid))
        return spec.model.init.value, dict(spec.grid).get("model.init")

    assert init_of() == ("balanced", None)
    assert init_of(model='init = "identity"') == ("identity", None)
    swept = parse_spec(ACCELERATION.format(experiment=experiment, kind=kind, model="",
                                           grid='"model.init" = ["identity", "balanced"]'))
    assert [v.value for v in dict(swept.grid)["model.init"]] == ["identity", "balanced"]
    assert parse_spec('name = "t"').model.init.value == "default"  # experiment "train" keeps its default

"""CNN families on the spine (model.kind = "cnn"): a family trains as its members would
alone, a sweep of them launches, keeps its weights and refuses what cannot work."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import Interrupting, invoke, one_line_error
from theoryscope import weights
from theoryscope.core.config import REAL_DATA
from theoryscope.core.data import make_dataset
from theoryscope.core.train import train_family
from theoryscope.sweeps.checkpoints import Checkpointer
from theoryscope.sweeps.load import parse_spec
from theoryscope.sweeps.plan import plan_sweep
from theoryscope.sweeps.tables import run_query
from theoryscope.sweeps.weights import init as init_of_run

CNN_SPEC = """
name = "cnn"

[data]
kind = "digits"
n_train = 60
n_test = 40
label_noise = 0.2

[model]
kind = "cnn"
width = 3
bias = true

[train]
optimizer = "gd"
steps = 6
log_every = 3
dtype = "float64"

[grid]
depth = [2]
"train.lr" = [0.05, 0.2]
seed = [0, 1]
"""


def alone(run, steps: int) -> list[float]:
    """One member trained by itself with torch.nn modules and torch.optim.SGD (full-batch
    gradient descent on the mean cross-entropy): its training loss at every step."""
    start = init_of_run(run)
    layers: list[nn.Module] = []
    for i, w in enumerate(start.convs):
        conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], padding=w.shape[2] // 2, dtype=torch.float64)
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(start.conv_biases[i])
        layers += [conv, nn.ReLU(), nn.MaxPool2d(run.model.pool)]
    head = nn.Linear(start.head.shape[1], start.head.shape[0], dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(start.head)
        head.bias.copy_(start.head_bias)
    net = nn.Sequential(*layers, nn.Flatten(), head)
    data = make_dataset(run.data)
    x = data.x_train.view(-1, *REAL_DATA[run.data.kind].image)
    optimizer = torch.optim.SGD(net.parameters(), lr=run.train.lr)
    losses = []
    for _ in range(steps + 1):
        loss = nn.functional.cross_entropy(net(x), data.y_train)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return losses


def test_a_cnn_family_trains_exactly_as_its_members_alone():
    runs = plan_sweep(parse_spec(CNN_SPEC)).runs
    assert len(runs) == 4 and len({r.train.lr for r in runs}) == 2 and len({r.seed for r in runs}) == 2
    family = train_family(runs, torch.device("cpu"))
    for member, run in enumerate(runs):
        expected = alone(run, run.train.steps)
        got = family.train_loss[:, member]
        torch.testing.assert_close(torch.tensor(got), torch.tensor([expected[s] for s in family.steps], dtype=torch.float64),
                                   rtol=1e-10, atol=1e-12)


def test_a_cnn_sweep_launches_and_its_kept_weights_give_its_test_loss(write_spec, results):
    spec = write_spec(CNN_SPEC.replace('dtype = "float64"', 'dtype = "float64"\n\n[store]\nweights = true'))
    done = invoke("launch", spec, "--results", results, "--backend", "local")
    assert done.exit_code == 0, done.output
    rows = run_query(results, "SELECT run_id, test_loss, kernel_size, pool, width FROM runs ORDER BY run_id").to_pylist()
    assert len(rows) == 4 and {(r["kernel_size"], r["pool"], r["width"]) for r in rows} == {(3, 2, 3)}
    for row in rows:
        run = weights.run_spec(results, "cnn", row["run_id"])
        net = weights.load(results, "cnn", row["run_id"])
        data = make_dataset(run.data)
        out = weights.outputs(net, data.x_test.view(-1, *REAL_DATA[run.data.kind].image), pool=run.model.pool)
        loss = nn.functional.cross_entropy(out, data.y_test).item()
        assert loss == pytest.approx(row["test_loss"], rel=1e-9)
        assert [tuple(w.shape) for w in net.convs] == [(3, 1, 3, 3), (3, 3, 3, 3)]
        assert tuple(net.head.shape) == (10, 3 * 2 * 2)  # 8x8 digits pooled twice to 2x2


@pytest.mark.parametrize("change, key", [
    (('kind = "digits"', 'kind = "teacher-student"'), "model.kind"),
    (("width = 3", "width = 3\nkernel_size = 9"), "model.kernel_size"),
    (("width = 3", "width = 3\npool = 3"), "model.pool"),
    (("width = 3", "width = 3\nkernel_size = 4"), "model.kernel_size"),
    (("[grid]", '[measure]\nvalleys = true\n\n[grid]'), "measure.valleys"),
])
def test_what_a_cnn_cannot_do_is_one_line_naming_the_key(write_spec, results, change, key):
    spec = write_spec(CNN_SPEC.replace(*change))
    line = one_line_error(invoke("launch", spec, "--results", results, "--backend", "local"))
    assert f"{spec}: " in line and key in line
    assert not results.exists()


def test_an_mlp_run_keeps_its_id_beside_the_cnn_fields():
    """kernel_size and pool apply to CNNs only: an MLP's id and config do not see them."""
    base = parse_spec('name = "m"\n[model]\nkind = "mlp"\n').base_run()
    swept = parse_spec('name = "m"\n[model]\nkind = "mlp"\nkernel_size = 5\npool = 1\n').base_run()
    assert base.run_id == swept.run_id and "kernel_size" not in base.to_config()["model"]


INVERTIBLE = CNN_SPEC.replace("bias = true", "bias = false").replace(
    "[grid]", "[measure]\ninvertibility = { samples = 16, draws = 32, iht_steps = 50 }\n\n[grid]").replace(
    "steps = 6", "steps = 20").replace("log_every = 3", "log_every = 10")


def test_an_invertibility_sweep_writes_a_row_per_layer_and_step_and_draws_its_figure(write_spec, results, tmp_path):
    """Two conv layers, the init and the end of training, four runs: 16 rows, whose
    first layer's numbers at the init are what the core functions give on that layer
    (recomputed here from the run's seed and data)."""
    from theoryscope.core.measures import invertibility as gilbert

    spec = write_spec(INVERTIBLE)
    assert invoke("launch", spec, "--results", results, "--backend", "local").exit_code == 0
    rows = run_query(results, "SELECT * FROM invertibility ORDER BY run_id, step, layer").to_pylist()
    assert len(rows) == 4 * 2 * 2 and {(r["step"], r["layer"]) for r in rows} == {(0, 1), (0, 2), (20, 1), (20, 2)}
    assert all(0 <= r["sign_pair_fraction"] <= 1 and 0 < r["pooled_density"] <= 1 for r in rows)
    assert all(r["delta_k"] >= 0 and r["k"] >= 1 and r["iht_iterations"] >= 1 for r in rows)
    first = rows[0]
    run = weights.run_spec(results, "cnn", first["run_id"])
    start = init_of_run(run)
    w = start.convs[0][None]
    x = make_dataset(run.data).x_train[:16].view(1, 16, *REAL_DATA[run.data.kind].image)
    pairs = gilbert.sign_pairs(w, 0.9)
    assert first["sign_pair_fraction"] == pytest.approx(pairs.fraction.item())
    assert first["sign_pair_cosine"] == pytest.approx(pairs.cosine.mean().item(), rel=1e-6)
    pooled = gilbert.relu_pool(w, x, 2)
    assert first["blocks"] == pytest.approx(pooled.blocks.double().mean().item())
    assert first["pooled_density"] == pytest.approx(pooled.density.mean().item())
    report = invoke("report", "cnn", "--results", results, "--out", tmp_path / "report")
    assert report.exit_code == 0 and (tmp_path / "report" / "invertibility.png").exists()


def test_invertibility_is_refused_on_an_mlp_and_with_biases(write_spec, results):
    mlp = write_spec('name = "m"\n[data]\nkind = "digits"\nn_train = 100\nn_test = 100\n[model]\nkind = "mlp"\n[measure]\ninvertibility = true\n')
    assert 'measure.invertibility: measures model.kind = "cnn", not "mlp"' in one_line_error(invoke("plan", mlp))
    biased = write_spec(INVERTIBLE.replace("bias = false", "bias = true"), name="b.toml")
    assert "set model.bias = false" in one_line_error(invoke("plan", biased))


def test_a_cnn_family_continued_from_its_checkpoint_equals_an_uninterrupted_one(tmp_path):
    runs = plan_sweep(parse_spec(CNN_SPEC.replace('optimizer = "gd"', 'optimizer = "sgd"\nbatch_size = 16\n'
                                                  'momentum = 0.9').replace("steps = 6", "steps = 20"))).runs
    whole = train_family(runs, torch.device("cpu"))
    path = tmp_path / "family.pt"
    with pytest.raises(KeyboardInterrupt):
        train_family(runs, torch.device("cpu"), Interrupting(path, every_steps=7, after=2))
    continued = train_family(runs, torch.device("cpu"), Checkpointer(path, every_steps=7))
    assert (continued.train_loss == whole.train_loss).all() and (continued.test_error == whole.test_error).all()
    assert all(torch.equal(a, b) for a, b in zip(continued.params.tensors(), whole.params.tensors()))


CUSHIONED = CNN_SPEC.replace("[grid]", "[measure]\ncushions = { max_samples = 16, draws = 8, steps = [0], "
                                       "compression_k = [2, 0, 60], compression_p = 4 }\n\n[grid]")


def test_a_cnn_cushions_sweep_gives_theorem_5_1_per_layer_and_net(write_spec, results, tmp_path):
    """Arora et al.'s Section 5 on CNNs: a row per run, step and layer (two convs and the
    head), whose first layer's cushion at the init is what core computes on the run's own
    init; q is Theorem 5.1's, with beta^2 k^2 beside each conv layer's term; a conv
    layer Matrix-Project-Conv compresses keeps k p numbers, the head k."""
    from theoryscope.core.measures import conv_cushion

    spec = write_spec(CUSHIONED)
    assert invoke("launch", spec, "--results", results, "--backend", "local").exit_code == 0
    layers = run_query(results, "SELECT * FROM layers ORDER BY run_id, step, layer").to_pylist()
    assert len(layers) == 4 * 2 * 3
    assert [(r["kernel_size"], r["fan_in"], r["fan_out"]) for r in layers[:3]] == [(3, 9, 3), (3, 27, 3), (None, 12, 10)]
    assert all(r["jacobian_spread"] >= 1 for r in layers) and all(r["jacobian_spread"] == 1 for r in layers[2::3])
    first = layers[0]
    run = weights.run_spec(results, "cnn", first["run_id"])
    start = init_of_run(run)
    family = type(start)([w[None] for w in start.convs], start.head[None], [b[None] for b in start.conv_biases],
                         start.head_bias[None])
    x = make_dataset(run.data).x_train[:16].view(1, 16, *REAL_DATA[run.data.kind].image)
    passed = conv_cushion.forward_pass(family, x, run.model.pool)
    assert first["layer_cushion"] == pytest.approx(conv_cushion.layer_cushion(family, passed)[0, 0].min().item())
    assert first["interlayer_cushion"] == pytest.approx(
        conv_cushion.interlayer_cushions(family, passed)[0, 0].min().item())
    bounds = run_query(results, "SELECT * FROM bounds ORDER BY run_id, step").to_pylist()
    assert len(bounds) == 4 * 2
    for b, mine in zip(bounds, (layers[i:i + 3] for i in range(0, len(layers), 3))):
        beta = b["jacobian_spread"]
        assert beta == max(r["jacobian_spread"] for r in mine)
        terms = sum(beta**2 * (r["kernel_size"] or 1) ** 2 / (r["layer_cushion"] ** 2 * r["interlayer_cushion"] ** 2)
                    for r in mine)
        q = b["activation_contraction"] ** 2 * 3**2 * b["max_output_norm"] ** 2 * terms / b["margin"] ** 2
        assert b["effective_params"] == pytest.approx(q, rel=1e-9)
        assert b["params"] == 27 + 81 + 120 and b["compressed_params"] == 2 * 4 + 81 + 60
        assert [r["compressed"] for r in mine] == [True, False, True]
        assert [r["compression_params"] for r in mine] == [8, 81, 60]
        assert 0 < mine[0]["compression_layer_error"] and 0 < mine[0]["compression_expected_error"]
    report = invoke("report", "cnn", "--results", results, "--out", tmp_path / "report")
    assert report.exit_code == 0 and (tmp_path / "report" / "cushions.png").exists()


def test_a_cnns_compression_k_counts_its_head(write_spec, results):
    spec = write_spec(CUSHIONED.replace("[2, 0, 60]", "[20, 60]"))
    line = one_line_error(invoke("plan", spec))
    assert "compression_k: a list of 2 integers (one per layer) needs every net to have depth 1 (its conv layers " \
           "and the head)" in line
    mixed = write_spec(CUSHIONED.replace("depth = [2]", 'depth = [2]\n"model.kind" = ["mlp", "cnn"]'), name="mixed.toml")
    assert "and [grid] sweeps model.kind over CNNs and MLPs" in one_line_error(invoke("plan", mixed))


def test_the_cushions_figure_says_which_layers_are_convs_and_which_the_head():
    from theoryscope.sweeps.measures.cushions import draw_cushions

    rows = [{"depth": d, "label_noise": n, "layer": layer, "kernel_size": None if layer == d + 1 else 3,
             "layer_cushion": 0.5} for d in (1, 2) for n in (0.0, 0.4) for layer in range(1, d + 2)]
    fig = draw_cushions(rows, ("depth", "label_noise"))
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert titles == ["layer 1 (conv)", "layer 2 (conv or head)", "layer 3 (head)"]
    dense = [dict(r, kernel_size=None) for r in rows]
    assert [ax.get_title() for ax in draw_cushions(dense, ("depth", "label_noise")).axes
            if ax.get_visible() and ax.get_title()] == ["layer 1", "layer 2", "layer 3"]


def test_cushions_that_would_hold_too_many_maps_are_refused_with_the_max_samples_that_fit(monkeypatch):
    """Per measured sample a depth-2, width-3 CNN on the digits holds 64 + 3 (64 + 16) +
    3 (16 + 4) = 364 numbers (float64 here): 60 samples are 174,720 bytes."""
    from theoryscope.core.errors import SpecError
    from theoryscope.sweeps.measures import cushions

    monkeypatch.setattr(cushions, "CONV_MAPS_BYTES", 100_000)
    with pytest.raises(SpecError, match=r"measure\.cushions: a CNN's measures hold every layer's maps for the 60 "
                                        r"measured samples, 0\.0 GiB per net at depth 2, width 3; set "
                                        r"measure\.cushions\.max_samples to at most 34"):
        parse_spec(CUSHIONED.replace("max_samples = 16, ", ""))
    assert parse_spec(CUSHIONED.replace("max_samples = 16", "max_samples = 34")).measure.cushions.max_samples == 34

"""HAT (SPG spec §8.4): the Gate layer, the per-task embedding rewrite, the pure pieces of the
mechanism against hand-computed values, state in the net and store (snapshot, resume), and
near-zero forgetting on real split Fashion-MNIST."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from jointnet import backbones, snapshot
from jointnet.execution.compile import compile_net
from jointnet.errors import JointNetError, RewriteError, SpecError
from jointnet.graph.layers import Gate, spec_from_dict, spec_to_dict
from jointnet.graph.net import TensorRef
from jointnet.execution.store import ParamStore
from jointnet.graph import add_head, add_task, add_task_embedding, annotate, bind
from jointnet.experiments.runner import RunSpec, resume, run
from jointnet.experiments.trainer import TrainConfig
from strategies.base import RunState, get
from strategies.hat import (
    CUM_MASK,
    HAT,
    anneal_s,
    commit_masks,
    compensation,
    conditioning,
    cumulative_mask,
    embedding_key,
    gate_neighbours,
    gated_layers,
    gates_on_route,
    hat_regulariser,
)

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _quiet(_msg):
    pass


def _gated_net(layers, input_shape, tasks=("t1",), n_classes=3):
    """A HAT-style net: gated backbone for the first task, later tasks bound to it; every task
    has its own embedding on every gate."""
    first, *rest = tasks
    net = backbones.build(gated_layers(layers), input_shape=input_shape, task=first, n_classes=n_classes)
    for t in rest:
        net = bind(add_task(net, task=t), task=t, to=first)
        net = add_head(net, task=t, n_classes=n_classes)
    for t in tasks:
        for g in gates_on_route(net, t):
            net = add_task_embedding(net, node=g, task=t)
    return net


def _conv_layers():
    # (1, 4, 4) -> conv(2) -> relu -> pool -> (2, 2, 2) -> gate1 -> flatten (8) -> fc(3) -> relu -> gate2
    return [{"kind": "conv", "out_ch": 2, "padding": 1}, {"kind": "relu"}, {"kind": "maxpool"},
            {"kind": "flatten"}, {"kind": "linear", "out_f": 3}, {"kind": "relu"}]


# ---- the Gate layer and its rewrite ---------------------------------------------------------


def test_gate_forward_is_x_times_sigmoid_s_e_on_flat_inputs():
    net = _gated_net([{"kind": "linear", "out_f": 5}, {"kind": "relu"}], (4,))
    store = ParamStore(seed=1).realize(net)
    m = compile_net(net, store, "t1")
    m.gate_s = 2.5
    x = torch.randn(7, 4)
    e = store[embedding_key(net, "t1", "gate1")]
    fc, head = net.params_for("t1", "fc1"), net.params_for("t1", "head.t1")
    h = F.relu(F.linear(x, store[fc["weight"][0][0].key], store[fc["bias"][0][0].key]))
    h = h * torch.sigmoid(2.5 * e)
    want = F.linear(h, store[head["weight"][0][0].key], store[head["bias"][0][0].key])
    torch.testing.assert_close(m(x), want)


def test_gate_broadcasts_over_spatial_axes_and_defaults_to_s_400():
    net = _gated_net(_conv_layers(), (1, 4, 4))
    store = ParamStore(seed=2).realize(net)
    m = compile_net(net, store, "t1", cache=False)
    assert m.gate_s == 400.0
    x = torch.rand(3, 1, 4, 4)
    conv = net.params_for("t1", "conv1")
    h = F.max_pool2d(F.relu(F.conv2d(x, store[conv["weight"][0][0].key], store[conv["bias"][0][0].key], 1, 1)), 2)
    e1 = store[embedding_key(net, "t1", "gate1")]
    gated = h * torch.sigmoid(400.0 * e1)[None, :, None, None]  # one gate value per feature map
    fc = net.params_for("t1", "fc1")
    z = F.relu(F.linear(gated.flatten(1), store[fc["weight"][0][0].key], store[fc["bias"][0][0].key]))
    z = z * torch.sigmoid(400.0 * store[embedding_key(net, "t1", "gate2")])
    head = net.params_for("t1", "head.t1")
    want = F.linear(z, store[head["weight"][0][0].key], store[head["bias"][0][0].key])
    torch.testing.assert_close(m(x), want)


def test_gate_spec_checks_its_width_and_round_trips():
    g = Gate(units=4)
    assert g.out_shape([(4, 3, 3)]) == (4, 3, 3)
    with pytest.raises(SpecError, match="expects 4 channels"):
        g.out_shape([(5,)])
    assert spec_from_dict(spec_to_dict(g)) == g
    assert g.params()["embedding"].shape == (4,) and g.n_params() == 4


def test_add_task_embedding_is_pure_owned_and_validated():
    net = backbones.build(gated_layers([{"kind": "linear", "out_f": 4}, {"kind": "relu"}]),
                          input_shape=(3,), task="t1", n_classes=2)
    net2 = add_task_embedding(net, node="gate1", task="t1")
    assert net2.version == net.version + 1 and net2.log[-1].name == "add_task_embedding"
    assert len(net.node("gate1").params) == 1  # input untouched
    p = net2.params_for("t1", "gate1")["embedding"][0][0]
    assert (p.task, p.owner, p.init.scheme) == ("t1", "t1", "normal")
    with pytest.raises(RewriteError, match="already has its own embedding on 'gate1'"):
        add_task_embedding(net2, node="gate1", task="t1")
    with pytest.raises(RewriteError, match="'fc1' is a Linear; only Gate nodes"):
        add_task_embedding(net2, node="fc1", task="t1")
    with pytest.raises(RewriteError, match="no task 't9'"):
        add_task_embedding(net2, node="gate1", task="t9")
    # Other tasks are not affected: t2 keeps the shared default until it gets its own.
    net3 = bind(add_task(net2, task="t2"), task="t2", to="t1")
    assert net3.params_for("t2", "gate1")["embedding"][0][0].task is None


def test_gated_layers_places_gates_after_blocks():
    kinds = [backbones._kind(i) for i in gated_layers(backbones.small_conv(widths=(4, 8), hidden=16))]
    assert kinds == ["input", "Conv2d", "ReLU", "MaxPool2d", "Gate", "Conv2d", "ReLU", "MaxPool2d", "Gate",
                     "Flatten", "Linear", "ReLU", "Gate"]
    mlp = [{"kind": "input", "shape": (1, 28, 28)}, {"kind": "flatten"}, {"kind": "linear", "out_f": 8},
           {"kind": "relu"}, {"kind": "dropout", "p": 0.5}, {"kind": "linear", "out_f": 8}, {"kind": "relu"}]
    assert [backbones._kind(i) for i in gated_layers(mlp)] == [
        "input", "Flatten", "Linear", "ReLU", "Dropout", "Gate", "Linear", "ReLU", "Gate"]
    with pytest.raises(JointNetError, match="non-sequential"):
        gated_layers(backbones.resnet_tiny())


# ---- the pure pieces, by hand ---------------------------------------------------------------


def test_anneal_s_runs_from_one_over_s_max_towards_s_max():
    assert anneal_s(0, 8, 400.0) == pytest.approx(1 / 400)
    assert anneal_s(4, 8, 400.0) == pytest.approx(1 / 400 + (400 - 1 / 400) / 2)
    assert anneal_s(8, 8, 400.0) == pytest.approx(400.0)


def test_regulariser_is_the_gate_mean_first_then_weighted_by_free_units():
    a = [torch.tensor([0.2, 0.8]), torch.tensor([1.0])]
    zeros = [torch.zeros(2), torch.zeros(1)]
    assert float(hat_regulariser(a, zeros)) == pytest.approx((0.2 + 0.8 + 1.0) / 3)
    cums = [torch.tensor([1.0, 0.5]), torch.tensor([0.0])]
    want = (0.2 * 0.0 + 0.8 * 0.5 + 1.0 * 1.0) / (0.0 + 0.5 + 1.0)
    assert float(hat_regulariser(a, cums)) == pytest.approx(want)
    assert float(hat_regulariser(a, [torch.ones(2), torch.ones(1)])) == 0.0  # nothing free


def test_compensation_factor_by_hand():
    e, s, s_max = torch.tensor([0.1, -0.2, 3.0]), 20.0, 400.0
    got = compensation(e, s, s_max).tolist()
    for v, g in zip([0.1, -0.2, 3.0], got):
        want = (s_max / s) * (math.cosh(max(-50.0, min(50.0, s * v))) + 1) / (math.cosh(v) + 1)
        assert g == pytest.approx(want, rel=1e-5)


def _set_cum(net, store, gate, values):
    key = f"test.{gate}.cum"
    store.put(key, torch.tensor(values), trainable=False)
    return annotate(net, node=gate, key=CUM_MASK, value=TensorRef(key))


def test_conditioning_factors_by_hand_on_a_tiny_conv_net():
    net = _gated_net(_conv_layers(), (1, 4, 4), tasks=("t1", "t2"))
    store = ParamStore(seed=0).realize(net)
    assert conditioning(net, store, "t2") == {}  # no cumulative mask yet: nothing conditioned
    assert gate_neighbours(net, "t2", "conv1") == (None, "gate1", 1)
    assert gate_neighbours(net, "t2", "fc1") == ("gate1", "gate2", 4)  # 2x2 positions per channel
    g1, g2 = [1.0, 0.25], [0.0, 0.5, 1.0]
    net = _set_cum(_set_cum(net, store, "gate1", g1), store, "gate2", g2)
    f = conditioning(net, store, "t2")
    key = {(n, name): net.params_for("t2", n)[name][0][0].key for n in ("conv1", "fc1") for name in ("weight", "bias")}
    assert set(f) == set(key.values())  # heads and gates are not conditioned
    # conv1: the image is not gated, so the output gate alone: 1 - a_post[i].
    w = f[key["conv1", "weight"]].expand(2, 1, 3, 3)
    for i in range(2):
        assert torch.all(w[i] == 1 - g1[i])
    assert f[key["conv1", "bias"]].tolist() == [1 - v for v in g1]
    # fc1 after Flatten: input j comes from channel j // 4 of gate1.
    w = f[key["fc1", "weight"]].expand(3, 8)
    for i in range(3):
        for j in range(8):
            assert float(w[i, j]) == pytest.approx(1 - min(g2[i], g1[j // 4]))
    assert f[key["fc1", "bias"]].tolist() == [1 - v for v in g2]


def test_hooks_condition_compensate_clip_and_clamp():
    net = _gated_net(_conv_layers(), (1, 4, 4), tasks=("t1", "t2"))
    store = ParamStore(seed=0).realize(net)
    net = _set_cum(_set_cum(net, store, "gate1", [1.0, 0.0]), store, "gate2", [0.0, 1.0, 1.0])
    state = RunState(net=net, store=store, stream=None, config=TrainConfig(lr=0.1))
    hooks = HAT(clip_grad=None).hooks(state, type("T", (), {"name": "t2"})(), 1)
    module = compile_net(net, store, "t2")
    hooks.batch_context(module, {"training": True, "batch": 3, "n_batches": 6, "epoch": 0})
    s = anneal_s(3, 6, 400.0)
    assert module.gate_s == hooks.s == pytest.approx(s)
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    e = store[embedding_key(net, "t2", "gate1")]
    before = e.detach().clone()
    hooks.transform_grads(module, {})
    w = store[net.params_for("t2", "fc1")["weight"][0][0].key]
    # Inputs 0..3 come from gate1's used channel 0, inputs 4..7 from its unused channel 1.
    assert w.grad[1].tolist() == [0.0] * 4 + [1.0] * 4  # used -> used: blocked; free input: free
    assert w.grad[0].tolist() == [1.0] * 8  # post unit 0 unused -> free
    torch.testing.assert_close(e.grad, compensation(before, s, 400.0))
    head = store[net.params_for("t2", "head.t2")["weight"][0][0].key]
    assert torch.all(head.grad == 1)  # heads are not conditioned
    with torch.no_grad():
        e.fill_(9.0)
    hooks.after_step(module, {})
    assert torch.all(e == 6.0)
    hooks.batch_context(module, {"training": False, "batch": 0, "n_batches": 1, "epoch": 0})
    assert module.gate_s == 400.0
    # clip_grad clips the total norm of the trained tensors (e = 0: compensation 1 at s_max).
    clip = HAT(clip_grad=1.0).hooks(state, type("T", (), {"name": "t2"})(), 1)
    with torch.no_grad():
        for emb in clip.embeddings:
            emb.zero_()
    for p in module.parameters():
        p.grad = torch.ones_like(p) * 100
    clip.transform_grads(module, {})
    assert torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in clip.params])) == pytest.approx(1.0, rel=1e-4)


def test_regulariser_in_the_hook_uses_the_previous_cumulative_masks():
    net = _gated_net([{"kind": "linear", "out_f": 2}, {"kind": "relu"}], (3,), tasks=("t1", "t2"))
    store = ParamStore(seed=0).realize(net)
    net = _set_cum(net, store, "gate1", [1.0, 0.0])
    state = RunState(net=net, store=store, stream=None, config=TrainConfig())
    hooks = HAT(c=0.5).hooks(state, type("T", (), {"name": "t2"})(), 1)
    hooks.s = 3.0
    e = store[embedding_key(net, "t2", "gate1")].detach()
    want = 0.5 * float(torch.sigmoid(3.0 * e[1]))  # only the free unit counts
    assert float(hooks.extra_loss(None, None, None, None, {}).detach()) == pytest.approx(want)


def test_cumulative_mask_is_the_running_max_of_the_gates_at_s_max():
    net = _gated_net([{"kind": "linear", "out_f": 3}, {"kind": "relu"}], (2,), tasks=("t1", "t2"))
    store = ParamStore(seed=0).realize(net)
    e1, e2 = torch.tensor([0.01, -0.02, 0.0]), torch.tensor([-0.01, 0.001, 0.003])
    with torch.no_grad():
        store[embedding_key(net, "t1", "gate1")].copy_(e1)
        store[embedding_key(net, "t2", "gate1")].copy_(e2)
    net1 = commit_masks(net, store, "t1", 400.0)
    torch.testing.assert_close(cumulative_mask(net1, store, "gate1"), torch.sigmoid(400 * e1))
    net2 = commit_masks(net1, store, "t2", 400.0)
    want = torch.maximum(torch.sigmoid(400 * e1), torch.sigmoid(400 * e2))
    torch.testing.assert_close(cumulative_mask(net2, store, "gate1"), want)
    # The old version still points at the old mask: the update made a new tensor.
    torch.testing.assert_close(cumulative_mask(net1, store, "gate1"), torch.sigmoid(400 * e1))
    assert net2.annotations["hat"]["tasks"] == ("t1", "t2")


# ---- state lives in the net and the store ---------------------------------------------------

SYN = {"n_tasks": 3, "input_shape": (1, 8, 8), "n_train_per_class": 40, "n_test_per_class": 20, "noise": 0.5}
SYN_BACKBONE = [{"kind": "input", "shape": (1, 8, 8)}, *_conv_layers()]


def _syn_spec(epochs=2):
    return RunSpec("hat", "synthetic", seed=1, stream_options=SYN,
                   strategy_options={"backbone": SYN_BACKBONE}, config={"epochs": epochs, "momentum": 0.0})


def test_state_survives_a_snapshot_round_trip(tmp_path):
    res = run(_syn_spec(), tmp_path / "a", echo=_quiet)
    net, store = snapshot.load(tmp_path / "a" / res["snapshots"][1])  # after t2
    net2, store2 = snapshot.loads(snapshot.dumps(net, store))
    assert net2 == net
    for g in gates_on_route(net, "t2"):
        torch.testing.assert_close(cumulative_mask(net2, store2, g), cumulative_mask(net, store, g))
        assert cumulative_mask(net2, store2, g) is not None
    f, f2 = conditioning(net, store, "t2"), conditioning(net2, store2, "t2")
    assert f.keys() == f2.keys() and all(torch.equal(f[k], f2[k]) for k in f)
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(compile_net(net2, store2, "t1")(x), compile_net(net, store, "t1")(x), rtol=0, atol=0)


def test_resume_after_the_first_task_gives_the_same_results(tmp_path):
    full = run(_syn_spec(), tmp_path / "full", echo=_quiet)
    part = run(_syn_spec(), tmp_path / "part", echo=_quiet)
    # Pretend the run crashed after task 1: keep only its first task's results.
    path = tmp_path / "part" / "results.json"
    r = json.loads(path.read_text())
    for k in ("matrix", "params", "wall_time", "epochs", "snapshots"):
        r[k] = r[k][:1]
    r["done"] = 1
    path.write_text(json.dumps(r))
    resumed = resume(tmp_path / "part", echo=_quiet)
    assert resumed["matrix"] == full["matrix"] == part["matrix"]
    assert full["metrics"]["BWT"] > -0.02


def test_hat_is_registered_and_validates_options():
    assert isinstance(get("hat", s_max=100, c=0.5), HAT)
    with pytest.raises(JointNetError, match="bad options"):
        get("hat", s_max=0)
    with pytest.raises(JointNetError, match="bad options"):
        get("hat", smax=400)


# ---- forgetting on real data ----------------------------------------------------------------


def test_hat_barely_forgets_on_split_fmnist_while_finetune_does(tmp_path):
    """Real Fashion-MNIST: this test fails (never skips) when the data is missing."""
    assert FMNIST.is_dir(), f"Fashion-MNIST is missing at {FMNIST} (Debian package dataset-fashion-mnist)"
    stream = {"n_tasks": 3, "n_train_per_task": 1000, "n_test_per_task": 500}
    config = {"epochs": 3, "momentum": 0.0}
    hat = run(RunSpec("hat", "split-fmnist", stream_options=stream, config=config), tmp_path / "hat", echo=_quiet)
    ft = run(RunSpec("finetune", "split-fmnist", stream_options=stream, config=config), tmp_path / "ft", echo=_quiet)
    assert hat["metrics"]["BWT"] > -0.02, hat["matrix"]
    assert ft["metrics"]["BWT"] < hat["metrics"]["BWT"] - 0.05, (ft["matrix"], hat["matrix"])
    assert min(hat["matrix"][i][i] for i in range(3)) > 0.85  # it still learns every task

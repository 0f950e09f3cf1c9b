"""HAT (SPG spec §8.4): the Gate layer, the per-task embedding rewrite, the pure pieces of the
mechanism against hand-computed values, the conditioning as a train-policy gradient rule (and
its arithmetic against the pre-Core-2 hook, bit for bit), state in the net and store (snapshot,
resume), and near-zero forgetting on real split Fashion-MNIST."""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import strategies.hat
from jointnet import backbones, snapshot
from jointnet.errors import RewriteError, SpecError, StrategyError
from jointnet.execution.compile import compile_net
from jointnet.execution.optim import train_plan
from jointnet.execution.program import Context, task_context
from jointnet.execution.store import ParamStore
from jointnet.experiments.runner import RunSpec, resume, run, run_tasks
from jointnet.experiments.strategy import get
from jointnet.experiments.streams import get_stream
from jointnet.experiments.trainer import Hooks, TrainConfig, train_task
from jointnet.graph import add_head, add_task, add_task_embedding, annotate, bind, clear_grad_rules, own_param
from jointnet.graph.layers import Gate, spec_from_dict, spec_to_dict
from jointnet.graph.net import GradRule, JointNet, TensorRef
from strategies.hat import (
    CUM_MASK, HAT, PROVIDER, anneal_s, commit_masks, compensation, conditioned_params, conditioning,
    cumulative_mask, embedding_key, gate_neighbours, gated_layers, gates_on_route, hat_regulariser,
    param_factor,
)

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _quiet(_msg):
    pass


def _gated_net(layers, input_shape, tasks=("t1",), n_classes=3):
    """A HAT-style net: gated backbone for the first task, later tasks bound to it; every task
    has its own embedding on every gate. No train policy (see `_hat_net`)."""
    first, *rest = tasks
    net = backbones.build(gated_layers(layers), input_shape=input_shape, task=first, n_classes=n_classes)
    for t in rest:
        net = bind(add_task(net, task=t), task=t, to=first)
        net = add_head(net, task=t, n_classes=n_classes)
    for t in tasks:
        for g in gates_on_route(net, t):
            net = add_task_embedding(net, node=g, task=t)
    return net


def _hat_net(strategy, input_shape, tasks=("t1", "t2"), n_classes=3):
    """The net `strategy.prepare` builds for `tasks` (gates, embeddings, heads, "hat" rules)."""
    net = JointNet.empty()
    for t in tasks:
        net = strategy.prepare(net, t, n_classes, input_shape)
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
    assert not hasattr(m, "gate_s")  # the scale comes with the call's Context
    x = torch.randn(7, 4)
    e = store[embedding_key(net, "t1", "gate1")]
    fc, head = net.params_for("t1", "fc1"), net.params_for("t1", "head.t1")
    h = F.relu(F.linear(x, store[fc["weight"][0][0].key], store[fc["bias"][0][0].key]))
    h = h * torch.sigmoid(2.5 * e)
    want = F.linear(h, store[head["weight"][0][0].key], store[head["bias"][0][0].key])
    torch.testing.assert_close(m(x, Context(gate_scale=2.5)), want)


def test_gate_broadcasts_over_spatial_axes_and_defaults_to_s_400():
    net = _gated_net(_conv_layers(), (1, 4, 4))
    store = ParamStore(seed=2).realize(net)
    m = compile_net(net, store, "t1", cache=False)
    assert task_context(net, "t1").gate_scale == 400.0 and dict(net.tasks["t1"].context) == {}
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
    torch.testing.assert_close(m(x), want)  # no context: the task's recorded one, s = 400
    torch.testing.assert_close(m(x, Context(gate_scale=400.0)), want, rtol=0, atol=0)


def test_gate_spec_checks_its_width_and_round_trips():
    g = Gate(units=4)
    assert g.out_shape([(4, 3, 3)]) == (4, 3, 3)
    with pytest.raises(SpecError, match="expects 4 channels"):
        g.out_shape([(5,)])
    assert spec_from_dict(spec_to_dict(g)) == g
    assert g.params()["embedding"].shape == (4,) and g.n_params() == 4


def test_own_embedding_is_pure_owned_and_validated():
    net = backbones.build(gated_layers([{"kind": "linear", "out_f": 4}, {"kind": "relu"}]),
                          input_shape=(3,), task="t1", n_classes=2)
    net2 = own_param(net, node="gate1", task="t1", params=["embedding"], init="fresh")
    assert net2.version == net.version + 1 and net2.log[-1].name == "own_param"
    assert len(net.node("gate1").params) == 1  # input untouched
    p = net2.params_for("t1", "gate1")["embedding"][0][0]
    assert (p.task, p.owner, p.init.scheme) == ("t1", "t1", "normal")
    with pytest.raises(RewriteError, match="already has its own 'embedding' on 'gate1'"):
        own_param(net2, node="gate1", task="t1", params=["embedding"])
    with pytest.raises(RewriteError, match="'fc1' \\(Linear\\) has no parameter 'embedding'"):
        own_param(net2, node="fc1", task="t1", params=["embedding"])
    with pytest.raises(RewriteError, match="no task 't9'"):
        own_param(net2, node="gate1", task="t9", params=["embedding"])
    # Other tasks are not affected: t2 keeps the shared default until it gets its own.
    net3 = bind(add_task(net2, task="t2"), task="t2", to="t1")
    assert net3.params_for("t2", "gate1")["embedding"][0][0].task is None
    # The shorthand HAT uses logs under its own name and makes the same kind of variant.
    net4 = add_task_embedding(net, node="gate1", task="t1")
    assert net4.log[-1].name == "add_task_embedding"
    q = net4.params_for("t1", "gate1")["embedding"][0][0]
    assert (q.task, q.owner, q.init.scheme, q.shape) == ("t1", "t1", "normal", p.shape)
    with pytest.raises(RewriteError, match="'fc1' is a Linear; only Gate nodes hold task embeddings"):
        add_task_embedding(net4, node="fc1", task="t1")
    with pytest.raises(RewriteError, match="already has its own 'embedding' on 'gate1'"):
        add_task_embedding(net4, node="gate1", task="t1")


def test_gated_layers_places_gates_after_blocks():
    kinds = [backbones._kind(i) for i in gated_layers(backbones.small_conv(widths=(4, 8), hidden=16))]
    assert kinds == ["input", "Conv2d", "ReLU", "MaxPool2d", "Gate", "Conv2d", "ReLU", "MaxPool2d", "Gate",
                     "Flatten", "Linear", "ReLU", "Gate"]
    mlp = [{"kind": "input", "shape": (1, 28, 28)}, {"kind": "flatten"}, {"kind": "linear", "out_f": 8},
           {"kind": "relu"}, {"kind": "dropout", "p": 0.5}, {"kind": "linear", "out_f": 8}, {"kind": "relu"}]
    assert [backbones._kind(i) for i in gated_layers(mlp)] == [
        "input", "Flatten", "Linear", "ReLU", "Dropout", "Gate", "Linear", "ReLU", "Gate"]
    with pytest.raises(StrategyError, match="^hat: cannot insert gates into a non-sequential"):
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


def test_regulariser_in_the_hook_uses_the_previous_cumulative_masks():
    h = HAT(backbone=[{"kind": "input", "shape": (3,)}, {"kind": "linear", "out_f": 2}, {"kind": "relu"}], c=0.5)
    net = _hat_net(h, (3,))
    store = ParamStore(seed=0).realize(net)
    net = _set_cum(net, store, "gate1", [1.0, 0.0])
    hooks = h.hooks(net, store, "t2", lr=0.05)
    e = store[embedding_key(net, "t2", "gate1")].detach()
    want = 0.5 * float(torch.sigmoid(3.0 * e[1]))  # only the free unit counts
    got = hooks.extra_loss(None, None, None, None, {"gate_scale": 3.0})  # the batch's s, from `context`
    assert float(got.detach()) == pytest.approx(want)


def test_cumulative_mask_is_the_running_max_of_the_gates_at_s_max():
    net = _gated_net([{"kind": "linear", "out_f": 3}, {"kind": "relu"}], (2,), tasks=("t1", "t2"))
    store = ParamStore(seed=0).realize(net)
    e1, e2 = torch.tensor([0.01, -0.02, 0.0]), torch.tensor([-0.01, 0.001, 0.003])
    store.update(embedding_key(net, "t1", "gate1"), e1)
    store.update(embedding_key(net, "t2", "gate1"), e2)
    net1 = commit_masks(net, store, "t1", 400.0)
    torch.testing.assert_close(cumulative_mask(net1, store, "gate1"), torch.sigmoid(400 * e1))
    net2 = commit_masks(net1, store, "t2", 400.0)
    want = torch.maximum(torch.sigmoid(400 * e1), torch.sigmoid(400 * e2))
    torch.testing.assert_close(cumulative_mask(net2, store, "gate1"), want)
    # The old version still points at the old mask: the update made a new tensor.
    torch.testing.assert_close(cumulative_mask(net1, store, "gate1"), torch.sigmoid(400 * e1))
    assert net2.annotations["hat"]["tasks"] == ("t1", "t2")


# ---- the conditioning is train policy -------------------------------------------------------

CONV_BACKBONE = [{"kind": "input", "shape": (1, 4, 4)}, *_conv_layers()]


def test_prepare_puts_one_hat_rule_on_every_conditioned_parameter_for_every_task():
    h = HAT(backbone=CONV_BACKBONE)
    tasks = ("t1", "t2", "t3")
    net = _hat_net(h, (1, 4, 4), tasks=tasks)
    rule = GradRule("multiply", provider=PROVIDER)
    want = {"conv1": ["weight", "bias"], "fc1": ["weight", "bias"]}  # heads and gates are not conditioned
    for t in tasks:
        assert conditioned_params(net, t) == want
        for n in net.route(t):
            for name in net.node(n).spec.params():
                rules = net.policy_for(t, n).param(name).rules
                assert rules == ((rule,) if name in want.get(n, ()) else ()), (t, n, name)
    names = [r.name for r in net.log]
    assert names.count("set_grad_rule") == 1  # logged by the first task, for every task
    assert "set_context" not in names  # s_max = 400 is the Context default
    # The provider gives nothing before a task is done, then exactly `conditioning`'s factors.
    store = ParamStore(seed=0).realize(net)
    assert train_plan(net, store, "t1", 0.1).grad_mults == []
    assert train_plan(net, store, "t2", 0.1).grad_mults == []
    net = _set_cum(_set_cum(net, store, "gate1", [1.0, 0.25]), store, "gate2", [0.0, 0.5, 1.0])
    f = conditioning(net, store, "t2")
    mults = {id(t): m for t, m in train_plan(net, store, "t2", 0.1).grad_mults}
    assert len(f) == len(mults) == 4
    for key, factor in f.items():
        assert torch.equal(mults[id(store[key])], factor), key
    with pytest.raises(StrategyError, match="^hat, task 't1': the backbone has no Gate layers"):
        HAT(backbone=[{"kind": "input", "shape": (3,)}, {"kind": "linear", "out_f": 2}],
            insert_gates=False).prepare(JointNet.empty(), "t1", 2, (3,))


def test_inference_context_is_recorded_only_for_a_non_default_s_max():
    bb = [{"kind": "input", "shape": (3,)}, {"kind": "linear", "out_f": 4}, {"kind": "relu"}]
    net = _hat_net(HAT(backbone=bb, s_max=100), (3,))
    assert [r.name for r in net.log].count("set_context") == 2  # one per task
    store = ParamStore(seed=0).realize(net)
    for t in ("t1", "t2"):  # small embeddings, so that the scale shows in the outputs
        store.update(embedding_key(net, t, "gate1"), torch.tensor([-0.01, -0.003, 0.002, 0.01]))
    for t in ("t1", "t2"):
        assert task_context(net, t).gate_scale == 100.0
        m = compile_net(net, store, t)
        m.eval()
        x = torch.randn(5, 3)
        assert torch.equal(m(x), m(x, Context(gate_scale=100.0)))  # the default is the recorded s_max
        assert not torch.equal(m(x), m(x, Context(gate_scale=400.0)))
    hooks = HAT(backbone=bb, s_max=100).hooks(net, store, "t2", 0.05)
    ev = hooks.context({"training": False, "task": "t2"})
    assert not ev.training and ev.gate_scale == 100.0
    info = {"training": True, "batch": 1, "n_batches": 4, "epoch": 0, "task": "t2"}
    tr = hooks.context(info)
    assert tr.training and tr.gate_scale == info["gate_scale"] == anneal_s(1, 4, 100.0)


def test_policy_conditions_then_hooks_compensate_clip_and_clamp():
    h = HAT(backbone=CONV_BACKBONE, clip_grad=None)
    net = _hat_net(h, (1, 4, 4))
    store = ParamStore(seed=0).realize(net)
    net = _set_cum(_set_cum(net, store, "gate1", [1.0, 0.0]), store, "gate2", [0.0, 1.0, 1.0])
    hooks = h.hooks(net, store, "t2", lr=0.1)
    tp = train_plan(net, store, "t2", 0.1)
    module = compile_net(net, store, "t2")
    info = {"training": True, "batch": 3, "n_batches": 6, "epoch": 0, "task": "t2"}
    ctx = hooks.context(info)
    s = anneal_s(3, 6, 400.0)
    assert ctx.training and ctx.gate_scale == info["gate_scale"] == pytest.approx(s)
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    e = store[embedding_key(net, "t2", "gate1")]
    before = e.detach().clone()
    tp.before_step()  # the trainer's order: the policy's rules first, then the hooks
    hooks.transform_grads(module, info)
    w = store[net.params_for("t2", "fc1")["weight"][0][0].key]
    # Inputs 0..3 come from gate1's used channel 0, inputs 4..7 from its unused channel 1.
    assert w.grad[1].tolist() == [0.0] * 4 + [1.0] * 4  # used -> used: blocked; free input: free
    assert w.grad[0].tolist() == [1.0] * 8  # post unit 0 unused -> free
    torch.testing.assert_close(e.grad, compensation(before, s, 400.0))
    head = store[net.params_for("t2", "head.t2")["weight"][0][0].key]
    assert torch.all(head.grad == 1)  # heads are not conditioned
    store.update(embedding_key(net, "t2", "gate1"), torch.full_like(before, 9.0))
    hooks.after_step(module, info)
    assert torch.all(e == 6.0) and store[embedding_key(net, "t2", "gate1")] is e  # in place, same tensor
    ev = hooks.context({"training": False, "task": "t2"})
    assert not ev.training and ev.gate_scale == 400.0
    # clip_grad clips the total norm of the trained tensors (e = 0: compensation 1 at s_max).
    clip = HAT(backbone=CONV_BACKBONE, clip_grad=1.0).hooks(net, store, "t2", 0.1)
    for key, emb in clip.embeddings:
        store.update(key, torch.zeros_like(emb))
    for p in module.parameters():
        p.grad = torch.ones_like(p) * 100
    clip.transform_grads(module, {"gate_scale": 400.0})
    assert torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in clip.params])) == pytest.approx(1.0, rel=1e-4)


def _old_conditioning(net, store, task):
    """The multipliers of the pre-Core-2 `strategies.hat.conditioning`, re-implemented from it:
    every trainable tensor of a parametric trunk node gets ``1 - min(a_post[i], a_pre[j])``."""
    gates = gates_on_route(net, task)
    cums = {g: cumulative_mask(net, store, g) for g in gates}
    if all(c is None for c in cums.values()):
        return {}

    def cum(g):
        c = cums[g]
        return torch.zeros(net.node(g).spec.units, device=store.device) if c is None else c.detach()

    head = net.tasks[task].head
    out = {}
    for n in net.route(task):
        node = net.node(n)
        if n == head or node.kind in ("Gate", "Input"):
            continue
        grid = net.params_for(task, n)
        infos = net.effective_spec(task, n).params()
        trainable = {name: rows for name, rows in grid.items() if not infos[name].buffer}
        if not trainable:
            continue
        pre, post, repeat = gate_neighbours(net, task, n)
        a_post = cum(post)
        a_pre = None if pre is None else cum(pre).repeat_interleave(repeat)
        for name, rows in trainable.items():
            out[rows[0][0].key] = param_factor(infos[name], a_post, a_pre)
    return out


class _PreCore2Hooks(Hooks):
    """The pre-Core-2 `HATHooks`, re-implemented from the old code: the conditioning is a
    multiply in `transform_grads` (then compensation and clipping), the embeddings are clamped
    in place, the scale lives on the hooks (the old code also set it on the module)."""

    def __init__(self, *, embeddings, cums, factors, params, s_max, c, thres_cosh, emb_clamp, clip_grad):
        self.embeddings, self.cums, self.factors, self.params = embeddings, cums, factors, params
        self.s_max, self.c, self.thres_cosh, self.emb_clamp, self.clip_grad = s_max, c, thres_cosh, emb_clamp, clip_grad
        self.s = s_max

    def context(self, info):
        self.s = anneal_s(info["batch"], info["n_batches"], self.s_max) if info.get("training") else self.s_max
        return Context(training=bool(info.get("training")), gate_scale=self.s)

    def extra_loss(self, module, x, y, logits, info):
        return self.c * hat_regulariser([torch.sigmoid(self.s * e) for e in self.embeddings], self.cums)

    @torch.no_grad()
    def transform_grads(self, module, info):
        for p, f in self.factors:
            if p.grad is not None:
                p.grad.mul_(f)
        for e in self.embeddings:
            if e.grad is not None:
                e.grad.mul_(compensation(e, self.s, self.s_max, self.thres_cosh))
        if self.clip_grad:
            grads = [p.grad for p in self.params if p.grad is not None]
            total = torch.nn.utils.get_total_norm(grads)
            if float(total) > self.clip_grad:
                torch.nn.utils.clip_grads_with_norm_(self.params, self.clip_grad, total)

    @torch.no_grad()
    def after_step(self, module, info):
        for e in self.embeddings:
            e.clamp_(-self.emb_clamp, self.emb_clamp)


def _twin(store: ParamStore) -> ParamStore:
    """An independent store holding copies of `store`'s tensors (Parameters stay Parameters)."""
    copies = {k: nn.Parameter(v.detach().clone()) if isinstance(v, nn.Parameter) else v.detach().clone()
              for k, v in store.tensors.items()}
    return ParamStore(seed=store.seed, device=store.device).load(copies)


@pytest.mark.parametrize("clip_grad,emb_clamp,graded", [(10000.0, 6.0, False), (0.05, 0.3, True)],
                         ids=["paper_options", "clip_and_clamp_bind_graded_masks"])
def test_training_arithmetic_is_the_pre_core2_hooks_bit_for_bit(clip_grad, emb_clamp, graded):
    """The "hat" rule + `HATHooks` train task 2 exactly as the old hook did (conditioning
    multiply, compensation, clipping, clamping): every tensor is bit-identical afterwards.

    The masks task 1 leaves at s_max = 400 are (nearly) 0/1; `graded` replaces them with values
    in (0, 1), so that fractional multipliers are compared too; the second case also makes the
    clipping and the clamping act."""
    stream = get_stream("synthetic", seed=3, n_tasks=2, input_shape=(1, 8, 8), n_train_per_class=24,
                        n_val_per_class=4, n_test_per_class=4, noise=0.3)
    bb = [{"kind": "input", "shape": (1, 8, 8)}, {"kind": "conv", "out_ch": 4, "padding": 1}, {"kind": "relu"},
          {"kind": "maxpool"}, {"kind": "flatten"}, {"kind": "linear", "out_f": 8}, {"kind": "relu"}]
    h = HAT(backbone=bb, clip_grad=clip_grad, emb_clamp=emb_clamp, c=0.5)
    config = TrainConfig(epochs=2, batch_size=8, lr=0.05, momentum=0.9)
    first = next(run_tasks(h, stream, config, seed=0, echo=None))  # t1 trained, its masks committed
    task = stream.tasks[1]
    net = h.prepare(first.net, task.name, task.n_classes, task.input_shape)
    new_store = first.store.realize(net)
    if graded:
        g = torch.Generator().manual_seed(5)
        for gate in gates_on_route(net, "t2"):
            net = _set_cum(net, new_store, gate, torch.rand(net.node(gate).spec.units, generator=g).tolist())
    old_store = _twin(new_store)
    # The old net: the same tensors without the rules (the old code conditioned in its hook).
    old_net = net
    for n, names in conditioned_params(net, "t2").items():
        old_net = clear_grad_rules(old_net, nodes=n, params=names)
    assert train_plan(old_net, old_store, "t2", config.lr).grad_mults == []
    factors = _old_conditioning(old_net, old_store, "t2")
    assert len(train_plan(net, new_store, "t2", config.lr).grad_mults) == len(factors) == 4
    if graded:
        assert all(bool(((f > 0) & (f < 1)).all()) for f in factors.values())
    else:
        assert any(bool((f == 0).any()) for f in factors.values())  # some weights are blocked ...
        assert any(bool((f == 1).any()) for f in factors.values())  # ... and some are free
    gates = gates_on_route(old_net, "t2")
    embeddings = [old_store[embedding_key(old_net, "t2", g)] for g in gates]
    old_hooks = _PreCore2Hooks(
        embeddings=embeddings, cums=[cumulative_mask(old_net, old_store, g).detach() for g in gates],
        factors=[(old_store[k], f) for k, f in factors.items()],
        params=[p for g in train_plan(old_net, old_store, "t2", config.lr).groups for p in g["params"]],
        s_max=h.s_max, c=h.c, thres_cosh=h.thres_cosh, emb_clamp=h.emb_clamp, clip_grad=h.clip_grad)
    before = {k: new_store[k].detach().clone() for k in factors}
    res_new = train_task(net, new_store, "t2", task.train, task.val, config,
                         h.hooks(net, new_store, "t2", config.lr), task_index=1)
    res_old = train_task(old_net, old_store, "t2", task.train, task.val, config, old_hooks, task_index=1)
    assert res_new.history == res_old.history
    assert set(new_store.tensors) == set(old_store.tensors)
    for k in new_store:
        assert torch.equal(new_store[k], old_store[k]), k
    for k, f in factors.items():  # not vacuous: free weights moved, blocked ones did not
        w = new_store[k].detach()
        blocked = (f == 0).expand_as(w)
        assert torch.equal(w[blocked], before[k][blocked]) and not torch.equal(w, before[k]), k
    if emb_clamp < 1:  # the clamp did act
        assert any(bool((e.detach().abs() == emb_clamp).any()) for e in embeddings)


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
    rule = GradRule("multiply", provider=PROVIDER)
    assert net2.policy_for("t3", "fc1").param("weight").rules == (rule,)  # the rules travel with the net
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
    h = get("hat", s_max=100, c=0.5)
    assert isinstance(h, HAT) and (h.s_max, h.c) == (100.0, 0.5)
    with pytest.raises(StrategyError, match="^hat: bad options"):
        get("hat", s_max=0)
    with pytest.raises(StrategyError, match="^hat: unknown option 'smax'; did you mean s_max"):
        get("hat", smax=400)
    for bad in ({"clip_grad": 0}, {"c": -1}, {"insert_gates": 1}, {"backbone": "mlp"}, {"emb_clamp": 0}):
        with pytest.raises(StrategyError, match="bad options"):
            get("hat", **bad)
    assert get("hat", clip_grad=None).clip_grad is None
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        h.s_max = 1.0


def test_docstring_examples():
    import doctest

    assert doctest.testmod(strategies.hat).failed == 0


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

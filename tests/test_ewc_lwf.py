"""EWC and LwF: penalty and distillation terms, Fisher estimates, forgetting, exact resume."""

from __future__ import annotations

import itertools
import json
import math
import shutil

import attrs
import pytest
import torch
import torch.nn.functional as F

from jointnet import backbones, snapshot
from jointnet.errors import StrategyError
from jointnet.execution.compile import compile_net
from jointnet.execution.program import task_context
from jointnet.execution.store import ParamStore
from jointnet.experiments.runner import RunSpec, resume, run, run_tasks
from jointnet.experiments.strategy import TaskRun, get, trunk_task
from jointnet.experiments.streams import get_stream
from jointnet.experiments.trainer import TrainConfig
from jointnet.graph import annotate
from jointnet.graph.net import TensorRef
from strategies.ewc import (
    ANCHOR, FISHER, EWC, EWCHooks, closed_form_nodes, consolidate, conv2d_fisher, diag_fisher, ewc_penalty,
    linear_fisher, penalty_terms, trunk_fisher, trunk_params,
)
from strategies.lwf import LwF, LwFHooks, kd_loss

SMALL = [{"kind": "input", "shape": (1, 28, 28)}, {"kind": "flatten"}, {"kind": "linear", "out_f": 32},
         {"kind": "relu"}]
TINY = [{"kind": "input", "shape": (6,)}, {"kind": "linear", "out_f": 5}, {"kind": "relu"},
        {"kind": "linear", "out_f": 4}, {"kind": "relu"}]
# conv (with bias, stride, padding, dilation), BatchNorm (no closed form: vmap), linear
CONV = [{"kind": "input", "shape": (2, 9, 9)}, {"kind": "conv", "out_ch": 3, "kernel": 3, "padding": 1},
        {"kind": "bn"}, {"kind": "relu"}, {"kind": "conv", "out_ch": 4, "kernel": 2, "stride": 2, "dilation": 2},
        {"kind": "relu"}, {"kind": "flatten"}, {"kind": "linear", "out_f": 5}, {"kind": "relu"}]
FMNIST = {"n_tasks": 2, "n_train_per_task": 200, "n_test_per_task": 200}
CONFIG = TrainConfig(epochs=1, batch_size=16)


def _quiet(msg: str) -> None:
    return None


def _synthetic(n_tasks=2):
    return get_stream("synthetic", seed=0, n_tasks=n_tasks, input_shape=(6,), n_train_per_class=24,
                      n_val_per_class=4, n_test_per_class=8, noise=0.5)


def _drive(strategy, stream, upto: int, config=CONFIG):
    """The runner loop over tasks 0..upto-1; returns the last `TaskOutcome` (net, store)."""
    return list(itertools.islice(run_tasks(strategy, stream, config, seed=0, echo=None), upto))[-1]


def _task_run(stream, index: int, store: ParamStore, strategy: str, config=CONFIG) -> TaskRun:
    return TaskRun(stream.tasks[index], index, stream, store, config, 0, strategy, None)


# ---- EWC ----------------------------------------------------------------------------------------


def test_ewc_penalty_zero_at_anchor_and_hand_value():
    theta = [torch.tensor([1.0, -2.0]), torch.tensor([[0.5]])]
    fisher = [torch.tensor([3.0, 0.25]), torch.tensor([[4.0]])]
    assert float(ewc_penalty(theta, fisher, [t.clone() for t in theta], 5000.0)) == 0.0
    anchors = [torch.tensor([0.0, 0.0]), torch.tensor([[0.0]])]
    # (lam / 2) * (3 * 1 + 0.25 * 4 + 4 * 0.25) = 5 * 5 = 25
    assert float(ewc_penalty(theta, fisher, anchors, 10.0)) == pytest.approx(25.0)


def test_ewc_hooks_read_hand_set_fisher_from_the_net():
    net = backbones.build(TINY, task="t1", n_classes=2)
    store = ParamStore(seed=0).realize(net)
    trunk = trunk_params(net, "t1")
    assert [n for n, _ in trunk] == ["fc1", "fc1", "fc2", "fc2"]
    assert all(n != net.tasks["t1"].head for n, _ in trunk)
    (node, p) = trunk[0]  # fc1.weight
    fk, ak = f"ewc/fisher/{p.key}/t0", f"ewc/anchor/{p.key}/t0"
    store.put(fk, torch.full(p.shape, 2.0), trainable=False)
    store.put(ak, store[p.key].detach().clone(), trainable=False)
    net = annotate(net, node=node, param=p.name, key=FISHER, value=TensorRef(fk))
    net = annotate(net, node=node, param=p.name, key=ANCHOR, value=TensorRef(ak))
    assert {fk, ak} <= store.keys_of(net)  # snapshots carry them
    hooks = EWCHooks(penalty_terms(net, store, "t1"), lam=3.0)
    assert len(hooks.terms) == 1
    assert float(hooks.extra_loss(None, None, None, None, {}).detach()) == 0.0  # at the anchor
    moved = store[p.key].detach().clone()
    moved[0, 0] += 0.5
    moved[1, 2] -= 1.0
    store.update(p.key, moved)  # in place: the hooks hold the store's own tensor
    # (3 / 2) * 2 * (0.25 + 1) = 3.75
    assert float(hooks.extra_loss(None, None, None, None, {}).detach()) == pytest.approx(3.75)
    assert EWCHooks([], lam=3.0).extra_loss(None, None, None, None, {}) is None


def test_consolidate_sum_equals_separate_penalties_up_to_a_constant():
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.rand(7, generator=g), torch.rand(7, generator=g)
    f1[0] = f2[0] = 0.0  # no information at all: anchor falls back to the latest weights
    a1, a2 = torch.randn(7, generator=g), torch.randn(7, generator=g)
    f, a = consolidate(None, None, f1, a1)
    assert torch.equal(f, f1) and torch.equal(a, a1)
    f, a = consolidate(f, a, f2, a2, mode="sum")
    assert torch.allclose(f, f1 + f2) and a[0] == a2[0]

    def separate(t):
        return ewc_penalty([t, t], [f1, f2], [a1, a2], 7.0)

    def joint(t):
        return ewc_penalty([t], [f], [a], 7.0)

    x, y = torch.randn(7, generator=g), torch.randn(7, generator=g)
    assert float(separate(x) - joint(x)) == pytest.approx(float(separate(y) - joint(y)), abs=1e-5)
    xs = x.clone().requires_grad_()
    gs, = torch.autograd.grad(separate(xs), xs)
    gj, = torch.autograd.grad(joint(xs), xs)
    assert torch.allclose(gs, gj, atol=1e-5)

    fo, ao = consolidate(f1, a1, f2, a2, mode="online", gamma=0.5)
    assert torch.allclose(fo, 0.5 * f1 + f2) and torch.equal(ao, a2)


def test_diag_fisher_per_sample_matches_a_loop():
    net = backbones.build(TINY, task="t1", n_classes=3)
    store = ParamStore(seed=1).realize(net)
    module = compile_net(net, store, "t1")
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(10, 6, generator=g), torch.randint(0, 3, (10,), generator=g)
    names = [a for a, k in module.keys.items() if not k.startswith("head")]
    got = diag_fisher(module, names, x, y, chunk=4)
    params = dict(module.named_parameters())
    want = [torch.zeros_like(params[n]) for n in names]
    for i in range(10):
        ll = torch.log_softmax(module(x[i : i + 1]), -1)[0, y[i]]
        for w, gr in zip(want, torch.autograd.grad(ll, [params[n] for n in names])):
            w += gr.pow(2) / 10
    for a, b, n in zip(got, want, names):
        assert a.shape == params[n].shape
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    # the closed forms give the same per-sample Fisher of the same net
    closed = trunk_fisher(net, store, "t1", x, y, chunk=4)
    assert [k for k in module.keys.values() if not k.startswith("head")] == [p.key for _, p in trunk_params(net, "t1")]
    for a, b in zip(closed, want):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    # per-batch estimate: the mean over batches of the squared batch-mean gradient
    batch = diag_fisher(module, names, x, y, batch_size=5)
    want = [torch.zeros_like(params[n]) for n in names]
    for i in (0, 5):
        ll = torch.log_softmax(module(x[i : i + 5]), -1).gather(1, y[i : i + 5, None]).mean()
        for w, gr in zip(want, torch.autograd.grad(ll, [params[n] for n in names])):
            w += gr.pow(2) / 2
    for a, b in zip(batch, want):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(trunk_fisher(net, store, "t1", x, y, batch_size=5), batch))


def _per_sample_sq_sums(layer, inputs, head, y, params):
    """sum_i (d log p(y_i | x_i) / d param)^2 for every tensor in `params`, one sample at a time."""
    sums = [torch.zeros_like(p) for p in params]
    for i in range(len(inputs)):
        ll = torch.log_softmax(head(layer(inputs[i : i + 1])), -1)[0, y[i]]
        for s, g in zip(sums, torch.autograd.grad(ll, params)):
            s += g.pow(2)
    return sums


def _batched_grad_out(layer, inputs, head, y):
    out = layer(inputs)
    ll = torch.log_softmax(head(out), -1).gather(1, y[:, None]).sum()
    return torch.autograd.grad(ll, out)[0]


def test_linear_closed_form_fisher_equals_per_sample():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(13, 7, generator=g, dtype=torch.float64)
    w = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (13,), generator=g)

    def layer(inp):
        return F.linear(inp, w, b)

    def head(out):
        return torch.tanh(out) @ v.t()

    want_w, want_b = _per_sample_sq_sums(layer, a, head, y, [w, b])
    got_w, got_b = linear_fisher(a, _batched_grad_out(layer, a, head, y))
    assert got_w.shape == w.shape and got_b.shape == b.shape
    assert torch.allclose(got_w, want_w, rtol=1e-12, atol=1e-14)
    assert torch.allclose(got_b, want_b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("geometry", [
    {"kernel": 3, "stride": 1, "padding": 1, "dilation": 1},
    {"kernel": 2, "stride": 2, "padding": 0, "dilation": 1},
    {"kernel": 3, "stride": 2, "padding": 2, "dilation": 2},
])
def test_conv2d_closed_form_fisher_equals_per_sample(geometry):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 3, 8, 7, generator=g, dtype=torch.float64)
    k = geometry["kernel"]
    w = torch.randn(4, 3, k, k, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 3, (6,), generator=g)
    out_numel = F.conv2d(a, w, b, geometry["stride"], geometry["padding"], geometry["dilation"])[0].numel()
    v = torch.randn(3, out_numel, generator=g, dtype=torch.float64)

    def layer(inp):
        return F.conv2d(inp, w, b, geometry["stride"], geometry["padding"], geometry["dilation"])

    def head(out):
        return torch.tanh(out).flatten(1) @ v.t()

    want_w, want_b = _per_sample_sq_sums(layer, a, head, y, [w, b])
    got_w, got_b = conv2d_fisher(a, _batched_grad_out(layer, a, head, y), **geometry)
    assert got_w.shape == w.shape and got_b.shape == b.shape
    assert torch.allclose(got_w, want_w, rtol=1e-12, atol=1e-14)
    assert torch.allclose(got_b, want_b, rtol=1e-12, atol=1e-14)
    # in slices of samples (a memory bound): the same sums
    sliced_w, sliced_b = conv2d_fisher(a, _batched_grad_out(layer, a, head, y), **geometry, max_elements=1)
    assert torch.allclose(sliced_w, want_w, rtol=1e-12, atol=1e-14) and torch.equal(sliced_b, got_b)


@pytest.mark.parametrize("kind", ["empirical", "true"])
def test_trunk_fisher_closed_form_equals_vmap_on_a_conv_net(kind):
    net = backbones.build(CONV, task="t1", n_classes=3)
    store = ParamStore(seed=2).realize(net)
    trunk = trunk_params(net, "t1")
    closed = closed_form_nodes(net, "t1", list(dict.fromkeys(n for n, _ in trunk)))
    assert set(closed) == {"conv1", "conv2", "fc1"} and closed["conv1"] is None  # reads the input
    assert {n for n, _ in trunk} - set(closed) == {"bn1"}  # BatchNorm: vmap
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 2, 9, 9, generator=g), torch.randint(0, 3, (40,), generator=g)
    with torch.no_grad():  # BatchNorm with non-trivial running statistics (eval mode reads them)
        compile_net(net, store, "t1").train()(x)
    fast = trunk_fisher(net, store, "t1", x, y, kind=kind, chunk=16, generator=torch.Generator().manual_seed(5))
    slow = trunk_fisher(net, store, "t1", x, y, kind=kind, chunk=16, per_sample="vmap",
                        generator=torch.Generator().manual_seed(5))
    assert len(fast) == len(slow) == len(trunk)
    for (n, p), a, b in zip(trunk, fast, slow):
        assert a.shape == b.shape == p.shape, n
        assert float(b.abs().max()) > 0, n
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-9), (n, p.name, float((a - b).abs().max()))


@pytest.mark.parametrize("options", [{}, {"fisher": "true", "mode": "online", "gamma": 0.5, "n_samples": 20}])
def test_ewc_fisher_shapes_and_store_annotations(options, monkeypatch):
    seen = []
    train = TaskRun.train

    def spy(self, net, **kw):
        seen.append((self.index, kw.get("hooks")))
        return train(self, net, **kw)

    monkeypatch.setattr(TaskRun, "train", spy)
    stream = _synthetic(2)
    s = EWC(backbone=TINY, lam=10.0, **options)
    out = _drive(s, stream, 2)
    net, store = out.net, out.store
    for task in ("t1", "t2"):
        head = net.tasks[task].head
        assert not any(p.annotations for p in net.node(head).params)  # heads carry no penalty
    for node, p in trunk_params(net, "t2"):
        f, a = p.annotations[FISHER], p.annotations[ANCHOR]
        assert f.key == f"ewc/fisher/{p.key}/t2" and a.key == f"ewc/anchor/{p.key}/t2"
        assert store[f.key].shape == store[p.key].shape == store[a.key].shape
        assert not isinstance(store[f.key], torch.nn.Parameter) and (store[f.key] >= 0).all()
        assert {f.key, a.key} <= store.keys_of(net)
        if options.get("mode") == "online":  # anchor = the weights after the latest task
            assert torch.equal(store[a.key], store[p.key].detach())
    assert float(sum(store[p.annotations[FISHER].key].sum() for _, p in trunk_params(net, "t2"))) > 0
    # t2's penalty came from t1's Fisher: its terms were live while t2 trained
    assert [i for i, _ in seen] == [0, 1]
    assert seen[0][1].terms == []
    assert len(seen[1][1].terms) == len(trunk_params(net, "t2"))


def test_ewc_step_errors_name_strategy_and_task():
    stream = _synthetic(2)
    net = backbones.build(TINY, task="other", n_classes=2)  # the stream's t1 is not in this net
    store = ParamStore(seed=0).realize(net)
    with pytest.raises(StrategyError, match="no task 't1'") as e:
        EWC(backbone=TINY).consolidate_task(net, _task_run(stream, 0, store, "ewc"))
    assert (e.value.strategy, e.value.task) == ("ewc", "t1")


def test_ewc_reduces_forgetting_against_finetune(tmp_path):
    stream = {"n_tasks": 3, "n_train_per_task": 400, "n_test_per_task": 400}
    config = {"epochs": 2}
    bb = [{"kind": "input", "shape": (1, 28, 28)}, {"kind": "flatten"}, {"kind": "linear", "out_f": 64},
          {"kind": "relu"}]
    ft = run(RunSpec("finetune", "split-fmnist", strategy_options={"backbone": bb}, stream_options=stream,
                     config=config), tmp_path / "ft", echo=_quiet)
    ewc = run(RunSpec("ewc", "split-fmnist", strategy_options={"backbone": bb, "lam": 1000.0},
                      stream_options=stream, config=config), tmp_path / "ewc", echo=_quiet)
    assert ft["metrics"]["BWT"] < -0.1  # the setting forgets (-0.44 on CPU, seed 0)
    assert ewc["metrics"]["BWT"] > ft["metrics"]["BWT"] + 0.1  # (-0.015)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ewc_default_lambda_is_stable_on_permuted_fmnist(tmp_path, seed):
    # The setting where lam = 1000 (the former default) meets an infinite loss at task t4 of seed
    # 0: the default backbone and trainer, 5 tasks of 2000 images, 2 epochs. The trainer raises on
    # a non-finite loss, so finishing is the check; the accuracies must be a trained net's.
    spec = RunSpec("ewc", "permuted-fmnist", seed=seed, config={"epochs": 2},
                   stream_options={"n_tasks": 5, "n_train_per_task": 2000, "n_test_per_task": 200})
    res = run(spec, tmp_path / "r", echo=_quiet)
    rows = res["matrix"]
    assert res["done"] == 5 and all(math.isfinite(a) for row in rows for a in row if a is not None)
    assert res["metrics"]["AP"] > 0.5  # 10-way; 0.60-0.65 on CPU


# ---- LwF ----------------------------------------------------------------------------------------


def test_kd_loss_zero_iff_equal_and_t2_scaling():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    assert float(kd_loss(s, s)) == 0.0
    assert float(kd_loss(s, s + 5.0)) == pytest.approx(0.0, abs=1e-6)  # softmax ignores shifts
    assert float(kd_loss(s, t)) > 0
    assert float(kd_loss(s, t, T=2.0)) == pytest.approx(4 * float(kd_loss(s, t, T=2.0, t2_scale=False)))
    # by hand: KL(p_t || p_s) at temperature 2, batch mean
    pt, ps = torch.softmax(t / 2, -1), torch.softmax(s / 2, -1)
    want = (pt * (pt.log() - ps.log())).sum(-1).mean()
    assert float(kd_loss(s, t, t2_scale=False)) == pytest.approx(float(want), rel=1e-5)


def test_lwf_distillation_zero_before_training_positive_after_a_change():
    stream = _synthetic(2)
    s = LwF(backbone=TINY)
    out = _drive(s, stream, 1)
    store = out.store
    task = stream.tasks[1]
    net = trunk_task(out.net, TINY, task.name, task.n_classes)  # what `step` does first
    store.realize(net)
    hooks = s.hooks(net, store, task.name)
    assert isinstance(hooks, LwFHooks) and hooks.old == ["t1"]
    module = compile_net(net, store, "t2")
    ctx = task_context(net, "t2", training=True)
    x, y = task.x_train[:16], task.y_train[:16]
    info = {}
    logits = hooks.forward(module, x, info, ctx)
    assert torch.allclose(logits, module(x, ctx))  # the new head's logits, from the one multi-task forward
    assert float(hooks.extra_loss(module, x, y, logits, info).detach()) == pytest.approx(0.0, abs=1e-7)
    for key in (trunk_params(net, "t2")[0][1].key, net.node("head.t1").params[0].key):
        # the student moves: trunk and old head
        noise = torch.randn(store[key].shape, generator=torch.Generator().manual_seed(0))
        store.update(key, store[key].detach() + noise)
    info = {}
    logits = hooks.forward(module, x, info, ctx)
    assert float(hooks.extra_loss(module, x, y, logits, info).detach()) > 1e-3
    # the teacher is a frozen copy: clones of the store's tensors, never the tensors themselves
    for attr, key in hooks.teacher.keys.items():
        t = getattr(hooks.teacher, attr)
        assert t is not store[key] and not t.requires_grad


@pytest.mark.parametrize("freeze_old_heads", [False, True])
def test_lwf_old_heads_train_unless_frozen(freeze_old_heads):
    stream = _synthetic(2)
    s = LwF(backbone=TINY, freeze_old_heads=freeze_old_heads, warmup_epochs=1)
    out = _drive(s, stream, 1)
    store = out.store
    head = out.net.node(out.net.tasks["t1"].head)
    before = {p.key: store[p.key].detach().clone() for p in head.params}
    trunk_key = trunk_params(out.net, "t1")[0][1].key
    trunk_before = store[trunk_key].detach().clone()
    run_ = _task_run(stream, 1, store, "lwf")
    net = s.step(out.net, run_)
    assert [r.epochs_run for r in run_.results] == [1, 1]  # the warm-up, then joint training
    moved = [not torch.equal(store[k], v) for k, v in before.items()]
    assert all(moved) if not freeze_old_heads else not any(moved)
    assert not torch.equal(store[trunk_key], trunk_before)
    assert all(store[k].grad is None for k in before) or not freeze_old_heads
    assert not net.policy  # the warm-up's freeze was transient


# ---- resume -------------------------------------------------------------------------------------


def _truncate_to_first_task(src, dst) -> None:
    """A copy of a finished 2-task run as if it had stopped right after task 1."""
    shutil.copytree(src, dst)
    path = dst / "results.json"
    res = json.loads(path.read_text())
    (dst / res["snapshots"][-1]).unlink()
    res["done"] = 1
    for k in ("matrix", "params", "wall_time", "epochs", "snapshots"):
        res[k] = res[k][:1]
    res["metrics"] = {}
    path.write_text(json.dumps(res))


@pytest.mark.parametrize("strategy,options", [
    ("ewc", {"backbone": SMALL, "lam": 1000.0}),
    ("lwf", {"backbone": SMALL}),
])
def test_resume_after_first_task_is_exact(tmp_path, strategy, options):
    spec = RunSpec(strategy, "split-fmnist", seed=3, strategy_options=options, stream_options=FMNIST,
                   config={"epochs": 1, "batch_size": 32})
    a = run(spec, tmp_path / "a", echo=_quiet)
    _truncate_to_first_task(tmp_path / "a", tmp_path / "b")
    b = resume(tmp_path / "b", echo=_quiet)
    assert b["done"] == 2 and b["matrix"] == a["matrix"] and b["metrics"] == a["metrics"]
    net_a, store_a = snapshot.load(tmp_path / "a" / a["snapshots"][-1])
    net_b, store_b = snapshot.load(tmp_path / "b" / b["snapshots"][-1])
    assert net_a == net_b and set(store_a.tensors) == set(store_b.tensors)
    for k in store_a.tensors:
        assert torch.equal(store_a[k], store_b[k]), k
    if strategy == "ewc":  # the Fisher of t1 travelled in t1's snapshot
        net1, store1 = snapshot.load(tmp_path / "a" / a["snapshots"][0])
        assert any(k.startswith("ewc/fisher/") for k in store1.tensors)
        assert penalty_terms(net1, store1, "t1")


def test_strategies_are_registered_with_documented_defaults():
    assert isinstance(get("ewc"), EWC) and isinstance(get("lwf"), LwF)
    e, l_ = EWC(), LwF()
    assert (e.lam, e.fisher, e.n_samples, e.fisher_batch_size, e.per_sample, e.mode, e.gamma) == (
        100.0, "empirical", 1024, 1, "closed_form", "sum", 1.0)
    assert (l_.lam, l_.T, l_.t2_scale, l_.warmup_epochs, l_.freeze_old_heads) == (1.0, 2.0, False, 1, False)
    with pytest.raises(ValueError):
        EWC(mode="offline")
    with pytest.raises(ValueError):
        EWC(n_samples=0)
    with pytest.raises(ValueError):
        EWC(per_sample="loop")
    with pytest.raises(StrategyError, match="ewc"):
        get("ewc", mode="offline")
    with pytest.raises(ValueError):
        LwF(T=0.0)
    assert attrs.evolve(e, lam=1.0).lam == 1.0

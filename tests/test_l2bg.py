"""L2BG: decision functions (properties), bind-grow structure, isolation, replay, provenance,
random growth and the two-worker Optuna search."""

from __future__ import annotations

import json
import math
import re

import attrs
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from jointnet import backbones, snapshot
from jointnet.graph.check import check
from jointnet.cli import main as cli_main
from jointnet.execution.compile import compile_net
from jointnet.errors import JointNetError, StrategyError
from jointnet.execution.store import ParamStore
from jointnet.experiments.runner import RunSpec, resume, run, run_tasks
from jointnet.experiments.streams import get_stream
from jointnet.execution.optim import param_groups
from jointnet.experiments.strategy import TaskRun, get
from jointnet.experiments.trainer import TrainConfig, accuracy
from jointnet.persistence.views import param_counts
from strategies.l2bg import (
    GROW_LOG, PROV, VAL_ACC, Choice, L2BG, RandomGrowth, Situation, bind_grow_step, grow_sequence,
    independent_net, multitask_gain, net_gain, normalise, nucleus, random_decision, ranking, rdm, rsa,
    rsa_decision, slot_outputs, task_conflict, task_slots,
)
from strategies.l2bg_search import SearchSpec, pareto, population_size, replay_sequence, run_stream, search

D = 12
MLP = [{"kind": "input", "shape": [D]}, {"kind": "linear", "out_f": 10}, {"kind": "relu"},
       {"kind": "linear", "out_f": 8}, {"kind": "relu"}, {"kind": "linear", "out_f": 6}, {"kind": "relu"}]
CONFIG = TrainConfig(epochs=2, batch_size=16, lr=0.05)


def _stream(n_tasks: int = 3, **kw):
    return get_stream("synthetic", seed=0, n_tasks=n_tasks, input_shape=(D,), n_train_per_class=16,
                      n_val_per_class=8, n_test_per_class=8, **kw)


def _backbone_params(n_classes: int = 2) -> tuple[int, int]:
    net = backbones.build(MLP, task="t1", n_classes=n_classes)
    c = param_counts(net)["by_node"]
    head = c["head.t1"]
    return sum(c.values()) - head, head


@attrs.define
class _SpyRun(TaskRun):
    """A `TaskRun` that calls ``before_train(net, run)`` just before the task-net trains (the
    independent net's training, ``say="independent net"``, is not reported)."""

    before_train: object = None

    def train(self, net, *, hooks=None, config=None, say=None):
        if self.before_train is not None and say is None:
            self.store.realize(net)  # as `train` does first
            self.before_train(net, self)
        return super().train(net, hooks=hooks, config=config, say=say)


@attrs.frozen
class _Spy:
    """Wraps a strategy for `run_tasks`: its `step` runs the strategy's on a `_SpyRun`."""

    inner: object
    before_train: object = None

    def step(self, net, run):
        spy = _SpyRun(**{f.name: getattr(run, f.name) for f in attrs.fields(TaskRun)}, before_train=self.before_train)
        return self.inner.step(net, spy)


def _drive(strategy, stream, config=CONFIG, before_train=None, after=None):
    """Run `strategy` over `stream` with the core's runner loop; `before_train(net, run)` sees the
    rewritten net of each task before it trains, `after(outcome)` each task's outcome (checked)."""
    last = None
    for o in run_tasks(_Spy(strategy, before_train), stream, config, seed=0, echo=None):
        check(o.net)
        if after is not None:
            after(o)
        last = o
    return last


# ---- decision functions: properties ---------------------------------------------------------

conflicts_st = st.lists(st.floats(0.0, 2.0, allow_nan=False), min_size=1, max_size=8)
deltas = st.floats(0.0, 1.0, allow_nan=False)


@given(conflicts_st, st.sampled_from(["plain", "softmax"]), st.floats(0.05, 5.0))
def test_nucleus_edges_monotone_prefix(conflicts, method, temperature):
    probs = normalise(conflicts, method, temperature)
    assert math.isclose(sum(probs), 1.0, abs_tol=1e-9) and all(p >= 0 for p in probs)
    order = ranking(probs)
    assert nucleus(probs, 0.0) == []
    assert nucleus(probs, 1.0) == order  # every slot, even those of probability 0
    prev: list[int] = []
    for d in [i / 20 for i in range(21)]:
        cur = nucleus(probs, d)
        assert cur == order[: len(cur)]  # a prefix of the conflict ranking
        assert len(cur) >= len(prev) and cur[: len(prev)] == prev  # monotone in delta
        assert sum(probs[i] for i in cur) >= d - 1e-9  # its mass reaches delta
        if cur:  # ... and it is the smallest such prefix
            assert sum(probs[i] for i in cur[:-1]) < d - 1e-9 or d >= 1 - 1e-9
        prev = cur


@given(conflicts_st, deltas, deltas)
def test_nucleus_monotone_any_pair(conflicts, a, b):
    probs = normalise(conflicts)
    lo, hi = sorted((a, b))
    small, big = nucleus(probs, lo), nucleus(probs, hi)
    assert set(small) <= set(big)


def test_nucleus_rejects_bad_delta():
    with pytest.raises(ValueError, match="delta"):
        nucleus([0.5, 0.5], 1.5)


@settings(max_examples=30)
@given(st.integers(3, 12), st.integers(1, 6), st.integers(1, 6), st.integers(0, 10_000),
       st.sampled_from(["pearson", "euclidean"]), st.sampled_from(["spearman", "pearson"]))
def test_rsa_identity_symmetry_range(n, da, db, seed, kind, compare):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, da, generator=g)
    b = torch.relu(torch.randn(n, db, generator=g))  # ReLU-like: zero rows happen
    assert rsa(a, a, kind, compare) == 0.0
    assert rsa(b, b, kind, compare) == 0.0
    r = rsa(a, b, kind, compare)
    assert 0.0 <= r <= 2.0
    assert r == rsa(b, a, kind, compare)
    assert torch.equal(rdm(a, kind), rdm(a, kind).T)


def test_rsa_known_values():
    x = torch.randn(20, 5, generator=torch.Generator().manual_seed(1))
    # an affine map of the activations keeps the Pearson RDM: no dissimilarity
    assert rsa(x, 3 * x + 2) == pytest.approx(0.0, abs=1e-9)
    # RDMs in reverse order give correlation -1: maximal dissimilarity 2. Points 0, 1, 3 have
    # distances (d01, d02, d12) = (1, 3, 2); points 0, 3, 1 have (3, 1, 2) = 4 - (1, 3, 2).
    a, b = torch.tensor([[0.0], [1.0], [3.0]]), torch.tensor([[0.0], [3.0], [1.0]])
    assert rsa(a, b, "euclidean", "pearson") == pytest.approx(2.0)
    assert rsa(a, b, "euclidean", "spearman") == pytest.approx(2.0)
    assert 0.0 < rsa(x, torch.randn(20, 5, generator=torch.Generator().manual_seed(2))) <= 2.0


@given(st.lists(st.floats(0.0, 2.0, allow_nan=False), min_size=1, max_size=8))
def test_task_conflict_norms(c):
    l2, l1, mean = task_conflict(c, "l2"), task_conflict(c, "l1"), task_conflict(c, "mean")
    assert l2 == pytest.approx(math.sqrt(sum(v * v for v in c)))
    assert l1 == pytest.approx(sum(c)) and mean == pytest.approx(sum(c) / len(c))
    assert 0 <= l2 <= l1 + 1e-12 and mean <= l1 + 1e-12
    with pytest.raises(ValueError, match="norm"):
        task_conflict(c, "max")


def test_normalise_and_gain():
    assert normalise([0.0, 0.0, 0.0]) == pytest.approx([1 / 3] * 3)
    hot, cold = normalise([1.0, 2.0], "softmax", 0.1), normalise([1.0, 2.0], "softmax", 10.0)
    assert hot[1] > cold[1] > 0.5
    assert multitask_gain([0.1, 0.2], [0.1, 0.2]) == 0.0
    assert multitask_gain([0.05], [0.1]) == pytest.approx(50.0)  # lower error: positive gain
    assert multitask_gain([0.2], [0.0], floor=0.1) == pytest.approx(-200.0)


# ---- slots, activations ---------------------------------------------------------------------


def test_slots_bn_and_slot_outputs():
    conv = [{"kind": "input", "shape": (1, 6, 6)}, {"kind": "conv", "out_ch": 3, "padding": 1}, {"kind": "bn"},
            {"kind": "relu"}, {"kind": "maxpool"}, {"kind": "flatten"}, {"kind": "linear", "out_f": 5}, {"kind": "relu"}]
    net = backbones.build(conv, task="t1", n_classes=2)
    split = task_slots(net, "t1", bn_slots=True)
    assert [(s.name, s.nodes, s.post, s.pre) for s in split] == [
        ("conv1", ("conv1",), "conv1", "conv1"), ("bn1", ("bn1",), "relu1", "bn1"), ("fc1", ("fc1",), "relu2", "fc1")]
    joint = task_slots(net, "t1", bn_slots=False)
    assert [(s.name, s.nodes, s.post) for s in joint] == [("conv1", ("conv1", "bn1"), "relu1"), ("fc1", ("fc1",), "relu2")]
    store = ParamStore(seed=0).realize(net)
    bn = {p.name: p.key for p in net.node("bn1").params}
    # BatchNorm statistics far from (0, 1), so that eval mode (running statistics) and train mode
    # (batch statistics) give different outputs.
    store.update(bn["running_mean"], torch.tensor([0.5, -1.0, 2.0]))
    store.update(bn["running_var"], torch.tensor([4.0, 0.25, 9.0]))
    x = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    post = slot_outputs(net, store, "t1", x, task_slots(net, "t1", bn_slots=True, head_slot=True), "post")
    pre = slot_outputs(net, store, "t1", x, split, "pre")
    assert list(post) == ["conv1", "bn1", "fc1", "head"] and list(pre) == ["conv1", "bn1", "fc1"]
    m = compile_net(net, store, "t1")
    m.eval()
    with torch.no_grad():
        assert torch.equal(post["head"], m(x))  # the same computation as the compiled forward
        w = {p.name: store[p.key] for p in net.node("conv1").params}
        z = F.conv2d(x, w["weight"], w["bias"], 1, 1)
        bnorm = F.batch_norm(z, store[bn["running_mean"]], store[bn["running_var"]], store[bn["weight"]],
                             store[bn["bias"]], False, 0.1, 1e-05)
    assert torch.equal(pre["conv1"], z.reshape(4, -1)) and torch.equal(post["conv1"], z.reshape(4, -1))
    assert torch.equal(pre["bn1"], bnorm.reshape(4, -1))  # eval mode: running statistics
    assert torch.equal(post["bn1"], torch.relu(bnorm).reshape(4, -1)) and post["bn1"].shape == (4, 3 * 6 * 6)
    assert torch.equal(store[bn["running_mean"]], torch.tensor([0.5, -1.0, 2.0]))  # statistics untouched
    with pytest.raises(ValueError, match="record"):
        slot_outputs(net, store, "t1", x, split, "mid")


# ---- bind-grow structure --------------------------------------------------------------------


def test_bind_grow_step_is_logged_primitives():
    net = backbones.build(MLP, task="t1", n_classes=2)
    before = len(net.log)
    net = bind_grow_step(net, task="t2", to="t1", grow=["fc3", "fc1"], n_classes=2, delta=0.5,
                         provenance={"bound_to": "t1"}, node_provenance={"fc3": {"in_nucleus": True}})
    names = [r.name for r in list(net.log)[before:]]
    assert names[:3] == ["add_task", "bind", "add_head"]
    assert names.count("clone_node") == 2 and "set_lr_scale" in names and names.count("annotate") == 4
    assert net.route("t2") == ["input", "fc1.t2", "relu1", "fc2", "relu2", "fc3.t2", "relu3", "head.t2"]
    assert net.node("fc3.t2").annotations[PROV]["in_nucleus"] is True
    assert grow_sequence(net) == [{"task": "t2", "bind": "t1", "delta": 0.5, "grow": ["fc3", "fc1"]}]
    check(net)


@settings(max_examples=25)
@given(st.integers(2, 5), st.data())
def test_params_never_decrease_with_delta(n_tasks, data):
    """For a fixed order, fixed bindings and fixed conflicts, the parameter count is monotone in
    delta; delta 0 is one backbone plus heads, delta 1 one backbone per task."""
    binds = [data.draw(st.integers(0, i - 1)) for i in range(1, n_tasks)]
    confl = [data.draw(st.lists(st.floats(0.0, 2.0, allow_nan=False), min_size=3, max_size=3)) for _ in binds]
    body, head = _backbone_params()

    def count(delta: float) -> int:
        net = backbones.build(MLP, task="t1", n_classes=2)
        for i, (b, c) in enumerate(zip(binds, confl), start=2):
            to = f"t{b + 1}"
            slots = [s.name for s in task_slots(net, to)]
            grow = [slots[j] for j in nucleus(normalise(c), delta)]
            net = bind_grow_step(net, task=f"t{i}", to=to, grow=grow, n_classes=2, delta=delta)
        return param_counts(net)["total"]

    counts = [count(d) for d in (0.0, 0.1, 0.3, 0.55, 0.8, 0.95, 1.0)]
    assert counts == sorted(counts)
    assert counts[0] == body + n_tasks * head
    assert counts[-1] == n_tasks * (body + head)


def test_delta_extremes_end_to_end():
    stream = _stream(3)
    body, head = _backbone_params()
    totals = {}
    for d in (0.0, 0.55, 0.8, 1.0):
        last = _drive(get("l2bg", backbone=MLP, delta=d), stream)
        totals[d] = param_counts(last.net)["total"]
        assert len(grow_sequence(last.net)) == 3
        for t in ("t2", "t3"):  # each task grew the nucleus of its recorded conflicts for d
            prov = last.net.tasks[t].annotations[PROV]
            names, probs = [s["slot"] for s in prov["slots"]], [s["prob"] for s in prov["slots"]]
            assert list(prov["grown"]) == [names[i] for i in nucleus(probs, d)]
    assert totals[0.0] == body + 3 * head
    assert totals[1.0] == 3 * (body + head)
    assert totals[0.0] <= totals[0.55] <= totals[0.8] <= totals[1.0]


def test_growing_never_touches_other_tasks_and_shared_nodes_train_slower():
    stream = _stream(3)
    x = torch.rand(6, D, generator=torch.Generator().manual_seed(3))
    seen: dict = {}
    compared: dict[str, int] = {}

    def before_train(net, run):
        store, t = run.store, run.task.name
        seen["tensors"] = {n: [store[p.key].detach().clone() for p in net.node(n).params] for n in net.nodes}
        if run.index:
            shared = {n for n in net.route(t) if net.node(n).params and net.users(n) != {t}}
            groups = {g["name"]: g for g in param_groups(net, store, t, lr=1.0)}
            slow = {id(p) for p in groups.get("lr_scale=0.1", {"params": []})["params"]}
            want = {id(store[p.key]) for n in shared for p in net.node(n).params if not p.buffer}
            # delta 0.55 < 2/3 never grows all three slots: something is shared, and trains slower
            assert shared and slow == want
            fast = groups["lr_scale=1.0"]["params"]
            owned = {id(store[p.key]) for n in net.route(t) if net.users(n) == {t}
                     for p in net.node(n).params if not p.buffer}
            assert fast and {id(q) for q in fast} == owned

    def after(o):
        net, store, t = o.net, o.store, o.task
        compared[t] = 0
        for n, old in seen["tensors"].items():
            if t not in net.users(n):  # owned by (or routed for) other tasks only: bit-identical
                for p, before in zip(net.node(n).params, old):
                    assert torch.equal(store[p.key], before), f"{n} changed while training {t}"
                    compared[t] += 1

    _drive(get("l2bg", backbone=MLP, delta=0.55), stream, before_train=before_train, after=after)
    assert compared["t1"] == 0 and compared["t2"] > 0 and compared["t3"] > 0  # the check ran

    # delta = 1: nothing is shared, so training t3 leaves t1's and t2's outputs bit-identical.
    outs = {}

    def snap_outputs(o):
        if o.index == 1:
            for t in ("t1", "t2"):
                m = compile_net(o.net, o.store, t)
                m.eval()
                outs[t] = m(x).detach().clone()

    last = _drive(get("l2bg", backbone=MLP, delta=1.0), stream, after=snap_outputs)
    assert set(outs) == {"t1", "t2"}
    for t in ("t1", "t2"):
        m = compile_net(last.net, last.store, t)
        m.eval()
        assert torch.equal(m(x), outs[t])


def test_shared_lr_scale_zero_freezes_and_shared_head():
    stream = _stream(3)
    checked = []

    def before_train(net, run):
        t = run.task.name
        if run.index:
            shared = [n for n in net.route(t) if net.node(n).params and net.users(n) != {t}]
            assert shared and all(net.policy_for(t, n).frozen for n in shared)
            assert all(not net.policy_for(t, n).frozen for n in net.route(t) if net.users(n) == {t})
            checked.append(t)

    last = _drive(get("l2bg", backbone=MLP, delta=0.3, shared_lr_scale=0.0, head="shared"), stream,
                  before_train=before_train)
    assert checked == ["t2", "t3"]
    net = last.net
    prov = net.tasks["t2"].annotations[PROV]
    assert [s["slot"] for s in prov["slots"]] == ["fc1", "fc2", "fc3", "head"]  # the shared head is a slot
    for t in ("t2", "t3"):
        p = net.tasks[t].annotations[PROV]
        own = "head" in p["grown"]
        assert net.tasks[t].head == (f"head.{t}" if own else net.tasks[p["bound_to"]].head)


# ---- replay ---------------------------------------------------------------------------------


def test_replay_reproduces_graph_and_accuracies():
    stream = _stream(3)
    opts = {"backbone": MLP, "delta": 0.55}
    first = run_stream("l2bg", stream, CONFIG, seed=1, options=opts)
    seq = grow_sequence(first.net)
    assert [e["task"] for e in seq] == ["t1", "t2", "t3"] and seq[0]["bind"] is None
    again = replay_sequence(seq, stream, CONFIG, seed=1, options=opts)
    assert again.net.structure() == first.net.structure()
    assert again.net == first.net  # same log, so the same parameter keys
    assert again.matrix == first.matrix and again.gain == first.gain
    # A sequence that overrides the RSA choices: bind every task to t1 and grow nothing.
    forced = replay_sequence([{"bind": "t1", "delta": 0.0}, {"bind": "t1", "delta": 0.0}], stream, CONFIG,
                             seed=1, options=opts)
    assert [(e["bind"], e["grow"]) for e in grow_sequence(forced.net)[1:]] == [("t1", []), ("t1", [])]


def test_candidates_restrict_binding():
    res = run_stream("l2bg", _stream(3), TrainConfig(epochs=1, batch_size=16), options={"backbone": MLP, "candidates": ["t1"]})
    assert [e["bind"] for e in grow_sequence(res.net)] == [None, "t1", "t1"]
    assert set(res.net.tasks["t3"].annotations[PROV]["conflicts"]) == {"t1"}
    with pytest.raises(JointNetError, match="cannot bind"):
        run_stream("l2bg", _stream(2), TrainConfig(epochs=0), options={"backbone": MLP, "sequence": [{"bind": "t9"}]})


def test_random_growth_is_seeded():
    stream = _stream(3)
    a = grow_sequence(run_stream("l2bg-random", stream, CONFIG, seed=0, options={"backbone": MLP}).net)
    b = grow_sequence(run_stream("l2bg-random", stream, CONFIG, seed=0, options={"backbone": MLP}).net)
    assert a == b
    fixed = run_stream("l2bg-random", stream, CONFIG, seed=3, options={"backbone": MLP, "n_grow": 2})
    assert [len(e["grow"]) for e in grow_sequence(fixed.net)[1:]] == [2, 2]
    assert fixed.gain is None  # no independent nets by default: no reference
    # With a reference the conflicts are measured and recorded, but there is no nucleus.
    ref = run_stream("l2bg-random", stream, TrainConfig(epochs=1, batch_size=16), seed=3,
                     options={"backbone": MLP, "n_grow": [1, 3], "reference": True})
    assert [len(e["grow"]) for e in grow_sequence(ref.net)[1:]] == [1, 3]
    prov = ref.net.tasks["t3"].annotations[PROV]
    assert prov["nucleus"] is None and set(prov["conflicts"]) == {"t1", "t2"}
    assert [s["in_nucleus"] for s in prov["slots"]] == [None, None, None] and ref.gain is not None


def test_decision_rules_are_pure():
    s = Situation("t3", 2, 7, ("t1", "t2"), {"t1": ("fc1", "fc2", "fc3"), "t2": ("fc1", "fc2", "fc3")},
                  {"t1": {"fc1": 0.1, "fc2": 0.9, "fc3": 0.2}, "t2": {"fc1": 0.3, "fc2": 0.3, "fc3": 0.3}})
    # ||(.1, .9, .2)|| = sqrt(.86) > ||(.3, .3, .3)|| = sqrt(.27): bind to t2; the nucleus is left to the shell
    assert rsa_decision(s, delta=0.4) == Choice("t2", 0.4, None)
    assert rsa_decision(s, delta=0.4, norm="mean") == Choice("t2", 0.4, None)
    tie = attrs.evolve(s, conflicts={"t1": {"fc1": 0.5}, "t2": {"fc1": 0.5}})
    assert rsa_decision(tie, delta=1).bind == "t1" and rsa_decision(tie, delta=1).delta == 1.0
    with pytest.raises(ValueError, match="independent net"):
        rsa_decision(attrs.evolve(s, conflicts=None), delta=0.4)
    assert rsa_decision(attrs.evolve(s, entry={"bind": "t1", "delta": 0.2, "grow": ["fc3"]}), delta=0.4) == \
        Choice("t1", 0.2, ("fc3",))
    for seed in range(20):
        c = random_decision(attrs.evolve(s, seed=seed), n_grow=None)
        assert c == random_decision(attrs.evolve(s, seed=seed))  # a function of the situation
        assert c.bind in s.candidates and list(c.grow) == [n for n in s.slots[c.bind] if n in c.grow]
        assert random_decision(attrs.evolve(s, seed=seed), n_grow=5).grow == ("fc1", "fc2", "fc3")
    draws = {random_decision(attrs.evolve(s, seed=seed)) for seed in range(20)}
    assert len({c.bind for c in draws}) == 2 and len({len(c.grow) for c in draws}) > 2  # seeded, not fixed
    assert random_decision(attrs.evolve(s, entry={"bind": "t2", "grow": ["fc2"]})) == Choice("t2", None, ("fc2",))


def test_init_options_and_adopt():
    stream = _stream(2)
    config = TrainConfig(epochs=0)
    strat = get("l2bg", backbone=MLP, delta=1.0, init="from_independent", first="adopt",
                independent_config={"epochs": 1})
    # The task-nets train 0 epochs, so their tensors stay what the rewrites made them.
    last = _drive(strat, stream, config=config)
    net, store = last.net, last.store

    def independent(i):  # G_i^⊥ again, as the step trained it (seeded by run seed and index)
        run = TaskRun(stream.tasks[i], i, stream, ParamStore(seed=0), config, seed=0, echo=None)
        return independent_net(strat, run)

    ind = independent(1)
    for n in ("fc1", "fc2", "fc3"):
        clone = net.node(f"{n}.t2")
        assert clone.annotations[PROV]["init"] == "from_independent"
        for name in ("weight", "bias"):
            assert torch.equal(store[clone.param(name).key], ind.store[ind.net.node(n).param(name).key])
    t1 = independent(0)
    for key in store.keys_of(t1.net):  # G_1 adopted: every tensor of t1's net is G_1^⊥'s
        assert torch.equal(store[key], t1.store[key]) and store[key] is not t1.store[key]
    fresh = ParamStore(seed=0).realize(net)
    assert not torch.equal(store[net.node("fc1").param("weight").key], fresh[net.node("fc1").param("weight").key])
    with pytest.raises(JointNetError, match="bad options"):
        get("l2bg", rdm="cosine")
    with pytest.raises(JointNetError, match="delta"):
        get("l2bg", delta=[0.5, 2.0])
    with pytest.raises(StrategyError, match="independent_config"):
        get("l2bg", independent_config={"epoch": 1})
    with pytest.raises(StrategyError, match="n_grow"):
        get("l2bg-random", n_grow=[1, -1])
    with pytest.raises(StrategyError, match="task"):
        get("l2bg", sequence=[{"task": "t2", "bind": "t1"}, {"bind": "t1"}])
    with pytest.raises(StrategyError, match="unknown option 'n_grow'"):
        get("l2bg", n_grow=2)
    assert isinstance(get("l2bg"), L2BG) and isinstance(get("l2bg-random"), RandomGrowth)
    assert get("l2bg").reference and not get("l2bg-random").reference


def test_resumed_run_continues_exactly(tmp_path):
    """Everything L2BG needs later is in the net and the store: a `jointnet run` killed after the
    second task and resumed from its snapshot ends with the numbers of one never interrupted."""
    spec = RunSpec("l2bg", "synthetic", seed=2, strategy_options={"backbone": MLP, "delta": 0.55, "rsa_samples": 12},
                   stream_options={"n_tasks": 3, "input_shape": [D], "n_train_per_class": 16, "n_val_per_class": 8,
                                   "n_test_per_class": 8},
                   config={"epochs": 2, "batch_size": 16, "lr": 0.05})
    whole = run(spec, tmp_path / "whole", echo=lambda m: None)

    def kill(msg):
        if msg.startswith("task 2/3"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(spec, tmp_path / "cut", echo=kill)
    resumed = resume(tmp_path / "cut", echo=lambda m: None)
    assert resumed["done"] == 3 and resumed["matrix"] == whole["matrix"]
    a, _ = snapshot.load(tmp_path / "whole" / whole["snapshots"][-1])
    b, _ = snapshot.load(tmp_path / "cut" / resumed["snapshots"][-1])
    assert a == b and grow_sequence(a) == grow_sequence(b)  # same log: same decisions, same keys


# ---- provenance on real data, through the runner and snapshots ------------------------------


def test_provenance_survives_snapshot_real_data(tmp_path, capsys):
    """`jointnet run --strategy l2bg` on a small slice of split Fashion-MNIST (real data: fails,
    never skips, when the data package is missing). Every recorded decision is recomputed from
    the recorded conflicts and checked against the net itself."""
    spec = RunSpec("l2bg", "split-fmnist", seed=0,
                   strategy_options={"delta": 0.55, "rsa_samples": 40},
                   stream_options={"n_tasks": 3, "n_train_per_task": 200, "n_test_per_task": 100},
                   config={"epochs": 1, "batch_size": 32})
    results = run(spec, tmp_path / "run", echo=lambda m: None)
    net, store = snapshot.load(tmp_path / "run" / results["snapshots"][-1])
    stream = get_stream("split-fmnist", seed=0, **spec.stream_options)
    tasks = list(net.tasks)
    log = grow_sequence(net)
    assert [e["task"] for e in log] == tasks == ["t1", "t2", "t3"]
    first = net.tasks["t1"].annotations[PROV]
    assert first["bound_to"] is None and list(first["grown"]) == log[0]["grow"] == ["fc1", "fc2"]
    grown_nodes = []
    for i, t in enumerate(tasks[1:], start=1):
        prov = net.tasks[t].annotations[PROV]
        earlier = tasks[:i]
        conflicts = prov["conflicts"]
        assert list(conflicts) == earlier  # every earlier task was a bind candidate
        for c in conflicts.values():
            assert list(c["slots"]) == ["fc1", "fc2"] and all(0 <= r <= 2 for r in c["slots"].values())
            assert c["norm"] == pytest.approx(math.sqrt(sum(r * r for r in c["slots"].values())))
        # bound to the least conflicting earlier task (ties to the earlier one), spec §2.3
        argmin = min(earlier, key=lambda b: (conflicts[b]["norm"], earlier.index(b)))
        assert prov["bound_to"] == prov["argmin"] == log[i]["bind"] == argmin
        slots = prov["slots"]
        assert [s["slot"] for s in slots] == ["fc1", "fc2"]
        rho = [conflicts[argmin]["slots"][s["slot"]] for s in slots]
        assert [s["conflict"] for s in slots] == rho
        assert [s["prob"] for s in slots] == pytest.approx([r / sum(rho) for r in rho])
        # grown = the nucleus for delta 0.55: the smallest most-conflicting prefix of mass >= 0.55
        order = sorted(range(len(slots)), key=lambda j: (-slots[j]["prob"], j))
        k = next(k for k in range(1, len(order) + 1) if sum(slots[j]["prob"] for j in order[:k]) >= 0.55 - 1e-9)
        want = [slots[j]["slot"] for j in order[:k]]
        assert prov["delta"] == log[i]["delta"] == 0.55
        assert list(prov["nucleus"]) == list(prov["grown"]) == log[i]["grow"] == want
        for j, s in enumerate(slots):
            assert s["rank"] == order.index(j)
            assert s["in_nucleus"] == s["grown"] == (s["slot"] in want)
            clone = f"{s['slot']}.{t}"
            if s["grown"]:  # t runs through its own copy of the bound task's node, annotated
                assert clone in net.route(t) and net.users(clone) == {t} and net.node(clone).cloned_from == s["node"]
                ann = net.node(clone).annotations[PROV]
                assert (ann["task"], ann["slot"], ann["bound_to"], ann["in_nucleus"]) == (t, s["slot"], argmin, True)
                grown_nodes.append(clone)
            else:  # t shares the bound task's node
                assert clone not in net and s["node"] in net.route(t) and s["node"] in net.route(argmin)
    # The validation accuracies after each task: every task learned so far, and the last record
    # is the final net's, recomputed here from the snapshot.
    for i, t in enumerate(tasks):
        assert list(net.tasks[t].annotations[VAL_ACC]) == tasks[: i + 1]
    final = net.tasks[tasks[-1]].annotations[VAL_ACC]
    for task in stream.tasks:
        assert final[task.name] == accuracy(compile_net(net, store, task.name), *task.val)
    ind = {t: net.tasks[t].annotations[PROV]["independent"] for t in tasks}
    gain = 100 / 3 * sum((1 - ind[t]["val_acc"] - (1 - final[t])) / max(1 - ind[t]["val_acc"], 1 / ind[t]["n_val"])
                         for t in tasks)
    assert net_gain(net) == pytest.approx(gain)
    # Same replay, same accuracies as the runner's run.
    again = replay_sequence(log, stream, TrainConfig(**spec.config), seed=0, options=spec.strategy_options)
    assert again.matrix == results["matrix"]
    snap = str(tmp_path / "run" / results["snapshots"][-1])
    capsys.readouterr()
    assert cli_main(["inspect", "--full", snap]) == 0
    out = capsys.readouterr().out
    assert 'annotations={"l2bg": {"bound_to"' in out and "annotations=l2bg" in out  # tasks, grown nodes
    assert cli_main(["inspect", "--json", snap]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["annotations"][GROW_LOG] == log
    assert cli_main(["log", "--full", snap]) == 0
    clones = re.findall(r"clone_node\(.*new_id='([^']+)'", capsys.readouterr().out)
    assert grown_nodes and sorted(clones) == sorted(grown_nodes)  # one logged clone_node per grown node


# ---- the search -----------------------------------------------------------------------------


def test_two_worker_journal_search(tmp_path):
    assert population_size(8) == 4 and population_size(1000) == 50
    spec = SearchSpec(
        journal=str(tmp_path / "journal.log"), stream="synthetic",
        stream_options={"n_tasks": 3, "input_shape": [D], "n_train_per_class": 8, "n_val_per_class": 6,
                        "n_test_per_class": 4},
        config={"epochs": 1, "batch_size": 16}, options={"backbone": MLP, "rsa_samples": 12}, n_trials=4,
    )
    study = search(spec, workers=2, echo=None)
    done = [t for t in study.trials if t.values is not None]
    assert len(done) == 4
    assert {t.user_attrs["worker"] for t in done} == {0, 1}
    assert len({t.user_attrs["pid"] for t in done}) == 2
    front = pareto(study)
    assert front and all(len(p["sequence"]) == 3 for p in front)


# ---- controls, deviations and the missing pieces (issue 10) --------------------------------------

from strategies.l2bg import depth_corrected, grown_params, node_versions, ordered_grow, random_plan, slot_params  # noqa: E402
from strategies.l2bg_channels import channel_units, grow_channels, provider, unit_outputs  # noqa: E402
from strategies.l2bg_graph import VERSION, tensor_state  # noqa: E402
from strategies.l2bg_search import reorder, sample_order, sample_sequence  # noqa: E402
from strategies.l2bg_views import inspect_view  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=5), st.integers(2, 6), st.integers(0, 10_000),
       st.floats(0.005, 0.2))
def test_random_plan_matches_parameters(sizes, n_tasks, seed, tol):
    slots = {f"s{i}": v for i, v in enumerate(sizes)}
    tasks = [f"t{i + 1}" for i in range(n_tasks)]
    # A target that some plan reaches: the sum of a deterministic subset per step.
    target = sum(sizes[: 1 + seed % len(sizes)]) * (n_tasks - 1) // 2
    try:
        plan = random_plan(tasks, slots, target=target, tol=tol, seed=seed, max_draws=20_000)
    except ValueError as e:
        assert "no random plan" in str(e)
        return
    total = sum(slots[s] for _, grow in plan for s in grow)
    assert abs(total - target) <= tol * target
    assert len(plan) == n_tasks - 1
    for i, (bind_to, grow) in enumerate(plan, start=1):
        assert bind_to in tasks[:i] and list(grow) == sorted(set(grow), key=list(slots).index)
    assert plan == random_plan(tasks, slots, target=target, tol=tol, seed=seed, max_draws=20_000)


def test_random_plan_reports_the_closest_when_unreachable():
    with pytest.raises(ValueError, match="closest: (10|20)"):
        random_plan(["t1", "t2"], {"a": 10, "b": 10}, target=15, tol=0.02, max_draws=500)


def test_random_control_matches_guided_parameters_within_2_percent():
    stream = _stream(4)
    guided = run_stream("l2bg", stream, CONFIG, seed=0, options={"backbone": MLP, "delta": 0.55})
    target = grown_params(guided.net)
    assert target > 0
    rnd = run_stream("l2bg-random", stream, CONFIG, seed=0, options={"backbone": MLP, "match_params": target})
    assert abs(grown_params(rnd.net) - target) <= 0.02 * target
    assert abs(rnd.params - guided.params) <= 0.02 * guided.params
    # The plan is not the guided one: random binds and slots (seeded), same size.
    assert grow_sequence(rnd.net) != grow_sequence(guided.net)
    with pytest.raises(StrategyError, match="n_grow.*match_params|not both"):
        get("l2bg-random", n_grow=1, match_params=10)


@given(st.lists(st.floats(0.0, 2.0, allow_nan=False), min_size=1, max_size=6), st.data())
def test_ordered_grow_picks_k_slots_by_rule(conflicts, data):
    names = [f"s{i}" for i in range(len(conflicts))]
    probs = normalise(conflicts)
    k = data.draw(st.integers(0, len(names)))
    picks = {o: ordered_grow(names, probs, k, o) for o in ("conflict", "reverse", "top", "bottom")}
    assert all(len(p) == k == len(set(p)) for p in picks.values())
    assert picks["conflict"] == [names[i] for i in ranking(probs)[:k]]
    assert picks["top"] == names[::-1][:k] and picks["bottom"] == names[:k]
    rest = [p for n, p in zip(names, probs) if n not in picks["reverse"]]
    assert all(probs[names.index(s)] <= min(rest, default=2.0) for s in picks["reverse"])


def test_grow_orders_keep_bind_and_nucleus_size():
    stream = _stream(3)
    runs = {o: run_stream("l2bg", stream, CONFIG, seed=0, options={"backbone": MLP, "delta": 0.5, "grow_order": o})
            for o in ("conflict", "top", "bottom", "reverse")}
    seqs = {o: grow_sequence(r.net) for o, r in runs.items()}
    for o in ("top", "bottom", "reverse"):
        for a, b in zip(seqs[o][1:], seqs["conflict"][1:]):
            assert len(a["grow"]) == len(b["grow"])  # RSA's nucleus size
        assert runs[o].net.tasks["t2"].annotations[PROV]["grow_order"] == o
    # the first bind-grow step sees the same conflicts in every run: same bind, slots by rule
    names = ["fc1", "fc2", "fc3"]
    k = len(seqs["conflict"][1]["grow"])
    assert seqs["top"][1]["bind"] == seqs["conflict"][1]["bind"]
    assert sorted(seqs["top"][1]["grow"]) == sorted(names[::-1][:k])
    assert sorted(seqs["bottom"][1]["grow"]) == sorted(names[:k])


def test_depth_correction_pure_and_recorded():
    assert depth_corrected({"a": 0.5, "b": 0.2}, {"a": 0.1, "b": 0.3}) == pytest.approx({"a": 0.4, "b": 0.0})
    assert depth_corrected({"a": 0.5}, {"a": 0.25}, "ratio") == {"a": 2.0}
    assert depth_corrected({"a": 0.5}, {"a": 0.25}, "none") == {"a": 0.5}
    with pytest.raises(ValueError, match="different slots"):
        depth_corrected({"a": 0.5}, {"b": 0.25})
    r = run_stream("l2bg", _stream(2), CONFIG, seed=0,
                   options={"backbone": MLP, "delta": 0.5, "depth_correction": "subtract"})
    prov = r.net.tasks["t2"].annotations[PROV]
    raw = {s["slot"]: s["conflict"] for s in prov["slots"]}
    assert set(prov["depth_baseline"]) == set(raw)
    want = depth_corrected(raw, dict(prov["depth_baseline"]), "subtract")
    assert dict(prov["used_conflicts"]) == pytest.approx(want)
    probs = [s["prob"] for s in prov["slots"]]
    assert probs == pytest.approx(normalise([want[s] for s in raw]))


def test_sequence_conflicts_drive_the_nucleus_without_rsa():
    stream = _stream(3)
    seq = [{"task": "t2", "bind": "t1", "conflicts": {"fc1": 0.9, "fc2": 0.05, "fc3": 0.05}},
           {"task": "t3", "bind": "t1", "conflicts": {"fc1": 0.0, "fc2": 0.0, "fc3": 1.0}}]
    trained = []
    r = _drive(get("l2bg", backbone=MLP, delta=0.5, sequence=seq, reference=False), stream,
               before_train=lambda net, run: trained.append(run.task.name))
    assert [e["grow"] for e in grow_sequence(r.net)[1:]] == [["fc1"], ["fc3"]]
    prov = r.net.tasks["t2"].annotations[PROV]
    assert "independent" not in prov and "conflicts" not in prov  # no RSA was run
    with pytest.raises(StrategyError, match="conflicts"):
        get("l2bg", sequence=[{"task": "t2", "conflicts": {"fc1": -1.0}}])


def test_rsa_on_every_validation_input():
    stream = _stream(2)
    x = rsa_sample_all = None
    from strategies.l2bg import rsa_sample

    rsa_sample_all = rsa_sample(stream.tasks[1], seed=0, index=1, n=None)
    assert rsa_sample_all.shape[0] == len(stream.tasks[1].y_val)
    with pytest.raises(StrategyError, match="rsa_samples"):
        get("l2bg", rsa_samples=2)
    assert x is None


def _changed(before, net, store):
    out = set()
    for n, old in before.items():
        now = [store[p.key] for p in net.node(n).params if p.key in store]
        if len(now) != len(old) or any(not torch.equal(a, b) for a, b in zip(now, old)):
            out.add(n)
    return out


@pytest.mark.parametrize("options", [{"shared_lr_scale": 0.0, "delta": 0.5}, {"delta": 0.5},
                                     {"delta": 0.0, "old_heads": "lwf"}])
def test_version_counter_counts_exactly_the_updated_nodes(options):
    stream = _stream(3)
    seen = {}

    def before_train(net, run):
        seen["state"] = tensor_state(net, run.store)
        seen["versions"] = node_versions(net)

    def after(o):
        versions = node_versions(o.net)
        changed = _changed(seen["state"], o.net, o.store)
        for n in o.net.nodes:
            inc = versions.get(n, 0) - seen["versions"].get(n, 0)
            assert inc == (1 if n in changed else 0), (o.task, n, inc)
        assert changed  # every phase updates something

    _drive(get("l2bg", backbone=MLP, **options), stream, before_train=before_train, after=after)


def test_frozen_shared_nodes_keep_their_version_and_lwf_moves_old_heads():
    stream = _stream(3)
    frozen = run_stream("l2bg", stream, CONFIG, seed=0, options={"backbone": MLP, "delta": 0.0, "shared_lr_scale": 0.0})
    assert node_versions(frozen.net) == {"fc1": 1, "fc2": 1, "fc3": 1, "head.t1": 1, "head.t2": 1, "head.t3": 1}
    drift = run_stream("l2bg", stream, CONFIG, seed=0, options={"backbone": MLP, "delta": 0.0})
    assert node_versions(drift.net)["fc1"] == 3 and node_versions(drift.net)["head.t1"] == 1
    lwf = run_stream("l2bg", stream, CONFIG, seed=0, options={"backbone": MLP, "delta": 0.0, "old_heads": "lwf"})
    assert node_versions(lwf.net)["head.t1"] == 3  # trained on the distillation loss at t2 and t3
    assert inspect_view(lwf.net)["versions"] == node_versions(lwf.net)
    assert inspect_view(backbones.build(MLP, task="t1", n_classes=2)) is None


def test_task_order_search_space_and_replay(tmp_path):
    import optuna

    names = ["t1", "t2", "t3"]
    trial = optuna.trial.FixedTrial({"order_t1": 0.7, "order_t2": 0.2, "order_t3": 0.2, "bind_t3": 0.99,
                                     "bind_t1": 0.4, "delta_t3": 0.5, "delta_t1": 1.0})
    order = sample_order(trial, names)
    assert order == ["t2", "t3", "t1"]  # by key, ties by stream position
    spec = SearchSpec(journal=str(tmp_path / "j.log"), order="search")
    seq = sample_sequence(trial, order, spec)
    assert seq == [{"task": "t3", "bind": "t2", "delta": 0.5}, {"task": "t1", "bind": "t2", "delta": 1.0}]
    stream = _stream(3)
    with pytest.raises(ValueError, match="permutation"):
        reorder(stream, ["t1", "t2"])
    first = replay_sequence(seq, stream, CONFIG, options={"backbone": MLP}, order=order)
    assert list(first.net.tasks) == order
    again = replay_sequence(grow_sequence(first.net), stream, CONFIG, options={"backbone": MLP})
    assert list(again.net.tasks) == order and again.matrix == first.matrix
    assert again.net.structure() == first.net.structure()


def test_order_search_runs_trials_in_their_orders(tmp_path):
    spec = SearchSpec(
        journal=str(tmp_path / "journal.log"), stream="synthetic",
        stream_options={"n_tasks": 3, "input_shape": [D], "n_train_per_class": 8, "n_val_per_class": 6,
                        "n_test_per_class": 4},
        config={"epochs": 1, "batch_size": 16}, options={"backbone": MLP, "rsa_samples": 12}, n_trials=3,
        order="search", sampler="tpe",
    )
    study = search(spec, workers=1, echo=None)
    done = [t for t in study.trials if t.values is not None]
    assert len(done) == 3
    for t in done:
        order = t.user_attrs["order"]
        assert sorted(order) == ["t1", "t2", "t3"]
        assert [e["task"] for e in t.user_attrs["sequence"]] == order
        keys = {n: t.params[f"order_{n}"] for n in order}
        assert order == sorted(order, key=lambda n: (keys[n], int(n[1:])))


# ---- channel-level growth -------------------------------------------------------------------------


@given(st.integers(1, 40), st.integers(1, 8))
def test_channel_units_partition(width, groups):
    units = channel_units(width, groups)
    assert [c for u in units for c in u] == list(range(width))
    assert len(units) == min(width, groups) and max(map(len, units)) - min(map(len, units)) <= 1


def _units_of(net, store, task, x, groups):
    return unit_outputs(net, store, task, x, task_slots(net, task, bn_slots=False), groups)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(2, 7), min_size=1, max_size=3), st.integers(1, 4), st.booleans(), st.data())
def test_channel_growth_copies_the_bound_function_and_isolates_others(widths, groups, use_bn, data):
    layers = [{"kind": "input", "shape": [5]}]
    for w in widths:
        layers += [{"kind": "linear", "out_f": w}] + ([{"kind": "bn"}] if use_bn else []) + [{"kind": "relu"}]
    net = backbones.build(layers, task="t1", n_classes=3)
    store = ParamStore(seed=data.draw(st.integers(0, 99))).realize(net)
    if use_bn:  # statistics away from (0, 1): copies of them matter
        for n in net.nodes:
            for p in net.node(n).params:
                if p.name == "running_mean":
                    store.update(p.key, torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    producers = [f"fc{i + 1}" for i in range(len(widths))]
    for i in range(2, 2 + data.draw(st.integers(1, 3))):
        task = f"t{i}"
        to = data.draw(st.sampled_from(list(net.tasks)))
        options = [(p, j) for p in producers for j in range(len(channel_units(widths[producers.index(p)], groups)))]
        grow = data.draw(st.lists(st.sampled_from(options), unique=True, max_size=4))
        others = {t: compile_net(net, store, t)(x).detach() for t in net.tasks}
        want = _units_of(net, store, to, x, groups)
        params_before = param_counts(net)["total"]
        net, grown = grow_channels(net, store, task=task, to=to, grow=grow, groups=groups, n_classes=2)
        check(net)
        got = _units_of(net, store, task, x, groups)
        assert list(got) == list(want)
        for u in want:
            assert torch.allclose(got[u], want[u], atol=1e-5), (task, to, u)
        for t, out in others.items():  # other tasks compute exactly what they did
            assert torch.equal(compile_net(net, store, t)(x).detach(), out)
        for u, info in grown.items():
            node, j = u.split("#")
            assert provider(net, task, node, int(j)) == info["group"]
            g = next(g for g in net.node(node).out_groups if g.id == info["group"])
            assert g.owner == task and g.size == len(info["channels"])
        added = param_counts(net)["total"] - params_before
        assert added >= sum(len(i["channels"]) for i in grown.values())  # at least the new rows' biases


def test_channel_granularity_end_to_end():
    stream = _stream(3)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.01, optimizer="adam")
    opts = {"backbone": MLP, "granularity": "channels", "channel_groups": 2, "delta": 0.5}
    r = run_stream("l2bg", stream, cfg, seed=0, options=opts)
    check(r.net)
    seq = grow_sequence(r.net)
    assert all("#" in u for e in seq[1:] for u in e["grow"]) and any(e["grow"] for e in seq[1:])
    prov = r.net.tasks["t2"].annotations[PROV]
    assert prov["granularity"] == "channels" and len(prov["units"]) == 6
    assert "channel units" in inspect_view(r.net)
    frozen = run_stream("l2bg", stream, cfg, seed=0, options={**opts, "shared_lr_scale": 0.0})
    assert frozen.metrics["BWT"] == 0.0  # shared blocks frozen, own blocks trained: no forgetting
    again = run_stream("l2bg", stream, cfg, seed=0, options=opts)
    assert again.matrix == r.matrix  # same seed, same numbers
    with pytest.raises(StrategyError, match="channels"):
        get("l2bg", granularity="channels", head="shared")


def test_nothing_to_train_is_skipped_not_an_error():
    # delta 0, a shared head and frozen shared layers: task 2 uses only frozen tensors
    r = run_stream("l2bg", _stream(2), CONFIG, seed=0,
                   options={"backbone": MLP, "delta": 0.0, "shared_lr_scale": 0.0, "head": "shared"})
    assert r.matrix[1][0] == r.matrix[0][0]  # t1 untouched
    assert node_versions(r.net) == {"fc1": 1, "fc2": 1, "fc3": 1, "head.t1": 1}


def test_search_without_optuna_is_one_clear_error(monkeypatch):
    """Optuna is the optional ``search`` extra: without it a search says how to install it."""
    import sys

    from jointnet.errors import JointNetError
    from strategies import trials
    from strategies.l2bg_search import make_sampler

    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError
    for call in (trials.quiet, lambda: make_sampler("tpe", 8), lambda: trials.open_study("/nonexistent/j.log", "s")):
        with pytest.raises(JointNetError, match=r"pip install 'jointnet\[search\]'"):
            call()

"""L2BG: decision functions (properties), bind-grow structure, isolation, replay, provenance,
random growth and the two-worker Optuna search."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jointnet import backbones, snapshot
from jointnet.graph.check import check
from jointnet.cli import main as cli_main
from jointnet.execution.compile import compile_net
from jointnet.errors import JointNetError
from jointnet.graph.net import JointNet
from jointnet.execution.store import ParamStore
from jointnet.experiments.runner import RunSpec, run
from jointnet.experiments.streams import get_stream
from jointnet.execution.optim import param_groups
from jointnet.experiments.trainer import TrainConfig
from jointnet.persistence.views import param_counts
from strategies.base import RunState, get
from strategies.l2bg import (
    GROW_LOG, PROV, VAL_ACC, bind_grow_step, grow_sequence, multitask_gain, net_gain, normalise, nucleus,
    ranking, rdm, route_outputs, rsa, task_conflict, task_slots,
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


def _drive(strategy, stream, config=CONFIG, after=None) -> RunState:
    state = RunState(net=JointNet.empty(), store=ParamStore(seed=0), stream=stream, config=config, echo=None)
    for i, task in enumerate(stream.tasks):
        torch.manual_seed(i)
        strategy.before_task(state, task, i)
        state.store.realize(state.net)
        if after is not None:
            after(state, i, "before")
        strategy.train_task(state, task, i)
        strategy.after_task(state, task, i)
        state.store.realize(state.net)
        check(state.net)
        if after is not None:
            after(state, i, "after")
    return state


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
    # reversing the RDM's order gives rank correlation -1: maximal dissimilarity 2
    v = torch.arange(6.0)[:, None]
    assert rsa(v, v, "euclidean", "pearson") == 0.0
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


def test_slots_bn_and_route_outputs():
    conv = [{"kind": "input", "shape": (1, 6, 6)}, {"kind": "conv", "out_ch": 3, "padding": 1}, {"kind": "bn"},
            {"kind": "relu"}, {"kind": "maxpool"}, {"kind": "flatten"}, {"kind": "linear", "out_f": 5}, {"kind": "relu"}]
    net = backbones.build(conv, task="t1", n_classes=2)
    split = task_slots(net, "t1", bn_slots=True)
    assert [(s.name, s.nodes, s.post, s.pre) for s in split] == [
        ("conv1", ("conv1",), "conv1", "conv1"), ("bn1", ("bn1",), "relu1", "bn1"), ("fc1", ("fc1",), "relu2", "fc1")]
    joint = task_slots(net, "t1", bn_slots=False)
    assert [(s.name, s.nodes, s.post) for s in joint] == [("conv1", ("conv1", "bn1"), "relu1"), ("fc1", ("fc1",), "relu2")]
    store = ParamStore(seed=0).realize(net)
    x = torch.rand(4, 1, 6, 6)
    m = compile_net(net, store, "t1")
    m.eval()
    outs = route_outputs(net, store, "t1", x, ["relu1", "head.t1"])
    assert torch.equal(outs["head.t1"], m(x))  # the same computation as the compiled forward
    assert outs["relu1"].shape == (4, 3, 6, 6)


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
    for d in (0.0, 0.55, 1.0):
        state = _drive(get("l2bg", backbone=MLP, delta=d), stream)
        totals[d] = param_counts(state.net)["total"]
        assert len(grow_sequence(state.net)) == 3
    assert totals[0.0] == body + 3 * head
    assert totals[1.0] == 3 * (body + head)
    assert totals[0.0] <= totals[0.55] <= totals[1.0]


def test_growing_never_touches_other_tasks_and_shared_nodes_train_slower():
    stream = _stream(3)
    x = torch.rand(6, D, generator=torch.Generator().manual_seed(3))
    seen = {}

    def after(state, i, when):
        net, store = state.net, state.store
        t = stream.tasks[i].name
        if when == "before":
            seen["tensors"] = {n: [store[p.key].detach().clone() for p in net.node(n).params] for n in net.nodes}
            if i:
                shared = {n for n in net.route(t) if net.node(n).params and net.users(n) != {t}}
                groups = {g["name"]: g for g in param_groups(net, store, t, lr=1.0)}
                slow = {id(p) for p in groups.get("lr_scale=0.1", {"params": []})["params"]}
                want = {id(store[p.key]) for n in shared for p in net.node(n).params if not p.buffer}
                assert slow == want and (shared or not slow)
                fast = groups["lr_scale=1.0"]["params"]
                assert all(net.users(n) == {t} for n in net.route(t) for p in net.node(n).params
                           if any(store[p.key] is q for q in fast))
            return
        for n, old in seen["tensors"].items():
            if t not in net.users(n):  # owned by (or routed for) other tasks only: bit-identical
                for p, o in zip(net.node(n).params, old):
                    assert torch.equal(store[p.key], o), f"{n} changed while training {t}"

    _drive(get("l2bg", backbone=MLP, delta=0.55), stream, after=after)

    # delta = 1: nothing is shared, so training t3 leaves t1's and t2's outputs bit-identical.
    outs = {}

    def snap_outputs(state, i, when):
        if when == "after" and i == 1:
            for t in ("t1", "t2"):
                m = compile_net(state.net, state.store, t)
                m.eval()
                outs[t] = m(x).detach().clone()

    state = _drive(get("l2bg", backbone=MLP, delta=1.0), stream, after=snap_outputs)
    for t in ("t1", "t2"):
        m = compile_net(state.net, state.store, t)
        m.eval()
        assert torch.equal(m(x), outs[t])


def test_shared_lr_scale_zero_freezes_and_shared_head():
    stream = _stream(3)
    checked = []

    def after(state, i, when):
        net, t = state.net, stream.tasks[i].name
        if when == "before" and i:
            shared = [n for n in net.route(t) if net.node(n).params and net.users(n) != {t}]
            assert all(net.policy_for(t, n).frozen for n in shared)
            assert all(not net.policy_for(t, n).frozen for n in net.route(t) if net.users(n) == {t})
            checked.append(t)

    state = _drive(get("l2bg", backbone=MLP, delta=0.3, shared_lr_scale=0.0, head="shared"), stream, after=after)
    assert checked == ["t2", "t3"]
    net = state.net
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


def test_init_options_and_adopt():
    stream = _stream(2)
    seen = {}

    def after(state, i, when):
        if when == "before" and i == 1:
            seen["net"], seen["store"] = state.net, state.store

    strat = get("l2bg", backbone=MLP, delta=1.0, init="from_independent", first="adopt",
                independent_config={"epochs": 1})
    # The task-nets train 0 epochs, so their tensors stay what the rewrites made them.
    state = _drive(strat, stream, config=TrainConfig(epochs=0), after=after)
    ind_net, ind_store, _ = strat.independent(state, stream.tasks[1], 1)
    for n in ("fc1", "fc2", "fc3"):
        clone = state.net.node(f"{n}.t2")
        assert clone.annotations[PROV]["init"] == "from_independent"
        assert torch.equal(state.store[clone.param("weight").key], ind_store[ind_net.node(n).param("weight").key])
    t1_net, t1_store, _ = strat.independent(state, stream.tasks[0], 0)
    assert torch.equal(state.store[state.net.node("fc1").param("weight").key], t1_store[t1_net.node("fc1").param("weight").key])
    with pytest.raises(JointNetError, match="bad options"):
        get("l2bg", rdm="cosine")
    with pytest.raises(JointNetError, match="delta"):
        get("l2bg", delta=[0.5, 2.0])


# ---- provenance on real data, through the runner and snapshots ------------------------------


def test_provenance_survives_snapshot_real_data(tmp_path, capsys):
    """`jointnet run --strategy l2bg` on a small slice of split Fashion-MNIST (real data: fails,
    never skips, when the data package is missing)."""
    spec = RunSpec("l2bg", "split-fmnist", seed=0,
                   strategy_options={"delta": 0.55, "rsa_samples": 40},
                   stream_options={"n_tasks": 3, "n_train_per_task": 200, "n_test_per_task": 100},
                   config={"epochs": 1, "batch_size": 32})
    results = run(spec, tmp_path / "run", echo=lambda m: None)
    net, store = snapshot.load(tmp_path / "run" / results["snapshots"][-1])
    log = grow_sequence(net)
    assert [e["task"] for e in log] == ["t1", "t2", "t3"]
    for t in ("t2", "t3"):
        prov = net.tasks[t].annotations[PROV]
        assert prov["bound_to"] in ("t1", "t2") and prov["delta"] == 0.55
        assert set(prov["conflicts"]) == set(list(net.tasks)[: list(net.tasks).index(t)])
        assert [s["slot"] for s in prov["slots"]] == ["fc1", "fc2"]
        assert sum(s["prob"] for s in prov["slots"]) == pytest.approx(1.0)
        assert list(prov["grown"]) == [s["slot"] for s in sorted(prov["slots"], key=lambda s: s["rank"]) if s["grown"]]
        for g in prov["grown"]:
            node = net.node(f"{g}.{t}")
            assert node.annotations[PROV]["bound_to"] == prov["bound_to"] and node.annotations[PROV]["in_nucleus"]
        assert set(net.tasks[t].annotations[VAL_ACC]) <= set(net.tasks)
    assert net.annotations[GROW_LOG] is not None and net_gain(net) is not None
    # Same replay, same accuracies as the runner's run.
    stream = get_stream("split-fmnist", seed=0, **spec.stream_options)
    again = replay_sequence(log, stream, TrainConfig(**spec.config), seed=0, options=spec.strategy_options)
    assert again.matrix == results["matrix"]
    snap = str(tmp_path / "run" / results["snapshots"][-1])
    capsys.readouterr()
    assert cli_main(["inspect", snap]) == 0
    out = capsys.readouterr().out
    assert 'annotations={"l2bg": {"bound_to"' in out and "annotations=l2bg" in out  # tasks, grown nodes
    assert cli_main(["inspect", "--json", snap]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [e["task"] for e in data["annotations"][GROW_LOG]] == ["t1", "t2", "t3"]
    assert cli_main(["log", snap]) == 0
    assert "clone_node(node='fc" in capsys.readouterr().out or not any(e["grow"] for e in log[1:])


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
